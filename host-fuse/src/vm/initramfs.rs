//! The guest image: an initramfs (newc cpio, uncompressed) that boots straight into the
//! nlxtp daemon on the shared disk and powers off when the run has ended.
//!
//! Layout: nlxtp's own files live under `/.nlxtp/` (busybox, `nlxtp-guest` and its
//! `archive_setstatus` alias in `bin/`, the modules), so they can be laid over a root
//! filesystem the user brings ([`GuestImage::rootfs`]). The minimal image adds busybox's
//! commands in `/bin`. Every entry has owner 0, time 0 and inodes counted from 1, in a
//! fixed order: the same inputs give the same bytes.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::debian::{self, FetchError};
use super::kernel::{Kernel, KernelError};
use super::Arch;

/// The guest's `/init`. It mounts the pseudo filesystems, loads the modules, starts the
/// hot-plug watcher in the background (disks labelled NLXTP-HOT attached while the VM
/// runs), runs the nlxtp daemon on the disk labelled NLXTP, then syncs and powers off, or
/// stays up with `nlxtp.stay` on the kernel command line. Lines starting `nlxtp-init:` on the console
/// are readiness signals and timing marks (guest uptime).
pub const INIT: &str = r#"#!/.nlxtp/busybox sh
b=/.nlxtp/busybox
up() { $b cut -d' ' -f1 /proc/uptime; }
$b mkdir -p /proc /sys /dev /tmp /mnt @APPLETS@
$b mount -t proc proc /proc
echo "nlxtp-init: started at uptime $(up)"
$b mount -t sysfs sysfs /sys
$b mount -t devtmpfs devtmpfs /dev 2>/dev/null
$b --install -s @APPLETS@
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.nlxtp/bin:@APPLETS@
for m in $($b cat /.nlxtp/modules.list); do
  $b insmod "/.nlxtp/modules/$m.ko" || echo "nlxtp-init: could not load $m"
done
stay=0
heartbeat=2000
for arg in $($b cat /proc/cmdline); do
  case "$arg" in
    nlxtp.stay) stay=1 ;;
    nlxtp.heartbeat_ms=*) heartbeat="${arg#nlxtp.heartbeat_ms=}" ;;
  esac
done
echo "nlxtp-init: booted; starting the daemon at uptime $(up)"
# Jobs on disks attached to the running VM (label NLXTP-HOT), from now on: also during
# the boot disk's run and while the VM stays up.
/.nlxtp/bin/nlxtp-guest hotplug --heartbeat-ms "$heartbeat" &
hot=$!
/.nlxtp/bin/nlxtp-guest daemon --label NLXTP --mount-point /mnt/nlXTP --heartbeat-ms "$heartbeat"
echo "nlxtp-init: daemon exited with $? at uptime $(up)"
$b sync
if [ "$stay" = 1 ]; then
  echo "nlxtp-init: staying up"
  while true; do $b sleep 3600; done
fi
# A hot disk's job records its stop, unmounts and releases its disk (bounded by the
# watcher) before the power goes.
$b kill "$hot" 2>/dev/null
wait "$hot"
$b umount /mnt/nlXTP 2>/dev/null
echo "nlxtp-init: powering off at uptime $(up)"
$b poweroff -f
"#;

/// Why the guest image could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitramfsError {
    /// The guest binary is not there.
    #[error("no nlxtp-guest at {}; build it with: rustup target add {target} && cargo build --manifest-path guest-min/Cargo.toml --release --target {target}", path.display())]
    NoGuest {
        /// Where it was looked for.
        path: PathBuf,
        /// The Rust target to build it for.
        target: &'static str,
    },
    /// A program is for another architecture, or not static.
    #[error("{} is not a static {arch} program{}", path.display(), hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    WrongProgram {
        /// The program.
        path: PathBuf,
        /// The architecture wanted.
        arch: Arch,
        /// What to do about it.
        hint: Option<String>,
    },
    /// The kernel's modules could not be read.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// busybox could not be fetched.
    #[error("could not fetch busybox-static")]
    Fetch(#[from] FetchError),
    /// An input could not be read or the output written.
    #[error("could not {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InitramfsError {
    let path = path.to_owned();
    move |source| InitramfsError::Io { what, path, source }
}

