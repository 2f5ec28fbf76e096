//! The container directory backend: a container's shared area is a directory inside its
//! root filesystem (say `/var/lib/lxc/c1/rootfs/mnt/nlXTP`). The guest controls every
//! byte and every name in it, and may change any of them at any moment, racing the host.
//!
//! # How paths are resolved
//!
//! The area's root is opened once, as a directory fd ([`ContainerDir::open`],
//! [`ContainerDir::open_in`]). Every later lookup starts from that fd (or from a
//! directory fd reached from it) with `openat2` and `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`: the kernel refuses any
//! symbolic link, `..` escape or mount crossing on the way, atomically with the lookup.
//! Nothing here resolves `..`, and what a lookup returns is checked on the fd it opened,
//! never by a second lookup, so a guest that swaps a directory for a symlink in the
//! middle of a walk gets the walk refused (or sees its own files), never a byte from
//! outside the area.
//!
//! # What is opened
//!
//! Only regular files and directories, and only after their type is known from the
//! inode itself. An entry is first opened with `O_PATH | O_NOFOLLOW`, which opens no
//! device, FIFO or socket and returns a symlink as itself; `fstat` on that fd gives its
//! type. A directory is then reopened as `.` beneath that fd; a regular file is reopened
//! for reading through `/proc/self/fd/N`, which is the same inode (no swap can slip in
//! between, unlike a second lookup by name), with `O_NONBLOCK` so a lease the guest holds
//! makes the read fail instead of wait. So a FIFO never blocks the host, a device is
//! never opened (opening some has effects: a watchdog, a tape), and a guest-made mount
//! (a FUSE server could stall every read) is never entered.
//!
//! # Walks
//!
//! Parents come before their contents, each directory's entries in byte order of their
//! names. A walk does not fail on what a guest's script may well leave behind: symbolic
//! links, FIFOs, sockets, devices, mount points, names that are not UTF-8 or make a path
//! longer than [`AreaPath::MAX_LEN`], and entries that vanish while the walk reads them
//! are skipped, and counted in [`Skipped`] ([`ContainerDir::walk_report`]). Every name
//! read counts against [`WalkLimits::max_entries`], skipped or not, so a directory of
//! millions of symlinks still ends the walk in bounded time. A regular file the host
//! cannot open or read (permissions, a lease) ends the walk with an error, so a download
//! is never silently incomplete; a file that shrinks while it is read does too.
//!
//! # Upload ([`SharedArea::replace`])
//!
//! In place, in this order:
//!
//! 1. Take an exclusive `flock` on the area's root (waiting up to 30 s), so two uploads
//!    from the host never interleave. (A guest can take it too; that only delays, or
//!    fails, its own uploads.)
//! 2. Remove `auto_exec.sh`, so no old script stands next to new files.
//! 3. Remove everything else beneath the root, through directory fds (`unlinkat`, never
//!    following a link). A directory nested deeper than 48 levels is first moved up to
//!    the root and removed from there, so a guest's deep tree costs at most 48 open
//!    fds. The removal reads at most ten million names and passes over the root at most
//!    a thousand times, so a guest that refills the area as fast as the host empties it
//!    ends the upload with an error.
//! 4. Check the free space (an upload that does not fit fails here, leaving the area
//!    empty), create the directories, then write the files in the order given. Files
//!    are created with `O_CREAT | O_EXCL` beneath the root, so a name the guest planted
//!    meanwhile is an error, never a write through it. Each new file and directory gets
//!    the owner of the area's root (in a container with a user namespace that is the
//!    container's root, so the guest can use them), and the mode asked for without the
//!    setuid, setgid and sticky bits (directories get theirs last, so a read-only
//!    directory is still filled).
//! 5. `syncfs`: every file and the manifest are on disk before the script can appear.
//! 6. Write `auto_exec.sh` to a temporary name in the root, `fsync` it, rename it into
//!    place, `fsync` the root.
//!
//! A crash (or an error) at any point therefore leaves the old area as it was (before
//! step 2), no `auto_exec.sh`, or the complete new one with the complete manifest and
//! every other file of the upload beside it, on disk. A guest daemon watching with inotify sees the script appear once,
//! by a rename (`IN_MOVED_TO`), never created empty and then filled. What a crash before
//! step 6 leaves besides is a partial set of files: old ones partly removed, or new ones
//! partly written (and, perhaps, the temporary script or a `.nlxtp-trash-*` directory,
//! which the next upload removes). Without the script the guest runs nothing, and the
//! next upload clears it all.
//!
//! Why not build the new content in a sibling directory and swap it in with
//! `renameat2(RENAME_EXCHANGE)`, which would give "old or new, never a mix": the guest
//! holds the area's directory, not its name. Its inotify watch, a running script's
//! working directory and any open fd stay on the old inode, so after the swap a guest
//! daemon watching the area would never see the new `auto_exec.sh` at all; and when the
//! area is a bind mount into the container, as it usually is, its root cannot be renamed
//! (`EBUSY`). The partial state is harmless instead, because nothing runs without the
//! script.
//!
//! Not handled: if the area's root itself is on a filesystem the guest serves (a FUSE
//! mount the host can see), reads can stall; mount points inside the area are skipped.

