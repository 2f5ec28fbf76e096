//! A guest kernel and the modules the shared disk needs.
//!
//! The shared disk needs virtio-blk over virtio-pci and vfat with its code page. A
//! kernel has each built in (listed in `modules.builtin`) or as a module; the modules are
//! loaded in the order their own `depends=` fields give (Debian's packages have no
//! `modules.dep`). A kernel that has neither is refused, naming what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::debian::{self, FetchError};
use super::Arch;

/// What the shared disk needs: the virtio disk and the FAT filesystem the guest mounts.
pub const REQUIRED: [&str; 4] = ["virtio_pci", "virtio_blk", "vfat", "nls_cp437"];

/// Loaded too where the kernel has them (the default FAT I/O charsets).
pub const WANTED: [&str; 2] = ["nls_ascii", "nls_utf8"];

/// A kernel ready to boot with a shared disk.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// For people: the package or the version.
    pub name: String,
    /// The architecture it is for.
    pub arch: Arch,
    /// The kernel image QEMU boots (`-kernel`).
    pub image: PathBuf,
    /// The modules to load, in load order (dependencies first).
    pub modules: Vec<Module>,
    /// Where its modules are (`lib/modules/VERSION` or a build tree), if anywhere.
    pub modules_dir: Option<PathBuf>,
}

/// A loadable module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name, with `_` for `-` (`nls_cp437`).
    pub name: String,
    /// The file (`.ko`, `.ko.zst` or `.ko.xz`).
    pub path: PathBuf,
}