/// What goes into a guest image.
#[derive(Debug, Clone)]
pub struct GuestImage<'a> {
    /// The kernel whose modules it loads.
    pub kernel: &'a Kernel,
    /// The static `nlxtp-guest` binary for the kernel's architecture.
    pub guest: &'a Path,
    /// A static busybox for the kernel's architecture (see [`busybox`]).
    pub busybox: &'a Path,
    /// Dynamically linked host programs to add with the libraries `ldd` names (the
    /// host's `/bin/bash`, for scripts that start `#!/bin/bash`). Host architecture only.
    pub host_programs: &'a [PathBuf],
    /// A root filesystem to lay nlxtp's files over, instead of the minimal one.
    pub rootfs: Option<&'a Path>,
}

impl GuestImage<'_> {
    /// Writes the image to `out` (through a temporary file beside it); returns its size.
    ///
    /// # Errors
    /// When an input is missing or of the wrong kind, or the output cannot be written.
    pub fn write(&self, out: &Path) -> Result<u64, InitramfsError> {
        let (guest, busybox) = self.read_programs()?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        let tmp = tempfile::NamedTempFile::new_in(parent.unwrap_or(Path::new(".")))
            .map_err(io_err("create a file beside", out))?;
        let mut cpio = Cpio::new(io::BufWriter::new(tmp.as_file()));
        self.add_root(&mut cpio, &busybox)?;
        self.add_nlxtp(&mut cpio, &guest, &busybox)?;
        cpio.finish()?.flush()?;
        persist(tmp, out)
    }

    /// The guest binary and busybox, each checked to be static and for the kernel's
    /// architecture.
    fn read_programs(&self) -> Result<(Vec<u8>, Vec<u8>), InitramfsError> {
        let arch = self.kernel.arch;
        if !self.guest.is_file() {
            return Err(InitramfsError::NoGuest {
                path: self.guest.to_owned(),
                target: arch.guest_target(),
            });
        }
        let guest = fs::read(self.guest).map_err(io_err("read", self.guest))?;
        check_static(self.guest, &guest, arch, None)?;
        let busybox = fs::read(self.busybox).map_err(io_err("read", self.busybox))?;
        check_static(
            self.busybox,
            &busybox,
            arch,
            Some("install busybox-static, or let nlxtp fetch it"),
        )?;
        Ok((guest, busybox))
    }

    /// The root filesystem: the one given, or a minimal one of `busybox`.
    fn add_root<W: Write>(&self, cpio: &mut Cpio<W>, busybox: &[u8]) -> Result<(), InitramfsError> {
        if let Some(root) = self.rootfs {
            return add_tree(cpio, root, Path::new(""));
        }
        for dir in [
            "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "mnt", "tmp",
            "root", "etc", "var", "var/log", "lib",
        ] {
            cpio.dir(dir, 0o755)?;
        }
        cpio.file("bin/busybox", 0o755, busybox)?;
        cpio.symlink("bin/sh", "busybox")?;
        cpio.file(
            "etc/os-release",
            0o644,
            b"ID=nlxtp-minimal\nVERSION_ID=1\nPRETTY_NAME=\"nlxtp minimal guest (busybox)\"\n",
        )?;
        Ok(())
    }

    /// nlxtp's files over the root: the console, the host programs, `.nlxtp/` (busybox,
    /// the guest binary and its aliases, the kernel's modules) and `/init`.
    fn add_nlxtp<W: Write>(
        &self,
        cpio: &mut Cpio<W>,
        guest: &[u8],
        busybox: &[u8],
    ) -> Result<(), InitramfsError> {
        // The kernel opens /dev/console for init's standard streams before devtmpfs.
        cpio.dir("dev", 0o755)?;
        cpio.char_device("dev/console", 0o600, 5, 1)?;
        for program in self.host_programs {
            add_dynamic_program(cpio, program)?;
        }
        for dir in [".nlxtp", ".nlxtp/bin", ".nlxtp/modules"] {
            cpio.dir(dir, 0o755)?;
        }
        if self.rootfs.is_some() {
            cpio.file(".nlxtp/busybox", 0o755, busybox)?;
        } else {
            cpio.symlink(".nlxtp/busybox", "/bin/busybox")?;
        }
        cpio.file(".nlxtp/bin/nlxtp-guest", 0o755, guest)?;
        for alias in ["archive_setstatus", "nlxtp-status"] {
            cpio.symlink(&format!(".nlxtp/bin/{alias}"), "nlxtp-guest")?;
        }
        let mut names = Vec::new();
        for module in &self.kernel.modules {
            cpio.file(
                &format!(".nlxtp/modules/{}.ko", module.name),
                0o644,
                &module.bytes()?,
            )?;
            names.push(module.name.as_str());
        }
        cpio.file(".nlxtp/modules.list", 0o644, names.join("\n").as_bytes())?;
        let applets = if self.rootfs.is_some() {
            "/.nlxtp/applets"
        } else {
            "/bin"
        };
        cpio.file("init", 0o755, INIT.replace("@APPLETS@", applets).as_bytes())?;
        Ok(())
    }
}

