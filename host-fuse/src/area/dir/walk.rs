//! Walking a container's area: parents before their contents, names in byte order,
//! what a guest leaves behind (links, FIFOs, devices, mounts, bad names) skipped and
//! counted, every read bounded by the walk's budget.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::resolve::{beneath, reopen};
use super::ContainerDir;
use crate::area::{AreaError, AreaPath, Entry, EntryKind, Visitor, WalkBudget, WalkLimits};

/// What a walk skipped instead of visiting (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Symbolic links, never followed.
    pub symlinks: usize,
    /// FIFOs (named pipes), never opened.
    pub fifos: usize,
    /// Unix sockets.
    pub sockets: usize,
    /// Character and block devices (and anything of another type), never opened.
    pub devices: usize,
    /// Mount points inside the area, never entered.
    pub mounts: usize,
    /// Names that are not UTF-8, or make a path longer than [`AreaPath::MAX_LEN`].
    pub bad_names: usize,
    /// Entries that disappeared between reading their name and opening them.
    pub vanished: usize,
}

impl Skipped {
    /// How many entries were skipped in all.
    pub fn total(&self) -> usize {
        self.symlinks
            + self.fifos
            + self.sockets
            + self.devices
            + self.mounts
            + self.bad_names
            + self.vanished
    }

    pub(super) fn count(&mut self, kind: FileType) {
        match kind {
            FileType::Symlink => self.symlinks += 1,
            FileType::Fifo => self.fifos += 1,
            FileType::Socket => self.sockets += 1,
            _ => self.devices += 1,
        }
    }
}

impl ContainerDir {
    /// Like [`SharedArea::walk`](crate::area::SharedArea::walk), and says what it skipped.
    ///
    /// # Errors
    /// As [`SharedArea::walk`](crate::area::SharedArea::walk).
    pub fn walk_report(
        &self,
        limits: &WalkLimits,
        visit: &mut Visitor<'_>,
    ) -> Result<Skipped, AreaError> {
        self.walk_inner(limits, true, visit)
    }

    pub(super) fn walk_inner(
        &self,
        limits: &WalkLimits,
        read_files: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<Skipped, AreaError> {
        let mut walk = Walk {
            area: self,
            budget: WalkBudget::new(limits),
            read_files,
            visit,
            skipped: Skipped::default(),
        };
        walk.dir(self.reopen_root()?, None, 0)?;
        Ok(walk.skipped)
    }
}

/// One walk's state.
pub(super) struct Walk<'a, 'v> {
    area: &'a ContainerDir,
    budget: WalkBudget,
    read_files: bool,
    visit: &'a mut Visitor<'v>,
    skipped: Skipped,
}

impl Walk<'_, '_> {
    /// Visits what is in `dir` (an fd open for reading), whose path is `parent`.
    pub(super) fn dir(
        &mut self,
        dir: OwnedFd,
        parent: Option<&AreaPath>,
        depth: usize,
    ) -> Result<(), AreaError> {
        let shown = parent.map_or_else(|| self.area.path.clone(), |p| self.area.host(p));
        let room = self.budget.entries_left();
        let (dir, names) =
            read_names(dir, room, &shown)?.ok_or_else(|| self.budget.too_many_entries())?;
        self.budget.count_entries(names.len())?;
        for name in names {
            let path = name.to_str().ok().and_then(|n| match parent {
                Some(p) => p.join(n).ok(),
                None => AreaPath::new(n).ok(),
            });
            let Some(path) = path else {
                self.skipped.bad_names += 1;
                continue;
            };
            let flags = OFlags::PATH | OFlags::NOFOLLOW;
            let fd = match beneath(dir.as_fd(), &name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    self.skipped.vanished += 1;
                    continue;
                }
                Err(Errno::XDEV) => {
                    self.skipped.mounts += 1;
                    continue;
                }
                Err(e) => return Err(AreaError::io("open", &self.area.host(&path), e.into())),
            };
            let stat = rfs::fstat(&fd)
                .map_err(|e| AreaError::io("inspect", &self.area.host(&path), e.into()))?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => self.subdir(fd, path, &stat, depth)?,
                FileType::RegularFile => self.file(&fd, path, &stat)?,
                other => self.skipped.count(other),
            }
        }
        Ok(())
    }

    pub(super) fn subdir(
        &mut self,
        fd: OwnedFd,
        path: AreaPath,
        stat: &Stat,
        depth: usize,
    ) -> Result<(), AreaError> {
        self.budget.enter(depth + 1, &path)?;
        let entry = Entry {
            path,
            kind: EntryKind::Dir,
            size: 0,
            mode: stat.st_mode & 0o7777,
        };
        (self.visit)(&entry, None).map_err(AreaError::sink)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        let sub = beneath(fd.as_fd(), c".", flags, Mode::empty())
            .map_err(|e| AreaError::io("open", &self.area.host(&entry.path), e.into()))?;
        drop(fd);
        self.dir(sub, Some(&entry.path), depth + 1)
    }

    pub(super) fn file(
        &mut self,
        fd: &OwnedFd,
        path: AreaPath,
        stat: &Stat,
    ) -> Result<(), AreaError> {
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        self.budget.count_file(size)?;
        let entry = Entry {
            path,
            kind: EntryKind::File,
            size,
            mode: stat.st_mode & 0o7777,
        };
        if !self.read_files {
            return (self.visit)(&entry, None).map_err(AreaError::sink);
        }
        let shown = self.area.host(&entry.path);
        let file = reopen(fd).map_err(|e| AreaError::io("open", &shown, e))?;
        let mut reader = ExactReader {
            file,
            size,
            left: size,
            shown,
            failed: None,
        };
        let visited = (self.visit)(&entry, Some(&mut reader));
        if let Some(failed) = reader.failed.take() {
            return Err(failed);
        }
        visited.map_err(AreaError::sink)
    }
}

/// The names in the directory open as `dir` (without `.` and `..`), sorted, and the
/// directory again; `None` if there are more than `room`.
pub(super) fn read_names(
    dir: OwnedFd,
    room: usize,
    shown: &Path,
) -> Result<Option<(OwnedFd, Vec<CString>)>, AreaError> {
    let list_err = |e: Errno| AreaError::io("list", shown, e.into());
    let again = rustix::io::fcntl_dupfd_cloexec(&dir, 0).map_err(list_err)?;
    let mut reader = Dir::new(dir).map_err(list_err)?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if names.len() == room {
            return Ok(None);
        }
        names.push(name.to_owned());
    }
    names.sort();
    Ok(Some((again, names)))
}

/// Reads exactly `size` bytes of a file the guest may change meanwhile.
pub(super) struct ExactReader {
    file: File,
    size: u64,
    left: u64,
    shown: PathBuf,
    /// Why a read failed: reported by the walk instead of the visitor's error.
    failed: Option<AreaError>,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let got = loop {
            match self.file.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let failure = match got {
            Ok(0) => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file shrank from {} to {} bytes while it was read",
                    self.size,
                    self.size - self.left
                ),
            ),
            Ok(n) => {
                self.left -= n as u64;
                return Ok(n);
            }
            Err(e) => e,
        };
        let message = failure.to_string();
        self.failed = Some(AreaError::io("read", &self.shown, failure));
        Err(io::Error::other(message))
    }
}
