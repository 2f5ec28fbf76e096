//! A write-back page cache in front of the image file for fatfs, which reads and writes
//! the FAT one entry at a time and directory entries one field at a time: without it, an
//! upload of 20 MB in 500 files took five million `read` calls. Bounded: when it holds
//! [`MAX_CACHED`] bytes it writes back what changed and starts afresh.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

const PAGE: u64 = 64 * 1024;
/// Most bytes held at once.
pub const MAX_CACHED: u64 = 64 << 20;

struct Page {
    bytes: Vec<u8>,
    dirty: bool,
}

/// `file` seen through the cache until [`PageCached::finish`].
pub struct PageCached<'a> {
    file: &'a mut File,
    /// Indexed by page number: fatfs reads a few bytes at a time, so a lookup must be
    /// an index, not a hash.
    pages: Vec<Option<Page>>,
    cached: u64,
    pos: u64,
    len: u64,
}

impl<'a> PageCached<'a> {
    /// A cache over `file`, empty.
    pub fn new(file: &'a mut File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let count = len.div_ceil(PAGE) as usize;
        Ok(PageCached {
            file,
            pages: (0..count).map(|_| None).collect(),
            cached: 0,
            pos: 0,
            len,
        })
    }

    /// Writes back what changed and flushes the file.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush()
    }

    fn write_back(&mut self) -> io::Result<()> {
        for (at, slot) in self.pages.iter_mut().enumerate() {
            if let Some(page) = slot.as_mut().filter(|p| p.dirty) {
                self.file.write_all_at(&page.bytes, at as u64 * PAGE)?;
                page.dirty = false;
            }
        }
        Ok(())
    }

    /// The page with this number, read in if needed.
    fn page(&mut self, index: u64) -> io::Result<&mut Page> {
        let at = index as usize;
        if self.pages[at].is_none() {
            if self.cached >= MAX_CACHED {
                self.write_back()?;
                self.pages.iter_mut().for_each(|slot| *slot = None);
                self.cached = 0;
            }
            let start = index * PAGE;
            let want = PAGE.min(self.len.saturating_sub(start)) as usize;
            let mut bytes = vec![0u8; want];
            self.file.read_exact_at(&mut bytes, start)?;
            self.cached += PAGE;
            self.pages[at] = Some(Page {
                bytes,
                dirty: false,
            });
        }
        Ok(self.pages[at].as_mut().expect("filled above"))
    }
}

impl Read for PageCached<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let (index, within) = (self.pos / PAGE, (self.pos % PAGE) as usize);
        let page = self.page(index)?;
        let n = buf.len().min(page.bytes.len() - within);
        buf[..n].copy_from_slice(&page.bytes[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for PageCached<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.len {
            // fatfs never grows the image; refuse rather than grow it silently.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the image",
            ));
        }
        let (index, within) = (self.pos / PAGE, (self.pos % PAGE) as usize);
        let page = self.page(index)?;
        let n = buf.len().min(page.bytes.len() - within);
        page.bytes[within..within + n].copy_from_slice(&buf[..n]);
        page.dirty = true;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_back()?;
        self.file.flush()
    }
}

impl Seek for PageCached<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the image",
            )
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_across_pages_land_where_they_should() {
        let mut file = tempfile::tempfile().unwrap();
        let len = 3 * PAGE as usize + 100;
        file.write_all(&(0..=255u8).cycle().take(len).collect::<Vec<_>>())
            .unwrap();
        let mut cached = PageCached::new(&mut file).unwrap();
        cached.seek(SeekFrom::Start(PAGE - 10)).unwrap();
        let mut buf = [0u8; 20];
        cached.read_exact(&mut buf).unwrap();
        assert_eq!(buf[0], ((PAGE - 10) % 256) as u8);
        assert_eq!(buf[19], ((PAGE + 9) % 256) as u8);
        cached.seek(SeekFrom::Start(PAGE - 5)).unwrap();
        cached.write_all(&[0xee; 10]).unwrap();
        cached.seek(SeekFrom::End(-1)).unwrap();
        cached.write_all(&[0xdd]).unwrap();
        assert!(cached.write_all(&[1]).is_err(), "never grows the image");
        cached.finish().unwrap();
        let mut all = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut all).unwrap();
        let p = PAGE as usize;
        assert_eq!(&all[p - 5..p + 5], &[0xee; 10]);
        assert_eq!(all[p - 6], ((p - 6) % 256) as u8);
        assert_eq!(all[p + 5], ((p + 5) % 256) as u8);
        assert_eq!(all[len - 1], 0xdd);
        assert_eq!(all.len(), len);
    }
}
