//! QEMU's image locks, read and taken with OFD byte-range locks.
//!
//! QEMU (block/file-posix.c) locks byte `100 + k` of an image to say "I use permission
//! k" and byte `200 + k` to say "I do not let others have permission k"; k = 1 is WRITE.
//! A VM with a writable disk holds read locks on bytes 100, 101 and 201. So:
//!
//! - [`qemu_holds_image`] asks (`F_OFD_GETLK`) whether a write lock on byte 100, 101 or
//!   201 would conflict: if so, a QEMU has the image open.
//! - [`ImageWriteGuard`] takes write locks on bytes 100-101 and 200-201
//!   (`F_OFD_SETLK`). A QEMU starting on the image then fails ("Failed to lock byte
//!   100"), and taking the guard fails while a QEMU runs: taking it is the check, with no
//!   window between checking and locking.
//!
//! OFD locks belong to the open file description: they are released when the guard's
//! file is closed, also if the process dies, and two guards on one image exclude each
//! other even inside one process.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use crate::area::AreaError;

fn flock(kind: libc::c_int, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

/// Whether a running QEMU (or another [`ImageWriteGuard`]) holds the image at `path`.
///
/// # Errors
/// [`AreaError::NoImage`] if it does not exist, [`AreaError::Io`] if it cannot be opened
/// or the lock query fails.
pub fn qemu_holds_image(path: &Path) -> Result<bool, AreaError> {
    let file = File::open(path).map_err(|e| open_error(path, e))?;
    holds(&file, path)
}

/// Whether a QEMU holds the image open as `file` (see [`qemu_holds_image`]).
///
/// # Errors
/// [`AreaError::Io`] if the lock query fails.
pub(super) fn holds(file: &File, path: &Path) -> Result<bool, AreaError> {
    if !held_now(file, path)? {
        return Ok(false);
    }
    for pause in RECHECK {
        std::thread::sleep(pause);
        if !held_now(file, path)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A lock seen held may be one this very process let go of, whose descriptor a child
/// forked by another of its threads still shares for the moment between its fork and
/// its exec (OFD locks last as long as any copy of the descriptor): look again after
/// these pauses before taking it for a holder. A running QEMU holds its locks for good,
/// so this only delays the answer "busy", never changes it.
const RECHECK: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(2),
    std::time::Duration::from_millis(10),
];

fn held_now(file: &File, path: &Path) -> Result<bool, AreaError> {
    for byte in [100, 101, 201] {
        let mut probe = flock(libc::F_WRLCK, byte, 1);
        fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut probe))
            .map_err(|e| AreaError::io("query the locks of", path, e.into()))?;
        if i32::from(probe.l_type) != libc::F_UNLCK {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Takes the write locks on `file`: false if another holder has them. (A lock taken on
/// the first range stays when the second fails; the caller's retry takes it again, and
/// dropping the file releases it.)
fn try_lock(file: &File, path: &Path) -> Result<bool, AreaError> {
    for (start, len) in [(100, 2), (200, 2)] {
        let lock = flock(libc::F_WRLCK, start, len);
        match fcntl(file.as_fd(), FcntlArg::F_OFD_SETLK(&lock)) {
            Ok(_) => {}
            Err(Errno::EAGAIN | Errno::EACCES) => return Ok(false),
            Err(e) => return Err(AreaError::io("lock", path, e.into())),
        }
    }
    Ok(true)
}

fn open_error(path: &Path, e: std::io::Error) -> AreaError {
    match e.kind() {
        std::io::ErrorKind::NotFound => AreaError::NoImage { path: path.into() },
        _ => AreaError::io("open", path, e),
    }
}

/// Write locks on an image's QEMU lock bytes, held until dropped: while it lives, no QEMU
/// starts on that image.
#[derive(Debug)]
pub struct ImageWriteGuard {
    file: File,
    path: PathBuf,
}

impl ImageWriteGuard {
    /// Opens the image at `path` for writing and locks it.
    ///
    /// # Errors
    /// [`AreaError::Busy`] if a QEMU (or another guard) holds the image;
    /// [`AreaError::NoImage`], [`AreaError::Io`].
    pub fn acquire(path: &Path) -> Result<Self, AreaError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        Self::lock(file, path)
    }

    /// Locks an already open file (opened for writing), which `path` names.
    ///
    /// # Errors
    /// As [`ImageWriteGuard::acquire`].
    pub fn lock(file: File, path: &Path) -> Result<Self, AreaError> {
        let mut pauses = RECHECK.iter();
        while !try_lock(&file, path)? {
            // See RECHECK: a holder may be a passing fork of this process.
            match pauses.next() {
                Some(&pause) => std::thread::sleep(pause),
                None => return Err(AreaError::Busy { image: path.into() }),
            }
        }
        Ok(ImageWriteGuard {
            file,
            path: path.into(),
        })
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path it was locked under.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_exclude_each_other_and_show_as_held() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        assert!(!qemu_holds_image(&image).unwrap());
        let guard = ImageWriteGuard::acquire(&image).unwrap();
        assert!(qemu_holds_image(&image).unwrap());
        let second = ImageWriteGuard::acquire(&image).unwrap_err();
        assert!(matches!(second, AreaError::Busy { .. }), "{second:?}");
        drop(guard);
        assert!(!qemu_holds_image(&image).unwrap());
        assert!(matches!(
            qemu_holds_image(&dir.path().join("missing.img")),
            Err(AreaError::NoImage { .. })
        ));
    }
}
