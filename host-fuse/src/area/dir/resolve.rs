//! Lookups beneath the area's root that never leave it: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, and
//! reopening an `O_PATH` fd as the same inode (see the module docs of `dir`).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::area::AreaError;

/// Every lookup inside the area: no symlink, no magic link, no `..` escape, no mount.
pub(super) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// How a kind of entry is called in messages.
pub(super) fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}

/// `openat2` beneath `dir` with [`RESOLVE`] (or `resolve`), retrying `EINTR` and the
/// `EAGAIN` openat2 may return when it cannot rule out a race.
pub(super) fn beneath_with(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rfs::openat2(dir, path, flags | OFlags::CLOEXEC, mode, resolve) {
            Err(Errno::AGAIN | Errno::INTR) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

pub(super) fn beneath(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    beneath_with(dir, path, flags, mode, RESOLVE)
}

/// `path` as a C string; an [`AreaPath`] holds no NUL.
pub(super) fn c_path(path: &str) -> CString {
    CString::new(path).expect("an AreaPath or file name holds no NUL byte")
}

/// Opens the regular file behind an `O_PATH` fd for reading: the same inode, reopened
/// through procfs, so nothing can be swapped in between.
pub(super) fn reopen(fd: &OwnedFd) -> io::Result<File> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    match rfs::open(link.as_str(), flags, Mode::empty()) {
        Ok(file) => Ok(File::from(file)),
        // The fd is open, so only a missing procfs hides its link.
        Err(Errno::NOENT) => Err(io::Error::other(format!(
            "{link} does not exist: the host reads the area's files through /proc, mount it"
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn root_error(e: Errno, path: &Path) -> AreaError {
    let why = |text: &str| io::Error::new(io::Error::from(e).kind(), format!("{text} ({e})"));
    match e {
        Errno::NOENT => AreaError::NoImage { path: path.into() },
        Errno::LOOP => AreaError::io(
            "open the area directory",
            path,
            why("a symbolic link is on the way, and the host never follows one: the guest may have planted it"),
        ),
        Errno::NOTDIR => AreaError::io(
            "open the area directory",
            path,
            why("it is not a directory, or it is a symbolic link, which the host never follows"),
        ),
        Errno::XDEV => AreaError::io(
            "open the area directory",
            path,
            why("the path leads out of the container's root filesystem"),
        ),
        _ => AreaError::io("open the area directory", path, e.into()),
    }
}
