//! A minimal guest: busybox, the static `nlxtp-guest`, the kernel modules and an `/init`,
//! packed as a newc cpio archive (the kernel's initramfs format, uncompressed).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::kernel::{Kernel, MODULES};

/// The guest's `/init`. It mounts the pseudo filesystems, loads the modules, runs the
/// nlxtp daemon on the disk labelled NLXTP, then syncs and powers off, or stays up with
/// `nlxtp.stay` on the kernel command line. Lines starting `nlxtp-init:` on the serial
/// console are the harness's readiness signals.
pub const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/nlxtp-modules); do
  insmod "/lib/modules/$m.ko" || echo "nlxtp-init: could not load $m"
done
stay=0
heartbeat=2000
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    nlxtp.stay) stay=1 ;;
    nlxtp.heartbeat_ms=*) heartbeat="${arg#nlxtp.heartbeat_ms=}" ;;
  esac
done
echo "nlxtp-init: booted; starting the daemon at uptime $(cut -d' ' -f1 /proc/uptime)"
/bin/nlxtp-guest daemon --label NLXTP --mount-point /mnt/nlXTP --heartbeat-ms "$heartbeat"
echo "nlxtp-init: daemon exited with $?"
sync
if [ "$stay" = 1 ]; then
  echo "nlxtp-init: staying up"
  while true; do sleep 3600; done
fi
umount /mnt/nlXTP 2>/dev/null
echo "nlxtp-init: powering off"
poweroff -f
"#;

/// Builds the initramfs for `kernel` with the guest binary at `guest` into `out`.
///
/// # Errors
/// When an input cannot be read or the output written.
pub fn build(kernel: &Kernel, guest: &Path, out: &Path) -> Result<()> {
    let tmp = out.with_extension("tmp");
    let mut cpio = Cpio::new(io::BufWriter::new(
        fs::File::create(&tmp).with_context(|| format!("could not create {}", tmp.display()))?,
    ));
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "mnt",
        "tmp",
        "root",
        "etc",
        "var",
        "var/log",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(dir, 0o755)?;
    }
    // The kernel opens /dev/console for init's standard streams before devtmpfs exists.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    let busybox =
        fs::read("/bin/busybox").context("could not read /bin/busybox (install busybox-static)")?;
    cpio.file("bin/busybox", 0o755, &busybox)?;
    cpio.symlink("bin/sh", "busybox")?;
    // Real archives start with #!/bin/bash, and the guest runs the interpreter named.
    add_dynamic_program(&mut cpio, "/bin/bash")?;
    cpio.file(
        "bin/nlxtp-guest",
        0o755,
        &fs::read(guest).with_context(|| format!("could not read {}", guest.display()))?,
    )?;
    for alias in ["archive_setstatus", "nlxtp-status"] {
        cpio.symlink(&format!("bin/{alias}"), "nlxtp-guest")?;
    }
    for (name, path) in MODULES.iter().zip(&kernel.modules) {
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &fs::read(path)?)?;
    }
    cpio.file("etc/nlxtp-modules", 0o644, MODULES.join("\n").as_bytes())?;
    cpio.file(
        "etc/os-release",
        0o644,
        b"ID=nlxtp-minimal\nVERSION_ID=1\nPRETTY_NAME=\"nlxtp minimal guest (busybox)\"\n",
    )?;
    cpio.file("init", 0o755, INIT.as_bytes())?;
    cpio.finish()?.flush()?;
    fs::rename(&tmp, out)?;
    Ok(())
}

/// Adds the host's dynamically linked program at `program` and the shared libraries
/// `ldd` names for it, each at its own path.
fn add_dynamic_program<W: Write>(cpio: &mut Cpio<W>, program: &str) -> Result<()> {
    let ldd = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("could not run ldd {program}"))?;
    anyhow::ensure!(ldd.status.success(), "ldd {program} failed");
    let mut files = vec![program.to_owned()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line.split("=>").last().unwrap_or(line).trim();
        if let Some(path) = path
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            files.push(path.to_owned());
        }
    }
    let mut dirs: Vec<String> = Vec::new();
    for file in &files {
        let inside = file.trim_start_matches('/');
        let mut at = String::new();
        for part in Path::new(inside).parent().into_iter().flat_map(Path::iter) {
            at = if at.is_empty() {
                part.to_string_lossy().into_owned()
            } else {
                format!("{at}/{}", part.to_string_lossy())
            };
            if !dirs.contains(&at) && !["bin", "lib", "usr", "usr/bin"].contains(&at.as_str()) {
                cpio.dir(&at, 0o755)?;
                dirs.push(at.clone());
            }
        }
        let bytes = fs::read(file).with_context(|| format!("could not read {file}"))?;
        cpio.file(inside, 0o755, &bytes)?;
    }
    Ok(())
}

/// The initramfs for the cached kernel and a freshly built guest, kept in the cache
/// (rebuilt every call: it takes a fraction of a second and the guest may have changed).
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

/// A writer of the "new ASCII" (newc) cpio format.
struct Cpio<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Cpio {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, 0o040000 | perm, 2, (0, 0), &[])
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, 0o100000 | perm, 1, (0, 0), data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, 0o120000 | 0o777, 1, (0, 0), target.as_bytes())
    }

    fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
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
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
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

    fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        Ok(self.out)
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
        let bytes = cpio.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        // GNU cpio (installed by scripts/setup) lists what we wrote.
        let dir = std::env::temp_dir().join(format!("nlxtp-cpio-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.cpio");
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
        let _ = fs::remove_dir_all(dir);
    }
}