/// Why a kernel cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The kernel lacks modules that are needed (by the shared disk, or by a caller of
    /// [`Kernel::modules_for`]).
    #[error("the kernel {kernel} has neither built in nor as modules (under {}) what is needed: {}; use a kernel that has them (set to y or m; the shared disk needs CONFIG_VIRTIO_PCI, CONFIG_VIRTIO_BLK, CONFIG_VFAT_FS and CONFIG_NLS_CODEPAGE_437)", searched.display(), missing.join(", "))]
    MissingModules {
        /// The kernel's name.
        kernel: String,
        /// The modules not found.
        missing: Vec<String>,
        /// Where they were looked for.
        searched: PathBuf,
    },
    /// The path is no kernel nlxtp knows how to use.
    #[error("{} is not a kernel nlxtp can use: give a kernel image (vmlinuz), a kernel package (.deb), an unpacked package (with boot/vmlinuz-*) or a kernel build tree (with arch/{}/boot/)", path.display(), arch.kbuild())]
    NotAKernel {
        /// The path given.
        path: PathBuf,
        /// The architecture asked for.
        arch: Arch,
    },
    /// A module file could not be read or decompressed.
    #[error("could not read the module {}", path.display())]
    Module {
        /// The module file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be read.
    #[error("could not read {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel package could not be fetched.
    #[error("could not fetch the kernel package")]
    Fetch(#[from] FetchError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_owned();
    move |source| KernelError::Io { path, source }
}

impl Kernel {
    /// The default kernel for `arch`: the newest Debian kernel package in the cache, else
    /// the one `linux-image-<arch>` depends on now, fetched once (`note` hears that).
    /// `NLXTP_KERNEL_PACKAGE` names the package instead.
    ///
    /// # Errors
    /// When apt cannot fetch it, or it lacks the modules.
    pub fn debian(arch: Arch, note: &mut dyn FnMut(&str)) -> Result<Kernel, KernelError> {
        if let Ok(package) = std::env::var("NLXTP_KERNEL_PACKAGE") {
            let root = debian::package(&package, arch, note)?;
            return Kernel::package_root(&root, arch, &package);
        }
        if let Some((package, root)) = cached_packages(arch).pop() {
            return Kernel::package_root(&root, arch, &package);
        }
        let package = debian::depends_of(&format!("linux-image-{}", arch.debian()), arch)?;
        let root = debian::package(&package, arch, note)?;
        Kernel::package_root(&root, arch, &package)
    }

    /// The kernel at `path`: a kernel image, a Debian/Ubuntu kernel package (`.deb`,
    /// unpacked into the cache once), an unpacked package, or a kernel build tree.
    ///
    /// # Errors
    /// [`KernelError::NotAKernel`] when it is none of these; as [`Kernel::debian`].
    pub fn open(path: &Path, arch: Arch) -> Result<Kernel, KernelError> {
        let meta = fs::metadata(path).map_err(io_at(path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if meta.is_file() && name.ends_with(".deb") {
            let stem = name.trim_end_matches(".deb");
            let root = super::cache_dir()
                .join("packages")
                .join(format!("{stem}-{}", meta.len()));
            if !root.join(".complete").exists() {
                debian::unpack_deb(path, &root)?;
            }
            return Kernel::package_root(&root, arch, stem);
        }
        if meta.is_file() {
            // vmlinuz-VERSION beside a package's lib/modules/VERSION, or the host's.
            let version = name.strip_prefix("vmlinuz-").unwrap_or("");
            let beside = path
                .parent()
                .and_then(Path::parent)
                .map(|p| p.join("lib/modules").join(version));
            let modules = [beside, Some(PathBuf::from("/lib/modules").join(version))]
                .into_iter()
                .flatten()
                .find(|d| !version.is_empty() && d.is_dir());
            return Kernel::assemble(&name, arch, path.to_owned(), modules.as_deref(), None);
        }
        if path.join("boot").is_dir() {
            return Kernel::package_root(path, arch, &name);
        }
        let boot = path.join("arch").join(arch.kbuild()).join("boot");
        let image = ["bzImage", "Image.gz", "Image"]
            .iter()
            .map(|i| boot.join(i))
            .find(|p| p.is_file())
            .ok_or_else(|| KernelError::NotAKernel {
                path: path.to_owned(),
                arch,
            })?;
        let version = fs::read_to_string(path.join("include/config/kernel.release"))
            .map_or_else(|_| name.clone(), |v| v.trim().to_owned());
        Kernel::assemble(
            &version,
            arch,
            image,
            Some(path),
            Some(&path.join("modules.builtin")),
        )
    }

    /// An unpacked kernel package: `boot/vmlinuz-V` and `lib/modules/V` (or
    /// `usr/lib/modules/V`).
    fn package_root(root: &Path, arch: Arch, name: &str) -> Result<Kernel, KernelError> {
        let boot = root.join("boot");
        let mut images: Vec<PathBuf> = fs::read_dir(&boot)
            .map_err(io_at(&boot))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .collect();
        images.sort();
        let image = images.pop().ok_or_else(|| KernelError::NotAKernel {
            path: root.to_owned(),
            arch,
        })?;
        let version = image
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_owned()
            })
            .unwrap_or_default();
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&version))
            .find(|d| d.is_dir());
        let name = if name.is_empty() { &version } else { name };
        Kernel::assemble(name, arch, image, modules.as_deref(), None)
    }

    /// The kernel `image` with the modules under `modules` (the shared disk's, in load
    /// order). `builtin` is the `modules.builtin` list, by default `modules/modules.builtin`.
    fn assemble(
        name: &str,
        arch: Arch,
        image: PathBuf,
        modules: Option<&Path>,
        builtin: Option<&Path>,
    ) -> Result<Kernel, KernelError> {
        let Some(dir) = modules else {
            // A bare image: what it needs must be built in, or its boot says otherwise.
            return Ok(Kernel {
                name: name.to_owned(),
                arch,
                image,
                modules: Vec::new(),
                modules_dir: None,
            });
        };
        let modules = resolve(name, dir, builtin, &REQUIRED, &WANTED)?;
        Ok(Kernel {
            name: name.to_owned(),
            arch,
            image,
            modules,
            modules_dir: Some(dir.to_owned()),
        })
    }

    /// Other modules of this kernel than the shared disk's: `required` and, where the
    /// kernel has them, `wanted`, with their dependencies, in load order; built-in ones
    /// left out. Empty for a bare image (no modules directory).
    ///
    /// # Errors
    /// [`KernelError::MissingModules`] naming the required ones it has neither built in
    /// nor as modules.
    pub fn modules_for(
        &self,
        required: &[&str],
        wanted: &[&str],
    ) -> Result<Vec<Module>, KernelError> {
        match &self.modules_dir {
            Some(dir) => resolve(&self.name, dir, None, required, wanted),
            None => Ok(Vec::new()),
        }
    }
}

/// The modules under `dir` that `required` and (where there) `wanted` need, in load
/// order. `builtin` is the `modules.builtin` list, by default `dir/modules.builtin`.
fn resolve(
    name: &str,
    dir: &Path,
    builtin: Option<&Path>,
    required: &[&str],
    wanted: &[&str],
) -> Result<Vec<Module>, KernelError> {
    let builtin_list = builtin.map_or_else(|| dir.join("modules.builtin"), Path::to_owned);
    let builtin: BTreeSet<String> = fs::read_to_string(&builtin_list)
        .unwrap_or_default()
        .lines()
        .filter_map(module_name)
        .collect();
    let mut index = BTreeMap::new();
    index_modules(dir, &mut index, 0)?;
    let mut order = Vec::new();
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for (root, required) in required
        .iter()
        .map(|r| (r, true))
        .chain(wanted.iter().map(|w| (w, false)))
    {
        if !required && !builtin.contains(*root) && !index.contains_key(*root) {
            continue;
        }
        visit(
            root,
            &index,
            &builtin,
            &mut seen,
            &mut order,
            &mut missing,
            0,
        )?;
    }
    if !missing.is_empty() {
        return Err(KernelError::MissingModules {
            kernel: name.to_owned(),
            missing,
            searched: dir.to_owned(),
        });
    }
    Ok(order)
}