mod remove;
mod resolve;
mod walk;
mod write;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nlxtp_core::slots::STATUS_FILE_LEN;
use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use self::remove::Remover;
use self::resolve::{beneath, beneath_with, c_path, kind_name, reopen, root_error};
pub use self::walk::Skipped;
use self::write::Plan;
use crate::area::{
    AreaError, AreaKind, AreaPath, Capabilities, Durability, Entry, SharedArea, StatusRead,
    UploadFile, Visitor, WalkLimits, STATUS_FILE,
};

/// A container's shared area: a directory, opened once.
///
/// It holds the directory's fd for its whole life: if the directory is renamed or
/// replaced afterwards, this keeps working on the one it opened.
#[derive(Debug)]
pub struct ContainerDir {
    path: PathBuf,
    root: OwnedFd,
}

impl ContainerDir {
    /// The area at `path`, a directory. The last component must not be a symbolic link
    /// (the guest may have planted one); the components before it are followed as they
    /// are, so they must be the host's: use [`ContainerDir::open_in`] when the area lies
    /// below directories the guest controls.
    ///
    /// # Errors
    /// [`AreaError::NoImage`] if there is nothing at `path`, [`AreaError::Io`] if it is
    /// a symbolic link or not a directory, or cannot be opened.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, AreaError> {
        let path = path.into();
        let root = rfs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| root_error(e, &path))?;
        Ok(ContainerDir { path, root })
    }

    /// The area at `area`, a path inside the container (`/mnt/nlXTP`, say), below the
    /// container's root filesystem `rootfs` as the host sees it. `rootfs` is the host's
    /// and opened as it is; `area` is resolved beneath it without following any symbolic
    /// link or `..` out of it, since the guest controls each of its components. Mounts
    /// on the way are crossed: the area is often a bind mount.
    ///
    /// # Errors
    /// As [`ContainerDir::open`].
    pub fn open_in(rootfs: &Path, area: &str) -> Result<Self, AreaError> {
        let base = rfs::open(
            rootfs,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| root_error(e, rootfs))?;
        let relative = area.trim_start_matches('/');
        let path = rootfs.join(relative);
        let relative = if relative.is_empty() { "." } else { relative };
        let name = CString::new(relative)
            .map_err(|e| AreaError::io("open the area directory", &path, io::Error::other(e)))?;
        let root = beneath_with(
            base.as_fd(),
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| root_error(e, &path))?;
        Ok(ContainerDir { path, root })
    }

    /// Where `path` is on the host, for messages.
    fn host(&self, path: &AreaPath) -> PathBuf {
        self.path.join(path.as_str())
    }

    fn lookup_error(&self, e: Errno, path: &AreaPath) -> AreaError {
        match e {
            Errno::NOENT | Errno::NOTDIR => AreaError::NotFound { path: path.clone() },
            Errno::LOOP => AreaError::NotRegular {
                path: path.clone(),
                kind: "symbolic link",
            },
            Errno::XDEV => AreaError::NotRegular {
                path: path.clone(),
                kind: "mount point",
            },
            _ => AreaError::io("open", &self.host(path), e.into()),
        }
    }

    /// The root again as a new open file description, to read or lock it (each call
    /// has its own directory offset).
    fn reopen_root(&self) -> Result<OwnedFd, AreaError> {
        beneath(
            self.root.as_fd(),
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| AreaError::io("open the area directory", &self.path, e.into()))
    }

    /// Opens the regular file at `path` for reading, with its size when opened.
    fn open_regular(&self, path: &AreaPath) -> Result<(File, u64), AreaError> {
        let fd = beneath(
            self.root.as_fd(),
            &c_path(path.as_str()),
            OFlags::PATH | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| self.lookup_error(e, path))?;
        let stat =
            rfs::fstat(&fd).map_err(|e| AreaError::io("inspect", &self.host(path), e.into()))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(AreaError::NotAFile { path: path.clone() }),
            other => {
                return Err(AreaError::NotRegular {
                    path: path.clone(),
                    kind: kind_name(other),
                })
            }
        }
        let file = reopen(&fd).map_err(|e| AreaError::io("open", &self.host(path), e))?;
        Ok((file, u64::try_from(stat.st_size).unwrap_or(0)))
    }

    /// Opens the directory at `path` (the root for `None`) that the upload made, to
    /// create or change entries in it.
    fn open_dir(&self, path: Option<&AreaPath>) -> Result<OwnedFd, AreaError> {
        let Some(path) = path else {
            return self.reopen_root();
        };
        beneath(
            self.root.as_fd(),
            &c_path(path.as_str()),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| {
            let source = match e {
                Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV => io::Error::other(
                    format!("the guest replaced or removed it during the upload ({e})"),
                ),
                e => e.into(),
            };
            AreaError::io("open the upload's directory", &self.host(path), source)
        })
    }
}

