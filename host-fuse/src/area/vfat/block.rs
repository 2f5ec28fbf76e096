//! Block sources: where a FAT volume's bytes are. The reader (`Volume`,
//! the status locate, the snapshot) and the writer (formatting, `build.rs`) go through a
//! [`BlockSource`], so the same code serves a local image file ([`ImageFile`]) and a
//! volume that is only part of another source ([`Window`]: a partition inside a disk
//! image, say; a remote volume read through a stream would be a third implementation).
//!
//! Contract: a source has a fixed length; a read or write that does not lie wholly inside
//! it fails with [`AreaError::Corrupt`] before touching anything, so an offset computed
//! from hostile bytes can never reach past the volume.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::area::AreaError;

/// Bytes at offsets: read, written, flushed. Implementations are cheap to call with
/// small buffers (a 32-byte directory entry) and may be called from several threads.
pub trait BlockSource: fmt::Debug + Send + Sync {
    /// The source's length in bytes, fixed while it is open.
    fn len(&self) -> u64;

    /// Whether the source has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a range not inside the source (the caller trusted a
    /// bad offset, or a file shrank); [`AreaError::Io`] if reading fails.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), AreaError>;

    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a range not inside the source; [`AreaError::Io`].
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), AreaError>;

    /// Makes what was written durable (the data; metadata is the owner's business).
    ///
    /// # Errors
    /// [`AreaError::Io`].
    fn flush(&self) -> Result<(), AreaError>;

    /// For messages: what the source is (an image path).
    fn name(&self) -> &Path;
}

/// A borrowed source is a source: a window can look into one it does not own.
impl<T: BlockSource + ?Sized> BlockSource for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), AreaError> {
        (**self).read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), AreaError> {
        (**self).write_at(offset, buf)
    }

    fn flush(&self) -> Result<(), AreaError> {
        (**self).flush()
    }

    fn name(&self) -> &Path {
        (**self).name()
    }
}

/// The error for a range outside a source of `len` bytes, or `None` if it is inside.
fn outside(offset: u64, n: usize, len: u64, verb: &str) -> Option<AreaError> {
    let end = offset.checked_add(n as u64);
    end.is_none_or(|end| end > len).then(|| AreaError::Corrupt {
        what: format!("a {verb} of {n} bytes at {offset} past the image's end"),
    })
}

/// A local image file and its length at open time.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    len: u64,
    path: PathBuf,
}

impl ImageFile {
    /// Opens `path` read-only.
    ///
    /// # Errors
    /// [`AreaError::NoImage`] if there is no such file, else [`AreaError::Io`].
    pub fn open(path: &Path) -> Result<Self, AreaError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => AreaError::NoImage { path: path.into() },
            _ => AreaError::io("open", path, source),
        })?;
        Self::from_file(file, path)
    }

    /// Wraps an already open file, which `path` names.
    ///
    /// # Errors
    /// [`AreaError::Io`] if its length cannot be read.
    pub fn from_file(file: File, path: &Path) -> Result<Self, AreaError> {
        let meta = file
            .metadata()
            .map_err(|source| AreaError::io("inspect", path, source))?;
        Ok(Self::with_len(file, meta.len(), path))
    }

    /// Wraps an open file whose length (from a `stat` the caller made) is `len`.
    pub fn with_len(file: File, len: u64, path: &Path) -> Self {
        ImageFile {
            file,
            len,
            path: path.into(),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, unwrapped.
    pub fn into_file(self) -> File {
        self.file
    }
}

impl BlockSource for ImageFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), AreaError> {
        if let Some(e) = outside(offset, buf.len(), self.len, "read") {
            return Err(e);
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| AreaError::io("read", &self.path, source))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), AreaError> {
        if let Some(e) = outside(offset, buf.len(), self.len, "write") {
            return Err(e);
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| AreaError::io("write", &self.path, source))
    }

    fn flush(&self) -> Result<(), AreaError> {
        self.file
            .sync_data()
            .map_err(|source| AreaError::io("flush", &self.path, source))
    }

    fn name(&self) -> &Path {
        &self.path
    }
}

/// The FAT volume of a local image: the whole image, or the partition that holds it
/// (see [`super::partition`]).
pub type Disk = Window<ImageFile>;

/// `len` bytes of another source from `offset` on, as a source of their own.
#[derive(Debug)]
pub struct Window<S> {
    inner: S,
    offset: u64,
    len: u64,
}

