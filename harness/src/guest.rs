//! Building the guest binary: `nlxtp-guest`, static (musl), from `guest-min/`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// The target the guest binary is built for: static, no libc needed in the guest.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the static guest binary (once per process) and returns its path.
///
/// # Errors
/// When cargo fails; the message says how to add the target.
pub fn guest_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> Result<PathBuf> {
    let manifest = crate::repo_root().join("guest-min/Cargo.toml");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            GUEST_TARGET,
            "--manifest-path",
        ])
        .arg(&manifest)
        // A harness run inside `cargo test` must not hand its own target dir down.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("could not run cargo to build the guest binary")?;
    if !status.success() {
        bail!("building nlxtp-guest failed ({status}); is the target installed? run: rustup target add {GUEST_TARGET}");
    }
    let bin = crate::repo_root()
        .join("guest-min/target")
        .join(GUEST_TARGET)
        .join("release/nlxtp-guest");
    if !bin.is_file() {
        bail!("cargo built the guest but {} is missing", bin.display());
    }
    Ok(bin)
}
