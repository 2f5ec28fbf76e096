//! What the system says about mounts: /proc/self/mountinfo, stale FUSE mounts, the
//! processes that use a mount, and unmounting (with fusermount3 for a user who may not
//! call umount2).

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

/// The source the view shows in /proc/mounts (its type is `fuse`, or `fuse.nlxtp` when
/// mounted through fusermount3).
pub(crate) const FS_NAME: &str = "nlxtp";

/// The absolute form of `mountpoint` with its parent's symbolic links resolved: the
/// mount point itself is not resolved, since a stale mount cannot be.
pub(crate) fn normalize(mountpoint: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(mountpoint)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
        _ => Ok(abs),
    }
}

/// `\040`-style escapes of /proc/self/mountinfo undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|b| (b'0'..=b'7').contains(b))
                .then(|| d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0')))
        });
        match (bytes[i], octal) {
            (b'\\', Some(v)) if v < 256 => {
                out.push(v as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What is mounted at `mountpoint` (normalized), if anything: (type, source).
pub(crate) fn mounted(mountpoint: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_string_lossy();
    text.lines().rev().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let point = unescape(head.split(' ').nth(4)?);
        let mut fields = tail.split(' ');
        let fstype = fields.next()?.to_owned();
        let source = unescape(fields.next().unwrap_or(""));
        (point == want).then_some((fstype, source))
    })
}

/// Whether a mount of this type and source is an nlxtp view.
pub(crate) fn is_view(fstype: &str, source: &str) -> bool {
    fstype.starts_with("fuse") && source == FS_NAME
}

/// Whether `mountpoint` is a FUSE mount whose process died.
pub(crate) fn is_stale(mountpoint: &Path) -> bool {
    matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(Errno::ENOTCONN as i32))
}

/// Processes whose working directory, root or an open file is under `mountpoint`.
pub(crate) fn users_of(mountpoint: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let base = entry.path();
        let mut links = vec![base.join("cwd"), base.join("root")];
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            links.extend(fds.flatten().take(4096).map(|fd| fd.path()));
        }
        for link in links {
            let Ok(target) = std::fs::read_link(&link) else {
                continue;
            };
            if target.starts_with(mountpoint) {
                let what = match link.file_name().and_then(OsStr::to_str) {
                    Some("cwd") => "working directory",
                    Some("root") => "root directory",
                    _ => "open file",
                };
                out.push(format!("{} (pid {pid}, {what})", target.display(),) + &comm(&pid));
                break;
            }
        }
        if out.len() >= 20 {
            break;
        }
    }
    out
}

/// " by NAME" for a process, or nothing if it is gone.
pub(crate) fn comm(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| format!(" by {}", c.trim()))
        .unwrap_or_default()
}

/// Unmounts `mountpoint`: at once, or detached (`lazy`). Falls back to fusermount3 for
/// a user who may not unmount.
pub(crate) fn unmount_now(mountpoint: &Path, lazy: bool) -> Result<(), Errno> {
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    match umount2(mountpoint, flags) {
        Err(Errno::EPERM) => {
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u").arg("-q");
            if lazy {
                cmd.arg("-z");
            }
            let ok = cmd
                .arg("--")
                .arg(mountpoint)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                Ok(())
            } else {
                Err(Errno::EBUSY)
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape(r"/x\9"), r"/x\9");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn root_is_mounted_and_a_temp_dir_is_not() {
        assert!(mounted(Path::new("/")).is_some());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mounted(&normalize(dir.path()).unwrap()), None);
        assert!(is_view("fuse", "nlxtp") && is_view("fuse.nlxtp", "nlxtp"));
        assert!(!is_view("fuse.sshfs", "host:") && !is_view("ext4", "nlxtp"));
    }
}