impl Kernel {
    /// The image QEMU boots fastest. On x86_64, a compressed `bzImage` is unpacked once
    /// into the cache as its `vmlinux` ELF and booted through PVH when the kernel has a
    /// PVH entry: no decompression in the guest (under TCG that is seconds). Otherwise,
    /// the image itself.
    pub fn boot_image(&self) -> PathBuf {
        if self.arch != Arch::X86_64 {
            return self.image.clone();
        }
        self.pvh_vmlinux().unwrap_or_else(|| self.image.clone())
    }

    fn pvh_vmlinux(&self) -> Option<PathBuf> {
        let meta = fs::metadata(&self.image).ok()?;
        let mut key = crate::stable_hash::Fnv1a::new();
        key.write(self.image.as_os_str().as_encoded_bytes());
        key.write(&meta.len().to_le_bytes());
        let mtime = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        key.write(&mtime.as_nanos().to_le_bytes());
        let dir = super::cache_dir().join("vmlinux");
        let out = dir.join(format!("{:016x}", key.finish()));
        if out.is_file() {
            return Some(out);
        }
        let image = fs::read(&self.image).ok()?;
        // A bzImage: "HdrS" at 0x202.
        if image.get(0x202..0x206) != Some(b"HdrS") {
            return None;
        }
        let elf = unpack_payload(&image)?;
        if !has_pvh_note(&elf) {
            return None;
        }
        fs::create_dir_all(&dir).ok()?;
        let tmp = tempfile::NamedTempFile::new_in(&dir).ok()?;
        fs::write(tmp.path(), &elf).ok()?;
        // Readable by every user of a shared cache, as the kernel package it came from.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).ok()?;
        tmp.persist(&out).ok()?;
        Some(out)
    }
}

/// The kernel ELF inside a bzImage: the first xz, zstd or gzip stream that unpacks to an
/// ELF file.
fn unpack_payload(image: &[u8]) -> Option<Vec<u8>> {
    const XZ: &[u8] = b"\xfd7zXZ\x00";
    const ZSTD: &[u8] = b"\x28\xb5\x2f\xfd";
    const GZIP: &[u8] = b"\x1f\x8b\x08";
    let find = |magic: &[u8]| image.windows(magic.len()).position(|w| w == magic);
    let unpacked = if let Some(at) = find(XZ) {
        let mut child = std::process::Command::new("xz")
            .args(["-dc", "--single-stream"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let payload = image[at..].to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &payload);
        });
        let out = child.wait_with_output().ok()?;
        let _ = feeder.join();
        out.stdout
    } else if let Some(at) = find(ZSTD) {
        let mut out = Vec::new();
        let mut decoder = zstd::stream::read::Decoder::new(&image[at..])
            .ok()?
            .single_frame();
        std::io::Read::read_to_end(&mut decoder, &mut out).ok()?;
        out
    } else {
        let at = find(GZIP)?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&image[at..]), &mut out)
            .ok()?;
        out
    };
    unpacked.starts_with(b"\x7fELF").then_some(unpacked)
}

/// Whether a 64-bit little-endian ELF has the Xen PVH entry note (type 18, name "Xen"),
/// which QEMU needs to boot it directly.
fn has_pvh_note(elf: &[u8]) -> bool {
    let u32_at = |at: usize| {
        elf.get(at..at.checked_add(4)?)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |at: usize| {
        elf.get(at..at.checked_add(8)?)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let (Some(phoff), Some(sizes)) = (u64_at(0x20), u32_at(0x34)) else {
        return false;
    };
    let phentsize = (sizes >> 16) as usize & 0xffff;
    let phnum = elf
        .get(0x38..0x3a)
        .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    for i in 0..phnum.min(64) {
        let ph = phoff as usize + i * phentsize;
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(len)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            continue;
        };
        let (mut at, end) = (off as usize, (off.saturating_add(len)) as usize);
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                break;
            };
            let name = elf.get(at + 12..at + 12 + namesz as usize);
            if kind == 18 && name.is_some_and(|n| n.starts_with(b"Xen")) {
                return true;
            }
            at += 12 + (namesz as usize).div_ceil(4) * 4 + (descsz as usize).div_ceil(4) * 4;
        }
    }
    false
}

