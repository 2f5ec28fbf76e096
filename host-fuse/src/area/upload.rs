//! What an upload hands a backend: files, their content, and how durably to write them.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::{AreaError, AreaPath, PathError};

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

/// An upload written while its files arrive ([`SharedArea::begin_replace`](super::SharedArea::begin_replace)):
/// directories and files in any order, then [`ReplaceStream::commit`]. Until the commit
/// the area holds its old content; dropping the stream instead leaves it so.
pub trait ReplaceStream {
    /// Adds the directory `path` (parents of files are made anyway; this makes empty
    /// ones).
    ///
    /// # Errors
    /// As [`SharedArea::replace`](super::SharedArea::replace).
    fn dir(&mut self, path: AreaPath, mode: u32) -> Result<(), AreaError>;

    /// Adds the file `path` with exactly `len` bytes read from `data`: fewer is
    /// [`AreaError::ShortSource`], a failed read [`AreaError::Sink`].
    ///
    /// # Errors
    /// As [`SharedArea::replace`](super::SharedArea::replace).
    fn file(
        &mut self,
        path: AreaPath,
        mode: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> Result<(), AreaError>;

    /// Adds the file `path` of `len` bytes that can be read now from `data`, or later,
    /// until the commit, from `kept` (a range of a file that stays as it is). A backend
    /// that writes files as they come reads `data` (the default); one that collects
    /// keeps `kept` instead of a copy.
    ///
    /// # Errors
    /// As [`ReplaceStream::file`].
    fn file_kept(
        &mut self,
        path: AreaPath,
        mode: u32,
        len: u64,
        data: &mut dyn Read,
        kept: Box<dyn Read + Send>,
    ) -> Result<(), AreaError> {
        drop(kept);
        self.file(path, mode, len, data)
    }

    /// Makes what was added the area's whole content, the start script last (see
    /// [`SharedArea::replace`](super::SharedArea::replace)).
    ///
    /// # Errors
    /// As [`SharedArea::replace`](super::SharedArea::replace).
    fn commit(self: Box<Self>) -> Result<(), AreaError>;
}

/// Adds one [`UploadFile`] to `stream`.
///
/// # Errors
/// As [`ReplaceStream::file`].
pub fn add_upload_file(stream: &mut dyn ReplaceStream, file: UploadFile) -> Result<(), AreaError> {
    match file.data {
        UploadData::Dir => stream.dir(file.path, file.mode),
        UploadData::Bytes(bytes) => {
            stream.file(file.path, file.mode, bytes.len() as u64, &mut &bytes[..])
        }
        UploadData::Reader { mut reader, len } => {
            stream.file(file.path, file.mode, len, &mut reader)
        }
    }
}

/// Files larger than this wait in an unnamed temporary file instead of memory.
pub const SPOOL_ABOVE: u64 = 1 << 20;

/// The stream of a backend that writes an upload only once it has all of it: small
/// files are kept in memory, larger ones in unnamed temporary files, until the commit
/// hands them all to the backend's replace.
pub struct Collect<'a> {
    files: Vec<UploadFile>,
    spool_dir: Option<PathBuf>,
    replace: Box<dyn FnOnce(Vec<UploadFile>) -> Result<(), AreaError> + 'a>,
}

impl fmt::Debug for Collect<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collect")
            .field("files", &self.files)
            .field("spool_dir", &self.spool_dir)
            .finish_non_exhaustive()
    }
}

impl<'a> Collect<'a> {
    /// Collects files for `replace`, spooling large ones in `spool_dir` (the system's
    /// temporary directory if `None`).
    pub fn new(
        spool_dir: Option<&Path>,
        replace: impl FnOnce(Vec<UploadFile>) -> Result<(), AreaError> + 'a,
    ) -> Self {
        Collect {
            files: Vec::new(),
            spool_dir: spool_dir.map(Path::to_owned),
            replace: Box::new(replace),
        }
    }
}

impl ReplaceStream for Collect<'_> {
    fn dir(&mut self, path: AreaPath, mode: u32) -> Result<(), AreaError> {
        self.files.push(UploadFile {
            path,
            data: UploadData::Dir,
            mode,
        });
        Ok(())
    }

    fn file(
        &mut self,
        path: AreaPath,
        mode: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> Result<(), AreaError> {
        let data = read_member(data, len, self.spool_dir.as_deref(), &path)?;
        self.files.push(UploadFile { path, data, mode });
        Ok(())
    }

    /// Keeps `kept`: the backend reads it at the commit.
    fn file_kept(
        &mut self,
        path: AreaPath,
        mode: u32,
        len: u64,
        _data: &mut dyn Read,
        kept: Box<dyn Read + Send>,
    ) -> Result<(), AreaError> {
        self.files.push(UploadFile {
            path,
            data: UploadData::Reader { reader: kept, len },
            mode,
        });
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), AreaError> {
        (self.replace)(self.files)
    }
}

/// Exactly `len` bytes of `data`: in memory up to [`SPOOL_ABOVE`], else in an unnamed
/// temporary file in `spool_dir` (the system's temporary directory if `None`).
///
/// # Errors
/// [`AreaError::ShortSource`] when `data` ends early, [`AreaError::Sink`] when it
/// fails, [`AreaError::Io`] when the temporary file cannot be written.
pub fn read_member(
    data: &mut dyn Read,
    len: u64,
    spool_dir: Option<&Path>,
    path: &AreaPath,
) -> Result<UploadData, AreaError> {
    let short = |got| AreaError::ShortSource {
        path: path.clone(),
        got,
        len,
    };
    let failed = |e: io::Error| AreaError::Sink {
        source: io::Error::new(e.kind(), format!("reading the upload's {path}: {e}")),
    };
    if len <= SPOOL_ABOVE {
        let mut bytes = Vec::with_capacity(len as usize);
        data.take(len).read_to_end(&mut bytes).map_err(failed)?;
        if bytes.len() as u64 != len {
            return Err(short(bytes.len() as u64));
        }
        return Ok(UploadData::Bytes(bytes));
    }
    let spool_at = spool_dir.map_or_else(std::env::temp_dir, Path::to_owned);
    let spool_error = |e| AreaError::io("keep a large file of the upload in", &spool_at, e);
    let mut spool: File = tempfile::tempfile_in(&spool_at).map_err(spool_error)?;
    // Through a large buffer: a plain copy makes a write call per 8 KiB.
    let mut out = io::BufWriter::with_capacity(256 * 1024, &mut spool);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut copied = 0u64;
    let mut data = data.take(len);
    loop {
        let n = match data.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        out.write_all(&chunk[..n]).map_err(spool_error)?;
        copied += n as u64;
    }
    out.flush().map_err(spool_error)?;
    drop(out);
    if copied != len {
        return Err(short(copied));
    }
    spool.rewind().map_err(spool_error)?;
    Ok(UploadData::Reader {
        reader: Box::new(spool),
        len,
    })
}
