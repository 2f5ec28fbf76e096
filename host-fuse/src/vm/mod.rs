//! Throwaway VMs for one job: a guest kernel and its modules, the minimal guest image
//! (an initramfs), QEMU with no network device, and the accelerator it runs with.
//!
//! The front ends (`nlxtp run`, `nlxtp guest build`, the harness) build on these; the
//! job itself goes through [`crate::ops`] like any other upload.
//!
//! - [`debian`]: Debian packages fetched with `apt-get download` and unpacked with
//!   `dpkg-deb -x` into the cache, once, under a file lock.
//! - [`kernel`]: a kernel image and the modules the shared disk needs, from a Debian or
//!   Ubuntu kernel package, an unpacked one, or a kernel build tree; modules ordered by
//!   their own `depends=`, built-in ones taken from `modules.builtin`.
//! - [`initramfs`]: busybox, `nlxtp-guest`, the modules and an `/init`, as a newc cpio
//!   archive, byte for byte the same for the same inputs.
//! - [`qemu`]: the QEMU command line, the accelerator probe (KVM when it runs a guest,
//!   TCG otherwise) and a process guard that never lets QEMU outlive it.
//! - [`qmp`]: a client of QEMU's machine protocol, to hot-plug shared disks into a VM
//!   that runs (see [`crate::ops::hot`]).

pub mod debian;
pub mod initramfs;
pub mod kernel;
pub mod qemu;
pub mod qmp;

use std::path::PathBuf;

pub use initramfs::{GuestImage, InitramfsError};
pub use kernel::{Kernel, KernelError};
pub use qemu::{Accel, Qemu, QemuConfig, QemuError};
pub use qmp::{Qmp, QmpError, QmpEvent};

/// A guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit x86 (`qemu-system-x86_64 -M pc`).
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit Arm (`qemu-system-aarch64 -M virt`).
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    /// The architecture of this host.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// Its name as Rust and QEMU spell it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Its name as Debian spells it (`amd64`, `arm64`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The Rust target the static guest binary is built for.
    pub fn guest_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The guest's serial console device.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The kernel's own name for it in a build tree (`arch/NAME/boot`).
    fn kbuild(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Aarch64 => "arm64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(format!("unknown architecture {s:?}: use x86_64 or aarch64")),
        }
    }
}

/// Where downloaded kernels and packages are kept between runs: `$NLXTP_CACHE`, else
/// `$XDG_CACHE_HOME/nlxtp`, else `~/.cache/nlxtp`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NLXTP_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("nlxtp");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/nlxtp")
}