impl<S: BlockSource> Window<S> {
    /// The window `offset..offset + len` of `inner`.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] if the window does not lie inside `inner`.
    pub fn new(inner: S, offset: u64, len: u64) -> Result<Self, AreaError> {
        if offset.checked_add(len).is_none_or(|end| end > inner.len()) {
            return Err(AreaError::Corrupt {
                what: format!(
                    "a volume of {len} bytes at {offset} in {} of {} bytes",
                    inner.name().display(),
                    inner.len()
                ),
            });
        }
        Ok(Window { inner, offset, len })
    }

    /// The source the window looks into.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Where the window starts in its source.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The source the window looked into.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: BlockSource> BlockSource for Window<S> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), AreaError> {
        if let Some(e) = outside(offset, buf.len(), self.len, "read") {
            return Err(e);
        }
        self.inner.read_at(self.offset + offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), AreaError> {
        if let Some(e) = outside(offset, buf.len(), self.len, "write") {
            return Err(e);
        }
        self.inner.write_at(self.offset + offset, buf)
    }

    fn flush(&self) -> Result<(), AreaError> {
        self.inner.flush()
    }

    fn name(&self) -> &Path {
        self.inner.name()
    }
}

/// A source as a `Read + Write + Seek` stream, for a library that wants one (fatfs
/// formats through it). Errors come back as `io::Error`s carrying the [`AreaError`].
#[derive(Debug)]
pub struct Cursor<'a> {
    source: &'a dyn BlockSource,
    at: u64,
}

impl<'a> Cursor<'a> {
    /// A stream over `source`, at its start.
    pub fn new(source: &'a dyn BlockSource) -> Self {
        Cursor { source, at: 0 }
    }
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.source.len().saturating_sub(self.at)).min(buf.len() as u64) as usize;
        self.source
            .read_at(self.at, &mut buf[..n])
            .map_err(io::Error::other)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Write for Cursor<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (self.source.len().saturating_sub(self.at)).min(buf.len() as u64) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the end of the volume",
            ));
        }
        self.source
            .write_at(self.at, &buf[..n])
            .map_err(io::Error::other)?;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.source.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.at.checked_add_signed(d),
        };
        self.at = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a seek before the start")
        })?;
        Ok(self.at)
    }
}

/// Bytes in memory as a source, counting reads: for tests.
#[cfg(test)]
#[derive(Debug)]
pub struct Memory {
    bytes: std::sync::Mutex<Vec<u8>>,
    reads: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl Memory {
    /// A source holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Memory {
            bytes: std::sync::Mutex::new(bytes),
            reads: Default::default(),
        }
    }

    /// How many reads it has served.
    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
impl BlockSource for Memory {
    fn len(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), AreaError> {
        if let Some(e) = outside(offset, buf.len(), self.len(), "read") {
            return Err(e);
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes.lock().unwrap()[at..at + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), AreaError> {
        if let Some(e) = outside(offset, buf.len(), self.len(), "write") {
            return Err(e);
        }
        let at = offset as usize;
        self.bytes.lock().unwrap()[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<(), AreaError> {
        Ok(())
    }

    fn name(&self) -> &Path {
        Path::new("memory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reads_and_writes_only_inside_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, (0..=255u8).cycle().take(4096).collect::<Vec<_>>()).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let image = ImageFile::from_file(file, &path).unwrap();
        assert!(Window::new(ImageFile::open(&path).unwrap(), 4000, 97).is_err());
        assert!(Window::new(ImageFile::open(&path).unwrap(), u64::MAX, 2).is_err());
        let window = Window::new(image, 1000, 100).unwrap();
        assert_eq!(window.len(), 100);
        let mut buf = [0u8; 4];
        window.read_at(96, &mut buf).unwrap();
        assert_eq!(buf, [(1096 % 256) as u8, 73, 74, 75]);
        assert!(window.read_at(97, &mut buf).is_err());
        assert!(window.read_at(u64::MAX - 1, &mut buf).is_err());
        window.write_at(0, b"abcd").unwrap();
        assert!(window.write_at(98, b"abc").is_err());
        window.flush().unwrap();
        let all = std::fs::read(&path).unwrap();
        assert_eq!(&all[1000..1004], b"abcd");
        assert_eq!(all.len(), 4096, "nothing written past the window");

        let mut cursor = Cursor::new(&window);
        cursor.seek(SeekFrom::End(-2)).unwrap();
        let mut tail = Vec::new();
        cursor.read_to_end(&mut tail).unwrap();
        assert_eq!(tail.len(), 2);
        assert!(cursor.write(b"x").is_err(), "no write past the end");
    }
}
