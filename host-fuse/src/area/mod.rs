//! A shared area: the storage a host and one guest both see, behind one trait.
//!
//! [`SharedArea`] is what the CLI, the FUSE view and the test harness use. It has two
//! backends: [`vfat::VfatImage`] (a VM's vFAT disk image, read and written in user space)
//! and [`dir::ContainerDir`] (a directory inside a container's root filesystem). The
//! contract every backend keeps:
//!
//! - Everything read from the area is hostile. Reads are bounded ([`WalkLimits`], a size
//!   bound per file) and end, with an error, on anything a valid area does not contain.
//!   Reads never change the area.
//! - [`SharedArea::read_status_file`] is cheap enough to call many times a second, also
//!   while the guest runs. [`read_status`] turns it into a [`StatusRecord`], retrying torn
//!   reads for a bounded time.
//! - [`SharedArea::replace`] (an upload) writes the start script ([`START_SCRIPT`]) last,
//!   complete, after the manifest: a crash at any point leaves no start script or the new
//!   one with all of the upload beside it. The vFAT backend also swaps the whole content
//!   at once (old or new, never a mix); the directory backend cannot, and says why.
//!
//! Paths inside an area are [`AreaPath`]s: relative, `/`-separated, with no empty, `.` or
//! `..` component, so no backend ever resolves a name a guest planted outside the area.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nlxtp_core::wire::CorruptKind;
use nlxtp_core::{DecodeError, StatusReader, StatusRecord};

pub mod dir;
pub mod vfat;

/// A path inside a shared area: relative, `/`-separated, each component non-empty and
/// neither `.` nor `..`, without NUL bytes, at most [`AreaPath::MAX_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AreaPath(String);

/// Why a string is not an [`AreaPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty or starts with `/`, or a component is empty, `.` or `..`.
    #[error("{path:?} is not a relative path inside the area: use names joined by single '/'")]
    NotRelative {
        /// The rejected path.
        path: String,
    },
    /// The path contains a NUL byte.
    #[error("{path:?} contains a NUL byte: remove it")]
    Nul {
        /// The rejected path.
        path: String,
    },
    /// The path is longer than [`AreaPath::MAX_LEN`] bytes.
    #[error(
        "a path of {len} bytes is longer than {} bytes: shorten it",
        AreaPath::MAX_LEN
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl AreaPath {
    /// The longest path accepted, in bytes.
    pub const MAX_LEN: usize = 4096;

    /// Checks `path` and wraps it.
    ///
    /// ```
    /// use nlxtp_host::area::AreaPath;
    /// let p = AreaPath::new("nlxtp/status.bin").unwrap();
    /// assert_eq!(p.file_name(), "status.bin");
    /// assert!(AreaPath::new("../etc/passwd").is_err());
    /// ```
    ///
    /// # Errors
    /// [`PathError`] saying which rule the path breaks.
    pub fn new(path: impl Into<String>) -> Result<Self, PathError> {
        let path = path.into();
        if path.len() > Self::MAX_LEN {
            return Err(PathError::TooLong { len: path.len() });
        }
        if path.contains('\0') {
            return Err(PathError::Nul { path });
        }
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(PathError::NotRelative { path });
        }
        Ok(AreaPath(path))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The path without its last component, if it has more than one.
    pub fn parent(&self) -> Option<AreaPath> {
        self.0.rsplit_once('/').map(|(p, _)| AreaPath(p.to_owned()))
    }

    /// This path with `name` appended as a further component.
    ///
    /// # Errors
    /// As [`AreaPath::new`], for `name` containing `/` or being empty, `.` or `..`.
    pub fn join(&self, name: &str) -> Result<AreaPath, PathError> {
        if name.contains('/') {
            return Err(PathError::NotRelative { path: name.into() });
        }
        AreaPath::new(format!("{}/{name}", self.0))
    }
}

impl fmt::Display for AreaPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// One file or directory in an area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where it is.
    pub path: AreaPath,
    /// File or directory.
    pub kind: EntryKind,
    /// Length in bytes (0 for directories).
    pub size: u64,
    /// Unix permission bits. vFAT keeps none: it reports 0o755 for directories, 0o644
    /// for files, 0o444 for read-only files.
    pub mode: u32,
}

/// Bounds on one walk over an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Files and directories in all.
    pub max_entries: usize,
    /// Directory nesting below the root.
    pub max_depth: usize,
    /// Sum of all file sizes.
    pub max_total_bytes: u64,
}

impl Default for WalkLimits {
    /// 100,000 entries, 32 levels, 4 GiB.
    fn default() -> Self {
        WalkLimits {
            max_entries: 100_000,
            max_depth: 32,
            max_total_bytes: 4 << 30,
        }
    }
}

