//! What an upload hands a backend: files, their content, and how durably to write them.

use std::fmt;
use std::io::Read;

use super::{AreaPath, PathError};

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
