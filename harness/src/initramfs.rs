//! The minimal guest image, as the library builds it (`nlxtp_host::vm::initramfs`), with
//! the host's bash added (real archives start with `#!/bin/bash`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
pub use nlxtp_host::vm::initramfs::INIT;
use nlxtp_host::vm::{initramfs, GuestImage};

use crate::kernel::Kernel;

/// Builds the initramfs for `kernel` with the guest binary at `guest` into `out`.
///
/// # Errors
/// When an input cannot be read or the output written.
pub fn build(kernel: &Kernel, guest: &Path, out: &Path) -> Result<()> {
    let busybox = initramfs::busybox(kernel.arch, &mut |line| eprintln!("nlxtp-harness: {line}"))?;
    GuestImage {
        kernel,
        guest,
        busybox: &busybox,
        host_programs: &[PathBuf::from("/bin/bash")],
        rootfs: None,
    }
    .write(out)
    .context("could not build the initramfs")?;
    Ok(())
}

/// The initramfs for the cached kernel and a freshly built guest, in `dir` (rebuilt
/// every call: it takes a fraction of a second and the guest may have changed).
///
/// # Errors
/// As [`build`], [`crate::kernel::kernel`] and [`crate::guest::guest_binary`].
pub fn guest_initramfs(dir: &Path) -> Result<(Kernel, PathBuf)> {
    let kernel = crate::kernel::kernel()?;
    let guest = crate::guest::guest_binary()?;
    let out = dir.join("initramfs.cpio");
    build(&kernel, &guest, &out)?;
    Ok((kernel, out))
}