/// How [`SharedArea::read_status_file`] finds the status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRead {
    /// From where it was found last time, if the backend remembers that (the fast path).
    Cached,
    /// Look it up again: the last read did not decode, and the guest may have recreated it.
    Relocate,
}

/// The content of one item of an upload.
pub enum UploadData {
    /// A directory (parents of files are created anyway; this makes empty ones).
    Dir,
    /// A file with these bytes.
    Bytes(Vec<u8>),
    /// A file with exactly `len` bytes read from `reader`.
    Reader {
        /// Where the bytes come from.
        reader: Box<dyn Read + Send>,
        /// How many bytes it yields; fewer is an error, more are not read.
        len: u64,
    },
}

impl fmt::Debug for UploadData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadData::Dir => f.write_str("Dir"),
            UploadData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            UploadData::Reader { len, .. } => write!(f, "Reader({len} bytes)"),
        }
    }
}

impl UploadData {
    /// The number of bytes this item holds.
    pub fn len(&self) -> u64 {
        match self {
            UploadData::Dir => 0,
            UploadData::Bytes(b) => b.len() as u64,
            UploadData::Reader { len, .. } => *len,
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One file or directory of an upload.
#[derive(Debug)]
pub struct UploadFile {
    /// Where it goes.
    pub path: AreaPath,
    /// What it holds.
    pub data: UploadData,
    /// Unix permission bits. Kept where the backend can keep them (not on vFAT, which
    /// stores only "read-only" and which the host leaves unset).
    pub mode: u32,
}

impl UploadFile {
    /// A regular file with `bytes`, mode 0o644.
    ///
    /// # Errors
    /// As [`AreaPath::new`].
    pub fn bytes(path: &str, bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        Ok(UploadFile {
            path: AreaPath::new(path)?,
            data: UploadData::Bytes(bytes.into()),
            mode: 0o644,
        })
    }
}

/// What went wrong reading or writing a shared area.
///
/// Each message is one sentence: what happened, then what to do. The cause, if any, is
/// the error's [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AreaError {
    /// The area holds something no valid area contains (the guest is broken or hostile).
    #[error("the shared area is corrupt ({what}): do not trust its content, and upload again to rewrite it")]
    Corrupt {
        /// What exactly is wrong.
        what: String,
    },
    /// A running VM (QEMU) holds the image.
    #[error("the VM is running ({} is locked by QEMU): stop it, then upload; the script runs at its next boot", image.display())]
    Busy {
        /// The image.
        image: PathBuf,
    },
    /// The backing image or directory does not exist.
    #[error("there is no shared area at {}: check the path, or create the image first", path.display())]
    NoImage {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// No file or directory at this path in the area.
    #[error("{path} is not in the shared area: list the area to see what is there")]
    NotFound {
        /// The path asked for.
        path: AreaPath,
    },
    /// The path names a directory where a file was asked for.
    #[error("{path} is a directory, not a file: name a file inside it")]
    NotAFile {
        /// The path asked for.
        path: AreaPath,
    },
    /// Something is larger than its bound.
    #[error("{what} exceeds the limit of {limit}: raise the limit, or remove what is too large")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The bound.
        limit: u64,
    },
    /// An upload names a file the backend cannot store.
    #[error("{path} cannot be stored in the shared area ({reason}): rename it in the upload")]
    BadName {
        /// The path.
        path: AreaPath,
        /// Which rule it breaks.
        reason: String,
    },
    /// Two paths of an upload would be the same file (vFAT ignores case).
    #[error("{first} and {second} would be the same file in the shared area, which ignores case: rename one of them")]
    NameCollision {
        /// The first path.
        first: AreaPath,
        /// The other path.
        second: AreaPath,
    },
    /// An upload does not fit.
    #[error("the upload needs {needed} bytes but the area has room for {available}: upload less, or make room (a larger image, or space on the container's filesystem)")]
    NoSpace {
        /// Bytes needed, counted in whole clusters.
        needed: u64,
        /// Bytes free in a freshly formatted area.
        available: u64,
    },
    /// An upload's reader gave fewer bytes than announced.
    #[error(
        "the source of {path} ended after {got} of {len} bytes: check the archive is complete"
    )]
    ShortSource {
        /// The file.
        path: AreaPath,
        /// Bytes read.
        got: u64,
        /// Bytes announced.
        len: u64,
    },
    /// The path leads to something other than a regular file or directory (a symbolic
    /// link, FIFO, socket, device or mount point a guest made), which the host never
    /// follows or opens.
    #[error("{path} leads to a {kind}, which the host never follows or opens: replace it with a regular file in the guest, or upload again")]
    NotRegular {
        /// The path asked for.
        path: AreaPath,
        /// What is there (or on the way): "symbolic link", "FIFO", ...
        kind: &'static str,
    },
    /// The consumer of a walk (an archive writer, say) failed.
    #[error("the consumer of the shared area's files failed: fix the cause below and retry")]
    Sink {
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// An operating-system call failed.
    #[error("could not {action} {}: fix the cause below and retry", path.display())]
    Io {
        /// What the host tried (a verb: "read", "rename", ...).
        action: &'static str,
        /// The file it concerned.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl AreaError {
    /// An [`AreaError::Io`].
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        AreaError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// An [`AreaError::Sink`].
    pub fn sink(source: io::Error) -> Self {
        AreaError::Sink { source }
    }
}

/// What went wrong reading the status record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The status file can never become a valid record.
    #[error("the status file is corrupt ({kind}): the guest wrote something invalid; upload again to start a fresh run")]
    Corrupt {
        /// What the decoder found.
        kind: CorruptKind,
    },
    /// The record was written by a protocol version this host does not know.
    #[error("the status file uses protocol version {version}, which this host does not speak: update the host tools")]
    UnsupportedVersion {
        /// The frame's version.
        version: u8,
    },
    /// Reads kept failing with a retryable error (torn, or going back in time).
    #[error("the status file stayed torn or stale for {waited:?}: a write that never completes means a broken or hostile guest; treat the run as failed")]
    Unsettled {
        /// The last decode error.
        last: DecodeError,
        /// How long the reads went on.
        waited: Duration,
    },
    /// Reading the area failed.
    #[error(transparent)]
    Area(#[from] AreaError),
}

/// What [`SharedArea::walk`] calls for each entry: with a reader of the file's bytes, or
/// `None` for a directory. Its error ends the walk as [`AreaError::Sink`].
pub type Visitor<'a> = dyn FnMut(&Entry, Option<&mut dyn Read>) -> io::Result<()> + 'a;

/// A shared area: a VM's disk image or a container's directory.
///
/// Implementations are `Send + Sync`; each call stands alone (a backend opens what it
/// needs per call, or keeps only caches that it checks), so the FUSE view may call from
/// several threads.
pub trait SharedArea: Send + Sync + fmt::Debug {
    /// The image file or directory behind this area.
    fn location(&self) -> &Path;

    /// Whether the guest holds the area now so that an upload must wait (a running VM).
    /// A container area is never busy: uploads go in at once.
    ///
    /// # Errors
    /// [`AreaError::NoImage`], [`AreaError::Io`].
    fn is_busy(&self) -> Result<bool, AreaError>;

    /// Reads the status file ([`STATUS_FILE`]) into `out`: empty if it does not
    /// exist, else its bytes, at most [`STATUS_FILE_LEN`](nlxtp_core::slots::STATUS_FILE_LEN)
    /// + 1 of them (so a longer file shows as too long). Cheap: meant to be called often.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] when the area cannot be read at all, [`AreaError::Io`].
    fn read_status_file(&self, how: StatusRead, out: &mut Vec<u8>) -> Result<(), AreaError>;

    /// Reads the whole file at `path`, refusing one longer than `max_len` bytes.
    ///
    /// # Errors
    /// [`AreaError::NotFound`], [`AreaError::NotAFile`], [`AreaError::TooLarge`],
    /// [`AreaError::NotRegular`], [`AreaError::Corrupt`], [`AreaError::Io`].
    fn read_file(&self, path: &AreaPath, max_len: u64) -> Result<Vec<u8>, AreaError>;

    /// Visits every file and directory, parents before their contents. Files come with
    /// a reader of exactly [`Entry::size`] bytes; directories with none. For packing a
    /// download.
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] when `limits` are reached, [`AreaError::Corrupt`],
    /// [`AreaError::Sink`] when `visit` fails, [`AreaError::Io`].
    fn walk(&self, limits: &WalkLimits, visit: &mut Visitor<'_>) -> Result<(), AreaError>;

    /// Every file and directory, parents before their contents.
    ///
    /// # Errors
    /// As [`SharedArea::walk`].
    fn list(&self, limits: &WalkLimits) -> Result<Vec<Entry>, AreaError> {
        let mut out = Vec::new();
        self.walk(limits, &mut |entry, _| {
            out.push(entry.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// Replaces the whole content with `files`, writing [`START_SCRIPT`] last (what a
    /// crash leaves: see the module docs). The caller supplies the protocol files (a fresh
    /// manifest; no old status) as docs/wire-format.md section 1 says.
    ///
    /// # Errors
    /// [`AreaError::Busy`] while the guest holds the area, [`AreaError::BadName`] and
    /// [`AreaError::NameCollision`] for names the backend cannot hold,
    /// [`AreaError::NoSpace`], [`AreaError::ShortSource`], [`AreaError::Corrupt`] if the
    /// old area is too broken to take over its layout, [`AreaError::Io`].
    fn replace(&self, files: Vec<UploadFile>) -> Result<(), AreaError> {
        self.replace_with(files, Durability::Synced)
    }

    /// [`SharedArea::replace`], flushing to the disk as `durability` says.
    ///
    /// # Errors
    /// As [`SharedArea::replace`].
    fn replace_with(&self, files: Vec<UploadFile>, durability: Durability)
        -> Result<(), AreaError>;
}

/// Whether replacing an area waits until the new content is on the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Flushed (fsync) before it takes the old content's place: a power loss at any
    /// moment leaves the old content or the new.
    #[default]
    Synced,
    /// Left to the kernel to write out: a crash of the process still leaves the old
    /// content or the new, but a power loss or kernel crash soon after may leave neither
    /// intact. For throwaway images (CI), where the flush is most of an upload's time.
    Unsynced,
}

/// How long [`read_status`] keeps retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Pause between reads that failed with a retryable error.
    pub pause: Duration,
    /// Give up after this long.
    pub give_up_after: Duration,
}

impl Default for Patience {
    /// 20 ms pauses, up to one second (docs/wire-format.md section 2).
    fn default() -> Self {
        Patience {
            pause: Duration::from_millis(20),
            give_up_after: Duration::from_secs(1),
        }
    }
}

/// Reads the newest status record of `area`: `None` if there is none yet.
///
/// A read that does not decode is tried once more after looking the file up again (the
/// guest may have recreated it); torn and stale reads are retried after
/// [`Patience::pause`] until [`Patience::give_up_after`]. `reader` remembers the newest
/// record returned, so the status never goes back in time.
///
/// # Errors
/// [`StatusError::Corrupt`] and [`StatusError::UnsupportedVersion`] are final for these
/// bytes; [`StatusError::Unsettled`] when retrying did not help in time;
/// [`StatusError::Area`] when the area cannot be read.
pub fn read_status(
    area: &(impl SharedArea + ?Sized),
    reader: &mut StatusReader,
    patience: Patience,
) -> Result<Option<StatusRecord>, StatusError> {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(nlxtp_core::slots::STATUS_FILE_LEN + 1);
    let mut how = StatusRead::Cached;
    loop {
        area.read_status_file(how, &mut buf)?;
        let failed = match reader.read(&buf) {
            Ok(record) => return Ok(Some(record)),
            Err(e) => e,
        };
        if how == StatusRead::Cached {
            how = StatusRead::Relocate;
            continue;
        }
        match failed {
            DecodeError::NotThereYet => return Ok(None),
            DecodeError::Corrupt(kind) => return Err(StatusError::Corrupt { kind }),
            DecodeError::UnsupportedVersion(version) => {
                return Err(StatusError::UnsupportedVersion { version })
            }
            last => {
                let waited = started.elapsed();
                if waited >= patience.give_up_after {
                    return Err(StatusError::Unsettled { last, waited });
                }
                thread::sleep(patience.pause.min(patience.give_up_after - waited));
                // The next try reads the cached place again: a torn slot is usually a
                // write in progress, not a moved file.
                how = StatusRead::Cached;
            }
        }
    }
}

/// The protocol file names, re-exported for callers building an upload.
pub use nlxtp_core::layout::{MANIFEST_FILE, START_SCRIPT, STATUS_FILE};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_paths() {
        for good in ["a", "a/b.txt", "nlxtp/status.bin", "ü ber/x y"] {
            assert_eq!(AreaPath::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "/a", "a/", "a//b", "./a", "a/../b", "..", "a\0b"] {
            assert!(AreaPath::new(bad).is_err(), "{bad:?}");
        }
        assert!(AreaPath::new("x".repeat(5000)).is_err());
        let p = AreaPath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        assert!(p.join("..").is_err());
        assert!(p.join("d/e").is_err());
        assert_eq!(p.join("d").unwrap().as_str(), "a/b/c/d");
        assert_eq!(nlxtp_core::layout::START_SCRIPT, START_SCRIPT);
    }

    #[test]
    fn messages_are_one_sentence_without_the_cause() {
        let cause = io::Error::other("disk on fire");
        let err = AreaError::io("read", Path::new("/x.img"), cause);
        let text = err.to_string();
        assert!(!text.contains("disk on fire"), "{text}");
        assert!(text.starts_with("could not read /x.img"), "{text}");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, "disk on fire");
    }
}
