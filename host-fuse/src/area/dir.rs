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

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nlxtp_core::slots::STATUS_FILE_LEN;
use rustix::fs::{
    self as rfs, AtFlags, Dir, FileType, FlockOperation, Gid, Mode, OFlags, RenameFlags,
    ResolveFlags, Stat, Uid,
};
use rustix::io::Errno;

use crate::area::{
    AreaError, AreaKind, AreaPath, Capabilities, Durability, Entry, EntryKind, SharedArea,
    StatusRead, UploadData, UploadFile, Visitor, WalkBudget, WalkLimits, START_SCRIPT, STATUS_FILE,
};

/// Every lookup inside the area: no symlink, no magic link, no `..` escape, no mount.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Directory levels the removal descends with open fds before it moves a subtree up.
const MAX_OPEN_DEPTH: usize = 48;

/// Names the removal of an old area reads at most.
const MAX_REMOVE: u64 = 10_000_000;

/// Passes over the root before the removal gives up on a guest that keeps adding
/// entries; each pass also goes [`MAX_OPEN_DEPTH`] levels deeper into a deep tree.
const MAX_ROUNDS: usize = 1000;

/// Attempts at removing one name the guest keeps recreating.
const REMOVE_ATTEMPTS: usize = 4;

/// How long an upload waits for another one to finish.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// The longest file name Linux filesystems take.
const NAME_MAX: usize = 255;

/// Permission bits an upload keeps: no setuid, setgid or sticky bit.
const KEPT_MODE: u32 = 0o777;

/// A container's shared area: a directory, opened once.
///
/// It holds the directory's fd for its whole life: if the directory is renamed or
/// replaced afterwards, this keeps working on the one it opened.
#[derive(Debug)]
pub struct ContainerDir {
    path: PathBuf,
    root: OwnedFd,
}

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

    fn count(&mut self, kind: FileType) {
        match kind {
            FileType::Symlink => self.symlinks += 1,
            FileType::Fifo => self.fifos += 1,
            FileType::Socket => self.sockets += 1,
            _ => self.devices += 1,
        }
    }
}

