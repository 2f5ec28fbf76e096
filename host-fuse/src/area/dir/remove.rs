//! Emptying a container's area before an upload, through directory fds, never following
//! a link, bounded against a guest that refills the area as fast as the host empties it.

use std::ffi::{CStr, OsStr};
use std::io::{self};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::resolve::{beneath, c_path};
use super::walk::read_names;
use super::ContainerDir;
use crate::area::{AreaError, START_SCRIPT};

/// Directory levels the removal descends with open fds before it moves a subtree up.
pub(super) const MAX_OPEN_DEPTH: usize = 48;

/// Names the removal of an old area reads at most.
pub(super) const MAX_REMOVE: u64 = 10_000_000;

/// Passes over the root before the removal gives up on a guest that keeps adding
/// entries; each pass also goes [`MAX_OPEN_DEPTH`] levels deeper into a deep tree.
pub(super) const MAX_ROUNDS: usize = 1000;

/// Attempts at removing one name the guest keeps recreating.
pub(super) const REMOVE_ATTEMPTS: usize = 4;

/// Empties the area (step 3 of the module docs).
pub(super) struct Remover<'a> {
    area: &'a ContainerDir,
    /// Names still allowed to be read.
    budget: u64,
    /// The next `.nlxtp-trash-N` to try.
    trash: u64,
}

impl<'a> Remover<'a> {
    pub(super) fn new(area: &'a ContainerDir) -> Self {
        Remover {
            area,
            budget: MAX_REMOVE,
            trash: 0,
        }
    }

    pub(super) fn clear(mut self) -> Result<(), AreaError> {
        let root = self.area.reopen_root()?;
        self.remove(
            &root,
            &c_path(START_SCRIPT),
            &self.area.path.join(START_SCRIPT),
            0,
        )?;
        let shown = self.area.path.clone();
        for _ in 0..MAX_ROUNDS {
            if self.clear_dir(self.area.reopen_root()?, &shown, 0)? == 0 {
                return Ok(());
            }
        }
        Err(AreaError::io(
            "empty",
            &shown,
            io::Error::other("the guest adds entries as fast as the host removes them"),
        ))
    }

    /// Removes everything in the directory open as `dir` (at `shown`); returns how
    /// many names it found.
    pub(super) fn clear_dir(
        &mut self,
        dir: OwnedFd,
        shown: &Path,
        depth: usize,
    ) -> Result<usize, AreaError> {
        let room = usize::try_from(self.budget).unwrap_or(usize::MAX);
        let Some((dir, names)) = read_names(dir, room, shown)? else {
            return Err(AreaError::TooLarge {
                what: "the number of entries to remove from the old area".into(),
                limit: MAX_REMOVE,
            });
        };
        self.budget -= names.len() as u64;
        for name in &names {
            let child = shown.join(OsStr::from_bytes(name.to_bytes()));
            self.remove(&dir, name, &child, depth)?;
        }
        Ok(names.len())
    }

    /// Removes `name` in `dir` and, if it is a directory, all it holds.
    pub(super) fn remove(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        shown: &Path,
        depth: usize,
    ) -> Result<(), AreaError> {
        let err = |action, e: Errno| AreaError::io(action, shown, e.into());
        for _ in 0..REMOVE_ATTEMPTS {
            match rfs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => return Ok(()),
                Err(Errno::ISDIR) => {}
                Err(e) => return Err(err("remove", e)),
            }
            if depth + 1 >= MAX_OPEN_DEPTH {
                return self.move_to_root(dir, name, shown);
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
            let sub = match beneath(dir.as_fd(), name, flags, Mode::empty()) {
                Ok(sub) => sub,
                Err(Errno::NOENT) => return Ok(()),
                // Swapped for a symlink or a file since: unlink that instead.
                Err(Errno::LOOP | Errno::NOTDIR) => continue,
                Err(e @ Errno::XDEV) => return Err(err("remove the mount point", e)),
                Err(e) => return Err(err("open", e)),
            };
            self.clear_dir(sub, shown, depth + 1)?;
            match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => return Ok(()),
                // Refilled or swapped by the guest meanwhile: go again.
                Err(Errno::NOTEMPTY | Errno::NOTDIR) => {}
                Err(e) => return Err(err("remove", e)),
            }
        }
        Err(AreaError::io(
            "remove",
            shown,
            io::Error::other("the guest recreates it as fast as the host removes it"),
        ))
    }

    /// Moves the directory `name` in `dir` to a fresh `.nlxtp-trash-N` in the root,
    /// where a later round of [`Remover::clear`] removes it with few fds open.
    pub(super) fn move_to_root(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        shown: &Path,
    ) -> Result<(), AreaError> {
        loop {
            let trash = c_path(&format!(".nlxtp-trash-{}", self.trash));
            self.trash += 1;
            match rfs::renameat_with(dir, name, &self.area.root, &trash, RenameFlags::NOREPLACE) {
                Ok(()) | Err(Errno::NOENT) => return Ok(()),
                Err(Errno::EXIST) if self.trash < MAX_REMOVE => {}
                Err(e) => return Err(AreaError::io("move up to remove", shown, e.into())),
            }
        }
    }
}
