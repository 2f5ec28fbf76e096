//! The nlxtp end-to-end harness: everything needed to run the real cycle on this machine
//! from nothing but package registries.
//!
//! - [`guest`]: builds the static `nlxtp-guest` binary.
//! - [`kernel`]: fetches a Debian kernel and its modules (cached under `~/.cache/nlxtp`).
//! - [`initramfs`]: packs busybox, the guest binary, the modules and an `/init` into a
//!   newc cpio archive.
//! - [`distro`]: Debian 12 guests (systemd or SysV init) built with debootstrap, cached,
//!   with nlxtp-guest installed as `guest-min/dist/README.md` says.
//! - [`qemu`]: boots a VM under KVM when it works, TCG otherwise, with the serial console
//!   in a log file, deadline-bound waits, and a guard that never lets QEMU outlive it.
//!
//! The machinery itself is the library's (`nlxtp_host::vm`), which `nlxtp run` uses too;
//! these modules add what tests want: `anyhow` errors, the host's bash in the guest,
//! waits on the serial console, the serial log printed when a test fails.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod container;
pub mod distro;
pub mod guest;
pub mod initramfs;
pub mod jobs;
pub mod kernel;
pub mod libvirt;
pub mod qemu;
pub mod vm;

use std::path::PathBuf;

/// The repository's root (this crate lives in `harness/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where downloaded and built artefacts are kept between runs: `$NLXTP_CACHE`, else
/// `~/.cache/nlxtp`. Outside the repository, so nothing large is ever committed.
pub use nlxtp_host::vm::cache_dir;
