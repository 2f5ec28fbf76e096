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

use std::path::{Path, PathBuf};

/// The repository's root (this crate lives in `harness/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where downloaded and built artefacts are kept between runs: `$NLXTP_CACHE`, else
/// `~/.cache/nlxtp`. Outside the repository, so nothing large is ever committed.
pub use nlxtp_host::vm::cache_dir;

/// The binary `name` of the host crate (with `features`, comma-separated, or none): the
/// one a `cargo test` of the workspace built beside this test or benchmark, else one
/// built now into a target directory of its own (the outer cargo holds the lock of the
/// workspace's).
///
/// # Errors
/// When cargo cannot be run or fails.
pub fn host_binary(name: &str, features: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let exe = std::env::current_exe()?;
    // target/PROFILE/deps/TEST-HASH -> target/PROFILE/NAME
    if let Some(beside) = exe.parent().and_then(Path::parent).map(|d| d.join(name)) {
        if beside.is_file() {
            return Ok(beside);
        }
    }
    let target = repo_root().join(format!("target/{name}-for-tests"));
    let mut cargo = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    cargo
        .current_dir(repo_root())
        .args(["build", "--quiet", "--locked", "-p", "nlxtp-host"]);
    if !features.is_empty() {
        cargo.args(["--features", features]);
    }
    let status = cargo
        .args(["--bin", name, "--target-dir"])
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .with_context(|| format!("could not run cargo to build {name}"))?;
    anyhow::ensure!(status.success(), "building {name} failed ({status})");
    Ok(target.join("debug").join(name))
}