impl SharedArea for ContainerDir {
    fn location(&self) -> &Path {
        &self.path
    }

    fn kind(&self) -> AreaKind {
        AreaKind::Directory
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            folds_case: false,
            keeps_modes: true,
            atomic_replace: false,
            live: true,
            holdable: false,
        }
    }

    /// Never: a container takes an upload at once.
    fn is_busy(&self) -> Result<bool, AreaError> {
        Ok(false)
    }

    /// Opens the status file beneath the root and reads at most
    /// [`STATUS_FILE_LEN`] + 1 bytes: a few system calls, no cache (`how` is ignored).
    fn read_status_file(&self, _how: StatusRead, out: &mut Vec<u8>) -> Result<(), AreaError> {
        out.clear();
        let path = AreaPath::new(STATUS_FILE).expect("a valid protocol name");
        let file = match self.open_regular(&path) {
            Ok((file, _)) => file,
            Err(AreaError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        file.take(STATUS_FILE_LEN as u64 + 1)
            .read_to_end(out)
            .map_err(|e| AreaError::io("read", &self.host(&path), e))?;
        Ok(())
    }

    fn read_file(&self, path: &AreaPath, max_len: u64) -> Result<Vec<u8>, AreaError> {
        let (file, size) = self.open_regular(path)?;
        let too_large = || AreaError::TooLarge {
            what: format!("the file {path}"),
            limit: max_len,
        };
        if size > max_len {
            return Err(too_large());
        }
        // The size is the guest's and may change: read one byte more than allowed.
        let mut out = Vec::with_capacity(size.min(1 << 20) as usize);
        file.take(max_len.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| AreaError::io("read", &self.host(path), e))?;
        if out.len() as u64 > max_len {
            return Err(too_large());
        }
        Ok(out)
    }

    fn walk(&self, limits: &WalkLimits, visit: &mut Visitor<'_>) -> Result<(), AreaError> {
        self.walk_report(limits, visit).map(|_| ())
    }

    /// As the walk, but opens no file for reading.
    fn list(&self, limits: &WalkLimits) -> Result<Vec<Entry>, AreaError> {
        let mut out = Vec::new();
        self.walk_inner(limits, false, &mut |entry, _| {
            out.push(entry.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// See the module docs: in place, the start script last and atomically.
    fn replace_with(
        &self,
        files: Vec<UploadFile>,
        durability: Durability,
    ) -> Result<(), AreaError> {
        let plan = Plan::new(files)?;
        let _lock = self.lock()?;
        Remover::new(self).clear()?;
        self.check_space(&plan)?;
        self.write(plan, durability)
    }
}
