//! What can go wrong reading or writing a shared area, and reading its status record.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nlxtp_core::wire::CorruptKind;
use nlxtp_core::DecodeError;

use super::AreaPath;

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
    /// A partitioned image holds more than one FAT partition that could be the shared
    /// area.
    #[error("{} holds more than one FAT partition that could be the shared area ({partitions}): label the shared one NLXTP (fatlabel DEVICE NLXTP in the guest, or mlabel), or keep one FAT partition", image.display())]
    AmbiguousVolume {
        /// The image.
        image: PathBuf,
        /// The candidates, described.
        partitions: String,
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
    /// The kind of area cannot do what was asked.
    #[error("{what} is not possible in a shared area of kind {kind}: use a VM's disk image")]
    Unsupported {
        /// What was asked.
        what: &'static str,
        /// The area's kind.
        kind: super::AreaKind,
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

#[cfg(test)]
mod tests {
    use super::*;

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