/// How a kind of entry is called in messages.
fn kind_name(kind: FileType) -> &'static str {
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
fn beneath_with(
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

fn beneath(dir: BorrowedFd<'_>, path: &CStr, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    beneath_with(dir, path, flags, mode, RESOLVE)
}

/// `path` as a C string; an [`AreaPath`] holds no NUL.
fn c_path(path: &str) -> CString {
    CString::new(path).expect("an AreaPath or file name holds no NUL byte")
}

/// Opens the regular file behind an `O_PATH` fd for reading: the same inode, reopened
/// through procfs, so nothing can be swapped in between.
fn reopen(fd: &OwnedFd) -> io::Result<File> {
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

fn root_error(e: Errno, path: &Path) -> AreaError {
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

/// A name unique enough for a temporary file of this process.
fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos:08x}-{n}", std::process::id())
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

    /// Like [`SharedArea::walk`], and says what it skipped.
    ///
    /// # Errors
    /// As [`SharedArea::walk`].
    pub fn walk_report(
        &self,
        limits: &WalkLimits,
        visit: &mut Visitor<'_>,
    ) -> Result<Skipped, AreaError> {
        self.walk_inner(limits, true, visit)
    }

    fn walk_inner(
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

    /// Takes the upload lock: `flock` on a fresh open of the root.
    fn lock(&self) -> Result<OwnedFd, AreaError> {
        let fd = self.reopen_root()?;
        let started = Instant::now();
        loop {
            match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(fd),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) if started.elapsed() < LOCK_PATIENCE => {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(AreaError::io(
                        "lock (another upload runs, or the guest holds the lock)",
                        &self.path,
                        e.into(),
                    ))
                }
            }
        }
    }

    fn check_space(&self, plan: &Plan) -> Result<(), AreaError> {
        let vfs = rfs::fstatvfs(&self.root)
            .map_err(|e| AreaError::io("inspect the filesystem of", &self.path, e.into()))?;
        let block = vfs.f_bsize.max(512);
        let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        let files: u64 = plan
            .files
            .iter()
            .map(|f| &f.1)
            .chain(plan.script.as_ref().map(|s| &s.0))
            .map(|data| data.len().div_ceil(block).saturating_mul(block))
            .fold(0, u64::saturating_add);
        let needed = files.saturating_add(plan.dirs.len() as u64 * block);
        if needed > available {
            return Err(AreaError::NoSpace { needed, available });
        }
        Ok(())
    }

    /// Writes the plan into the (empty) area: steps 4 to 6 of the module docs.
    fn write(&self, plan: Plan, durability: Durability) -> Result<(), AreaError> {
        let root =
            rfs::fstat(&self.root).map_err(|e| AreaError::io("inspect", &self.path, e.into()))?;
        let owner = Owner(Uid::from_raw(root.st_uid), Gid::from_raw(root.st_gid));
        for (path, _) in &plan.dirs {
            let parent = self.open_dir(path.parent().as_ref())?;
            let name = c_path(path.file_name());
            match rfs::mkdirat(&parent, &name, Mode::from_raw_mode(0o700)) {
                // An existing directory is fine (the guest made it meanwhile); open_dir
                // checks it is one.
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(AreaError::io(
                        "create the directory",
                        &self.host(path),
                        e.into(),
                    ))
                }
            }
            let dir = self.open_dir(Some(path))?;
            owner.give(&dir, &self.host(path))?;
        }
        for (path, data, mode) in plan.files {
            let parent = self.open_dir(path.parent().as_ref())?;
            let name = c_path(path.file_name());
            let file = self.create(&parent, &name, &path, owner, mode)?;
            self.fill(file, data, &path)?;
        }
        for (path, mode) in &plan.dirs {
            rfs::fchmod(
                self.open_dir(Some(path))?,
                Mode::from_raw_mode(mode & KEPT_MODE),
            )
            .map_err(|e| AreaError::io("set the mode of", &self.host(path), e.into()))?;
        }
        rfs::syncfs(&self.root)
            .map_err(|e| AreaError::io("flush the filesystem of", &self.path, e.into()))?;
        if let Some((data, mode)) = plan.script {
            self.write_script(data, mode, owner, durability)?;
        }
        Ok(())
    }

    /// Creates the new file `name` in `parent` (failing if anything is there), owned by
    /// `owner`, with `mode`.
    fn create(
        &self,
        parent: &OwnedFd,
        name: &CStr,
        path: &AreaPath,
        owner: Owner,
        mode: u32,
    ) -> Result<File, AreaError> {
        let fd = beneath(
            parent.as_fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| AreaError::io("create", &self.host(path), e.into()))?;
        owner.give(&fd, &self.host(path))?;
        rfs::fchmod(&fd, Mode::from_raw_mode(mode & KEPT_MODE))
            .map_err(|e| AreaError::io("set the mode of", &self.host(path), e.into()))?;
        Ok(File::from(fd))
    }

    /// Writes `data` into `out`, which is the area's `path`.
    fn fill(&self, mut out: File, data: UploadData, path: &AreaPath) -> Result<File, AreaError> {
        let write_err = |e| AreaError::io("write", &self.host(path), e);
        let len = data.len();
        let copied = match data {
            UploadData::Dir => 0,
            UploadData::Bytes(bytes) => {
                out.write_all(&bytes).map_err(write_err)?;
                len
            }
            UploadData::Reader { reader, len } => {
                let mut source = reader.take(len);
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    let n = match source.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let what = Path::new(path.as_str());
                            return Err(AreaError::io("read the upload's source of", what, e));
                        }
                    };
                    out.write_all(&buf[..n]).map_err(write_err)?;
                    total += n as u64;
                }
                total
            }
        };
        if copied < len {
            return Err(AreaError::ShortSource {
                path: path.clone(),
                got: copied,
                len,
            });
        }
        Ok(out)
    }

    /// Step 6: the start script under a temporary name, flushed, renamed into place.
    fn write_script(
        &self,
        data: UploadData,
        mode: u32,
        owner: Owner,
        durability: Durability,
    ) -> Result<(), AreaError> {
        let synced = durability == Durability::Synced;
        let script = AreaPath::new(START_SCRIPT).expect("a valid protocol name");
        let temp = format!(".nlxtp-{START_SCRIPT}-{}.tmp", unique_suffix());
        let temp_name = c_path(&temp);
        let root = self.reopen_root()?;
        let written = self
            .create(&root, &temp_name, &script, owner, mode)
            .and_then(|file| self.fill(file, data, &script))
            .and_then(|file| match synced {
                true => file
                    .sync_all()
                    .map_err(|e| AreaError::io("flush", &self.path.join(&temp), e)),
                false => Ok(()),
            })
            .and_then(|()| {
                rfs::renameat(&root, &temp_name, &root, c_path(START_SCRIPT).as_c_str())
                    .map_err(|e| AreaError::io("rename into place", &self.host(&script), e.into()))
            });
        if let Err(e) = written {
            // Best effort: the next upload removes it anyway.
            let _ = rfs::unlinkat(&root, &temp_name, AtFlags::empty());
            return Err(e);
        }
        if synced {
            rfs::fsync(&root).map_err(|e| AreaError::io("flush", &self.path, e.into()))?;
        }
        Ok(())
    }
}

/// The owner every new entry gets: the area root's.
#[derive(Debug, Clone, Copy)]
struct Owner(Uid, Gid);