/// Puts the written image `tmp` in place at `out`, readable by all; returns its size.
fn persist(tmp: tempfile::NamedTempFile, out: &Path) -> Result<u64, InitramfsError> {
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io_err("write", out))?;
    let len = tmp.as_file().metadata().map_or(0, |m| m.len());
    tmp.persist(out).map_err(|e| InitramfsError::Io {
        what: "write",
        path: out.to_owned(),
        source: e.error,
    })?;
    Ok(len)
}

/// A static busybox for `arch`: the host's `/bin/busybox` when it is one
/// (`busybox-static`), else Debian's `busybox-static` for `arch`, fetched once into the
/// cache.
///
/// # Errors
/// When it cannot be fetched.
pub fn busybox(arch: Arch, note: &mut dyn FnMut(&str)) -> Result<PathBuf, InitramfsError> {
    let host = Path::new("/bin/busybox");
    if let Ok(bytes) = fs::read(host) {
        if elf(&bytes) == Some((arch, true)) {
            return Ok(host.to_owned());
        }
    }
    let root = debian::package("busybox-static", arch, note)?;
    Ok(root.join("bin/busybox"))
}

/// An ELF file's architecture and whether it is static (no `PT_INTERP`).
pub fn elf(bytes: &[u8]) -> Option<(Arch, bool)> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    // 64-bit, little-endian only: the architectures nlxtp boots.
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let arch = match u16_at(0x12)? {
        0x3e => Arch::X86_64,
        0xb7 => Arch::Aarch64,
        _ => return None,
    };
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let interp = (0..phnum.min(256))
        .any(|i| u32_at(phoff.saturating_add(i.saturating_mul(phentsize))) == Some(3));
    Some((arch, !interp))
}

fn check_static(
    path: &Path,
    bytes: &[u8],
    arch: Arch,
    hint: Option<&str>,
) -> Result<(), InitramfsError> {
    if elf(bytes) == Some((arch, true)) {
        return Ok(());
    }
    Err(InitramfsError::WrongProgram {
        path: path.to_owned(),
        arch,
        hint: hint.map(str::to_owned).or_else(|| {
            Some(format!(
                "build it with: cargo build --manifest-path guest-min/Cargo.toml --release --target {}",
                arch.guest_target()
            ))
        }),
    })
}