impl Module {
    /// The module's bytes, decompressed (`.ko.zst` here, `.ko.xz` through `xz -dc`).
    ///
    /// # Errors
    /// [`KernelError::Module`] when it cannot be read or decompressed.
    pub fn bytes(&self) -> Result<Vec<u8>, KernelError> {
        let err = |source| KernelError::Module {
            path: self.path.clone(),
            source,
        };
        let raw = fs::read(&self.path).map_err(err)?;
        let name = self.path.to_string_lossy();
        if name.ends_with(".zst") {
            zstd::decode_all(&raw[..]).map_err(err)
        } else if name.ends_with(".xz") {
            let out = std::process::Command::new("xz")
                .arg("-dc")
                .arg(&self.path)
                .output()
                .map_err(err)?;
            if !out.status.success() {
                return Err(err(std::io::Error::other("xz -dc failed")));
            }
            Ok(out.stdout)
        } else {
            Ok(raw)
        }
    }
}

/// Kernel packages for `arch` in the cache, oldest first, as (package, root).
fn cached_packages(arch: Arch) -> Vec<(String, PathBuf)> {
    let cache = super::cache_dir();
    let suffix = format!("_{}", arch.debian());
    let mut found = Vec::new();
    let places = [
        (cache.join("packages"), suffix.as_str()),
        // Where the harness kept amd64 kernels before.
        (cache.join("kernel"), "-amd64"),
    ];
    for (dir, suffix) in places {
        if suffix == "-amd64" && arch != Arch::X86_64 {
            continue;
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("linux-image-")
                && name.ends_with(suffix)
                && entry.path().join(".complete").exists()
            {
                let package = name.strip_suffix(&format!("_{}", arch.debian()));
                found.push((package.unwrap_or(&name).to_owned(), entry.path()));
            }
        }
    }
    found.sort_by_key(|a| version_key(&a.0));
    found.dedup_by(|a, b| a.0 == b.0);
    found
}

/// `linux-image-6.1.0-57-amd64` -> [6, 1, 0, 57]: compares as versions do.
fn version_key(package: &str) -> Vec<u64> {
    package
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `kernel/fs/nls/nls_cp437.ko.zst` -> `nls_cp437`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    if !file.contains(".ko") {
        return None;
    }
    let stem = file.split(".ko").next()?;
    Some(stem.replace('-', "_"))
}

/// Every module file under `dir` by name (the first found wins; a build tree's deeper
/// copies in `debian/` or `.tmp` directories are skipped).
fn index_modules(
    dir: &Path,
    index: &mut BTreeMap<String, PathBuf>,
    depth: u32,
) -> Result<(), KernelError> {
    if depth > 16 {
        return Ok(());
    }
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let Some(file) = path.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        if file.starts_with('.') || (depth == 0 && file == "debian") {
            continue;
        }
        // Symbolic links (a module dir's `build` and `source`) are not followed.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            index_modules(&path, index, depth + 1)?;
        } else if meta.is_file() {
            if let Some(name) = module_name(&file) {
                index.entry(name).or_insert(path);
            }
        }
    }
    Ok(())
}

/// Adds `name` after its dependencies to `order`; a module neither built in nor found
/// goes to `missing`.
fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<Module>,
    missing: &mut Vec<String>,
    depth: u32,
) -> Result<(), KernelError> {
    if !seen.insert(name.to_owned()) || builtin.contains(name) || depth > 32 {
        return Ok(());
    }
    let Some(path) = index.get(name) else {
        missing.push(name.to_owned());
        return Ok(());
    };
    let module = Module {
        name: name.to_owned(),
        path: path.clone(),
    };
    for dep in depends(&module.bytes()?) {
        visit(&dep, index, builtin, seen, order, missing, depth + 1)?;
    }
    order.push(module);
    Ok(())
}

/// The `depends=` field of a module's `.modinfo` section.
fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &module[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_depends() {
        assert_eq!(
            module_name("kernel/fs/nls/nls_cp437.ko.zst").as_deref(),
            Some("nls_cp437")
        );
        assert_eq!(
            module_name("kernel/fs/nls/nls_iso8859-1.ko").as_deref(),
            Some("nls_iso8859_1")
        );
        assert_eq!(module_name("modules.order"), None);
        let fake = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
        assert_eq!(depends(fake), ["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(
            version_key("linux-image-6.1.0-57-amd64") > version_key("linux-image-6.1.0-9-amd64")
        );
    }
}
