//! A libvirt storage volume as a [`BlockSource`]: each read is a `virStorageVolDownload`
//! of the pages it needs, at their offset, over the connection (local or remote); pages
//! read once are kept for the life of the source, which is one operation (a status read,
//! a walk), so that the reader's many small reads (a 32-byte entry, a 512-byte sector)
//! cost one round trip per page. A source is never kept across operations: the guest
//! writes the volume in place. An [uncached](VolumeSource::uncached) source reads every
//! time (for polling a hot disk's release mark).
//!
//! Writes (a status slot the host writes into a hot volume no guest has any more) are
//! `virStorageVolUpload`s of just those bytes at their offset: libvirt writes them in
//! place and leaves the rest of the volume as it is.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::area::vfat::BlockSource;
use crate::area::AreaError;

/// The unit of reading and caching.
const PAGE: u64 = 16 * 1024;

/// A volume read through libvirt streams (see the module docs). Read-only.
#[derive(Debug)]
pub struct VolumeSource {
    conn: Arc<Connect>,
    volume: StorageVol,
    len: u64,
    name: PathBuf,
    pages: Mutex<BTreeMap<u64, Box<[u8]>>>,
    cached: bool,
}

impl VolumeSource {
    /// The volume `volume` of `len` bytes on `conn`, named `name` in messages.
    pub fn new(conn: Arc<Connect>, volume: StorageVol, len: u64, name: &Path) -> Self {
        VolumeSource {
            conn,
            volume,
            len,
            name: name.into(),
            pages: Mutex::new(BTreeMap::new()),
            cached: true,
        }
    }

    /// As [`VolumeSource::new`], but every read goes to the volume.
    pub fn uncached(conn: Arc<Connect>, volume: StorageVol, len: u64, name: &Path) -> Self {
        VolumeSource {
            cached: false,
            ..Self::new(conn, volume, len, name)
        }
    }

    /// Reads `out.len()` bytes at `offset` straight from the volume.
    fn download(&self, offset: u64, out: &mut [u8]) -> Result<(), AreaError> {
        download(&self.conn, &self.volume, offset, out).map_err(|e| self.error("read", e))
    }

    fn error(&self, action: &'static str, e: virt::error::Error) -> AreaError {
        AreaError::io(action, &self.name, io::Error::other(e))
    }
}

/// Reads exactly `out.len()` bytes of `volume` at `offset` through a stream.
pub fn download(
    conn: &Connect,
    volume: &StorageVol,
    offset: u64,
    out: &mut [u8],
) -> Result<(), virt::error::Error> {
    let stream = Stream::new(conn, 0)?;
    volume.download(&stream, offset, out.len() as u64, 0)?;
    let mut got = 0;
    while got < out.len() {
        let n = stream.recv(&mut out[got..])?;
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    if got < out.len() {
        let _ = stream.abort();
        // The volume shrank under us: what is missing reads as zeros, which the FAT
        // reader's checks then reject or bound.
        out[got..].fill(0);
        return Ok(());
    }
    stream.finish()
}

/// Writes `data` into `volume` at `offset` through a stream, in place.
pub fn upload_at(
    conn: &Connect,
    volume: &StorageVol,
    offset: u64,
    data: &[u8],
) -> Result<(), virt::error::Error> {
    let stream = Stream::new(conn, 0)?;
    volume.upload(&stream, offset, data.len() as u64, 0)?;
    let mut at = 0;
    while at < data.len() {
        match stream.send(&data[at..]) {
            Ok(n) if n > 0 => at += n as usize,
            Ok(_) => {
                let _ = stream.abort();
                return Err(virt::error::Error::last_error());
            }
            Err(e) => {
                let _ = stream.abort();
                return Err(e);
            }
        }
    }
    stream.finish()
}

impl BlockSource for VolumeSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), AreaError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(AreaError::Corrupt {
                what: format!(
                    "a read of {} bytes at {offset} past the volume's end",
                    buf.len()
                ),
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        if !self.cached {
            return self.download(offset, buf);
        }
        let end = offset + buf.len() as u64;
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        // The missing pages, fetched in contiguous runs: one round trip per run.
        let mut page = first;
        while page <= last {
            if pages.contains_key(&page) {
                page += 1;
                continue;
            }
            let mut run_end = page;
            while run_end < last && !pages.contains_key(&(run_end + 1)) {
                run_end += 1;
            }
            let from = page * PAGE;
            let to = ((run_end + 1) * PAGE).min(self.len);
            let mut data = vec![0u8; (to - from) as usize];
            self.download(from, &mut data)?;
            for (i, chunk) in data.chunks(PAGE as usize).enumerate() {
                pages.insert(page + i as u64, chunk.into());
            }
            page = run_end + 1;
        }
        let mut at = offset;
        let mut done = 0;
        while done < buf.len() {
            let data = &pages[&(at / PAGE)];
            let inside = (at % PAGE) as usize;
            let n = (data.len() - inside).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[inside..inside + n]);
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    /// One upload of `buf` at `offset`; the cached pages are dropped.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), AreaError> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(AreaError::Corrupt {
                what: format!(
                    "a write of {} bytes at {offset} past the volume's end",
                    buf.len()
                ),
            });
        }
        self.pages.lock().unwrap_or_else(|p| p.into_inner()).clear();
        upload_at(&self.conn, &self.volume, offset, buf).map_err(|e| self.error("write", e))
    }

    fn flush(&self) -> Result<(), AreaError> {
        Ok(())
    }

    fn name(&self) -> &Path {
        &self.name
    }
}