impl Owner {
    fn give(self, fd: &OwnedFd, shown: &Path) -> Result<(), AreaError> {
        rfs::fchown(fd, Some(self.0), Some(self.1))
            .map_err(|e| AreaError::io("give the area's owner to", shown, e.into()))
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

/// One walk's state.
struct Walk<'a, 'v> {
    area: &'a ContainerDir,
    budget: WalkBudget,
    read_files: bool,
    visit: &'a mut Visitor<'v>,
    skipped: Skipped,
}

impl Walk<'_, '_> {
    /// Visits what is in `dir` (an fd open for reading), whose path is `parent`.
    fn dir(
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

    fn subdir(
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

    fn file(&mut self, fd: &OwnedFd, path: AreaPath, stat: &Stat) -> Result<(), AreaError> {
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
fn read_names(
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
struct ExactReader {
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

/// Empties the area (step 3 of the module docs).
struct Remover<'a> {
    area: &'a ContainerDir,
    /// Names still allowed to be read.
    budget: u64,
    /// The next `.nlxtp-trash-N` to try.
    trash: u64,
}

impl<'a> Remover<'a> {
    fn new(area: &'a ContainerDir) -> Self {
        Remover {
            area,
            budget: MAX_REMOVE,
            trash: 0,
        }
    }

    fn clear(mut self) -> Result<(), AreaError> {
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
    fn clear_dir(&mut self, dir: OwnedFd, shown: &Path, depth: usize) -> Result<usize, AreaError> {
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
    fn remove(
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
    fn move_to_root(&mut self, dir: &OwnedFd, name: &CStr, shown: &Path) -> Result<(), AreaError> {
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

/// An upload checked and in the order it is written.
#[derive(Debug, Default)]
struct Plan {
    /// Every directory, explicit or a parent of a file, parents first, with its mode.
    dirs: Vec<(AreaPath, u32)>,
    /// The files in the order given, without the start script.
    files: Vec<(AreaPath, UploadData, u32)>,
    /// The start script, written last.
    script: Option<(UploadData, u32)>,
}

impl Plan {
    fn new(files: Vec<UploadFile>) -> Result<Self, AreaError> {
        // Whether each path seen is a directory.
        let mut is_dir: HashMap<String, bool> = HashMap::new();
        let mut dirs: BTreeMap<(usize, AreaPath), u32> = BTreeMap::new();
        let mut plan = Plan::default();
        let both = |path: &AreaPath, p: &AreaPath| AreaError::BadName {
            path: path.clone(),
            reason: format!("the upload has {p} both as a file and as a directory"),
        };
        for UploadFile { path, data, mode } in files {
            let long = path.components().map(str::len).find(|&n| n > NAME_MAX);
            if let Some(long) = long {
                let reason = format!("a name of {long} bytes, more than {NAME_MAX}");
                return Err(AreaError::BadName { path, reason });
            }
            let mut at = path.parent();
            while let Some(p) = at {
                at = p.parent();
                if is_dir.insert(p.as_str().to_owned(), true) == Some(false) {
                    return Err(both(&path, &p));
                }
                dirs.entry((p.components().count(), p)).or_insert(0o755);
            }
            let dir = matches!(data, UploadData::Dir);
            match is_dir.insert(path.as_str().to_owned(), dir) {
                Some(was) if was != dir => return Err(both(&path, &path)),
                Some(false) => {
                    let reason = "the upload names it twice".into();
                    return Err(AreaError::BadName { path, reason });
                }
                _ => {}
            }
            if dir {
                dirs.insert((path.components().count(), path), mode);
            } else if path.as_str() == START_SCRIPT {
                plan.script = Some((data, mode));
            } else {
                plan.files.push((path, data, mode));
            }
        }
        plan.dirs = dirs.into_iter().map(|((_, p), m)| (p, m)).collect();
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> UploadFile {
        UploadFile::bytes(path, b"x".to_vec()).unwrap()
    }

    fn dir(path: &str, mode: u32) -> UploadFile {
        UploadFile {
            path: AreaPath::new(path).unwrap(),
            data: UploadData::Dir,
            mode,
        }
    }

    #[test]
    fn plans_parents_first_and_the_start_script_apart() {
        let plan = Plan::new(vec![
            file("auto_exec.sh"),
            file("b/c/d.txt"),
            dir("b", 0o700),
            file("a.txt"),
            dir("e/f", 0o555),
        ])
        .unwrap();
        let dirs: Vec<(&str, u32)> = plan.dirs.iter().map(|(p, m)| (p.as_str(), *m)).collect();
        assert_eq!(
            dirs,
            [("b", 0o700), ("e", 0o755), ("b/c", 0o755), ("e/f", 0o555)]
        );
        let files: Vec<&str> = plan.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(files, ["b/c/d.txt", "a.txt"]);
        assert!(plan.script.is_some());
        // A start script in a subdirectory is an ordinary file.
        let plan = Plan::new(vec![file("x/auto_exec.sh")]).unwrap();
        assert!(plan.script.is_none());
        assert_eq!(plan.files.len(), 1);
    }

    #[test]
    fn rejects_what_a_directory_cannot_hold() {
        for (files, needle) in [
            (vec![file("x"), file("x")], "names it twice"),
            (
                vec![file("x"), file("x/y")],
                "both as a file and as a directory",
            ),
            (
                vec![file("x/y"), file("x")],
                "both as a file and as a directory",
            ),
            (
                vec![dir("x", 0o755), file("x")],
                "both as a file and as a directory",
            ),
            (vec![file(&"n".repeat(256))], "more than 255"),
        ] {
            let err = Plan::new(files).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        // Case differs: two files on a Linux filesystem.
        assert!(Plan::new(vec![file("a"), file("A"), dir("d", 0o755), dir("d", 0o700)]).is_ok());
    }
}
