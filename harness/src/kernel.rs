//! The guest kernel: the library's Debian kernel (`nlxtp_host::vm::kernel`), fetched once
//! into the cache.

use anyhow::{Context, Result};
pub use nlxtp_host::vm::kernel::{Module, REQUIRED, WANTED};
use nlxtp_host::vm::Arch;
pub use nlxtp_host::vm::Kernel;

/// Returns the cached x86_64 Debian kernel, fetching it first if needed. Safe to call
/// from several processes and threads at once (a file lock serialises the fetch).
///
/// # Errors
/// When apt cannot name or download the package, or the package lacks a module.
pub fn kernel() -> Result<Kernel> {
    Kernel::debian(Arch::X86_64, &mut |line| eprintln!("nlxtp-harness: {line}"))
        .context("could not get the guest kernel")
}