/// Adds the tree at `dir` (files, directories, symbolic links; nothing else) in name
/// order, as `at`.
fn add_tree<W: Write>(cpio: &mut Cpio<W>, dir: &Path, at: &Path) -> Result<(), InitramfsError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err("read", dir))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let Some(name) = path.file_name() else {
            continue;
        };
        let inside = at.join(name);
        let inside_str = inside.to_string_lossy();
        let meta = fs::symlink_metadata(&path).map_err(io_err("read", &path))?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            cpio.dir(&inside_str, mode)?;
            add_tree(cpio, &path, &inside)?;
        } else if meta.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read", &path))?;
            cpio.symlink(&inside_str, &target.to_string_lossy())?;
        } else if meta.is_file() {
            cpio.file(
                &inside_str,
                mode,
                &fs::read(&path).map_err(io_err("read", &path))?,
            )?;
        }
    }
    Ok(())
}

/// Adds the host's dynamically linked `program` and the shared libraries `ldd` names
/// for it, each at its own path.
fn add_dynamic_program<W: Write>(cpio: &mut Cpio<W>, program: &Path) -> Result<(), InitramfsError> {
    let ldd = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io_err("run ldd on", program))?;
    let mut files = vec![program.to_owned()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line.split("=>").last().unwrap_or(line).trim();
        if let Some(path) = path
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            files.push(PathBuf::from(path));
        }
    }
    for file in &files {
        let inside = file.strip_prefix("/").unwrap_or(file);
        let mut at = PathBuf::new();
        for part in inside.parent().into_iter().flat_map(Path::iter) {
            at.push(part);
            cpio.dir(&at.to_string_lossy(), 0o755)?;
        }
        let bytes = fs::read(file).map_err(io_err("read", file))?;
        cpio.file(&inside.to_string_lossy(), 0o755, &bytes)?;
    }
    Ok(())
}

/// A writer of the "new ASCII" (newc) cpio format, as the kernel unpacks an initramfs.
/// Each path is written once: the first entry for a path wins. Every entry has owner 0,
/// time 0 and inodes counted from 1: the same calls give the same bytes.
#[derive(Debug)]
pub struct Cpio<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    paths: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    /// A writer into `out`.
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            next_ino: 1,
            written: 0,
            paths: BTreeSet::new(),
        }
    }

    /// A directory (`path` without a leading `/`, as all paths here).
    ///
    /// # Errors
    /// When `out` fails.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, 0o040000 | perm, 2, (0, 0), &[])
    }

    /// A regular file.
    ///
    /// # Errors
    /// When `out` fails or `data` is over 4 GiB.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, 0o100000 | perm, 1, (0, 0), data)
    }

    /// A symbolic link.
    ///
    /// # Errors
    /// When `out` fails.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, 0o120000 | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device.
    ///
    /// # Errors
    /// When `out` fails.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, 0o020000 | perm, 1, (major, minor), &[])
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        if name != "TRAILER!!!" && !self.paths.insert(name.to_owned()) {
            return Ok(());
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name} is over 4 GiB, too large for cpio")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.put(&[0u8; 3][..pad as usize])
    }

    /// The trailer; returns `out`.
    ///
    /// # Errors
    /// When `out` fails.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }
}

impl From<io::Error> for InitramfsError {
    fn from(source: io::Error) -> Self {
        InitramfsError::Io {
            what: "write",
            path: PathBuf::from("the initramfs"),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_matches_cpio() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.dir("etc", 0o755).unwrap();
        cpio.file("etc/x", 0o644, b"hello").unwrap();
        cpio.symlink("etc/y", "x").unwrap();
        cpio.file("etc/x", 0o644, b"again").unwrap();
        let bytes = cpio.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        // GNU cpio (installed by scripts/setup) lists what we wrote, each path once.
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        fs::write(&archive, &bytes).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            listing.contains("etc/x") && listing.contains("etc/y -> x"),
            "{listing}"
        );
        assert_eq!(listing.matches("etc/x").count(), 1, "{listing}");
    }

    #[test]
    fn elf_headers() {
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf(&exe).map(|(a, _)| Some(a)), Some(Arch::host()));
        assert_eq!(elf(b"#!/bin/sh\n"), None);
    }
}
