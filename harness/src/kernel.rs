//! A guest kernel from Debian's `linux-image-*-amd64` package, and the modules the guest
//! needs, fetched with `apt-get download` and unpacked with `dpkg-deb -x` into the cache.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Modules the guest loads, in an order that satisfies their dependencies (the package
/// has no modules.dep): virtio transport, the block driver, then FAT with its charsets.
pub const MODULES: [&str; 11] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The package name, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Paths of [`MODULES`], in load order.
    pub modules: Vec<PathBuf>,
}

/// Returns the cached kernel, fetching it first if needed. Safe to call from several
/// processes and threads at once (a file lock serialises the fetch).
///
/// # Errors
/// When apt cannot name or download the package, or the package lacks a module.
pub fn kernel() -> Result<Kernel> {
    let cache = crate::cache_dir().join("kernel");
    fs::create_dir_all(&cache).with_context(|| format!("could not create {}", cache.display()))?;
    let lock = File::create(cache.join(".lock"))?;
    lock.lock().context("could not lock the kernel cache")?;
    let package = kernel_package()?;
    let root = cache.join(&package);
    if !root.join(".complete").exists() {
        fetch(&cache, &package, &root)?;
    }
    let version = package.trim_start_matches("linux-image-");
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    let mut modules = Vec::new();
    let tree = root.join(format!("lib/modules/{version}/kernel"));
    for name in MODULES {
        modules.push(
            find_module(&tree, name)?
                .with_context(|| format!("{package} has no module {name}.ko"))?,
        );
    }
    Ok(Kernel {
        package,
        vmlinuz,
        modules,
    })
}

/// The versioned package `linux-image-amd64` depends on. `NLXTP_KERNEL_PACKAGE`
/// overrides it; a cached kernel is used when apt knows nothing (no package lists).
fn kernel_package() -> Result<String> {
    if let Ok(name) = std::env::var("NLXTP_KERNEL_PACKAGE") {
        return Ok(name);
    }
    for attempt in 0..2 {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()
            .context("could not run apt-cache")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(name) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|n| n.starts_with("linux-image-"))
        {
            return Ok(name.to_string());
        }
        if attempt == 0 {
            // No package lists yet on a fresh machine.
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        }
    }
    bail!("apt does not know linux-image-amd64; run apt-get update, or set NLXTP_KERNEL_PACKAGE")
}

fn fetch(cache: &Path, package: &str, root: &Path) -> Result<()> {
    eprintln!(
        "nlxtp-harness: fetching {package} (once; cached in {})",
        cache.display()
    );
    let work = cache.join(format!(".fetch-{package}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let status = Command::new("apt-get")
        .args(["download", "-qq", package])
        .current_dir(&work)
        .status()
        .context("could not run apt-get")?;
    if !status.success() {
        bail!("apt-get download {package} failed ({status})");
    }
    let deb = fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = work.join("root");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .context("could not run dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    fs::File::create(unpacked.join(".complete"))?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&unpacked, root)?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

fn find_module(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name)? {
                return Ok(Some(found));
            }
        } else if path
            .file_name()
            .is_some_and(|f| f == format!("{name}.ko").as_str())
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}
