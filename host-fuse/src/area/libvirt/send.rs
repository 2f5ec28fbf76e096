//! Sending a locally built image into a new volume: only what the build wrote, when the
//! pool gives new volumes that read as zeros.
//!
//! The image is built into a sparse temporary file (all zeros where nothing was written)
//! through [`Written`], which notes the byte ranges written. A new raw volume of a `dir`,
//! `fs` or `netfs` pool is a file libvirt has just created (truncated to its size, maybe
//! preallocated): it reads as zeros, so sending the written ranges makes it equal to the
//! image byte for byte; the rest (the unused part of the volume, mostly) is not sent.
//! A new volume of any other pool type (an LVM volume, an iSCSI LUN, ...) may hold an
//! earlier volume's bytes: it gets the whole image.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::area::vfat::BlockSource;
use crate::area::AreaError;

/// Written ranges closer than this are sent as one: a stream costs round trips, a few
/// hundred KiB of zeros on loopback or a LAN cost less.
pub const MERGE_GAP: u64 = 1 << 20;

/// A [`BlockSource`] that notes the ranges written through it.
#[derive(Debug)]
pub struct Written<S> {
    inner: S,
    ranges: Mutex<Vec<Range<u64>>>,
}

impl<S: BlockSource> Written<S> {
    /// `inner`, nothing written yet.
    pub fn new(inner: S) -> Self {
        Written {
            inner,
            ranges: Mutex::new(Vec::new()),
        }
    }

    /// The source written to.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The ranges written so far, sorted, with those closer than `gap` merged.
    pub fn ranges(&self, gap: u64) -> Vec<Range<u64>> {
        let mut ranges = self
            .ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        merge(&mut ranges, gap);
        ranges
    }
}

/// Sorts `ranges` and merges those that overlap or lie less than `gap` apart.
fn merge(ranges: &mut Vec<Range<u64>>, gap: u64) {
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => {
                last.end = last.end.max(r.end);
            }
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

impl<S: BlockSource> BlockSource for Written<S> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), AreaError> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), AreaError> {
        self.inner.write_at(offset, buf)?;
        if !buf.is_empty() {
            let mut ranges = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
            // The builder writes mostly in order: extend the last range when it can.
            match ranges.last_mut() {
                Some(last) if last.end == offset => last.end += buf.len() as u64,
                _ => ranges.push(offset..offset + buf.len() as u64),
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), AreaError> {
        self.inner.flush()
    }

    fn name(&self) -> &Path {
        self.inner.name()
    }
}

/// Whether a new raw volume of `pool` reads as zeros (see the module docs). When libvirt
/// cannot say, no.
pub fn new_volumes_read_as_zeros(pool: &StoragePool) -> bool {
    let Ok(xml) = pool.xml_desc(0) else {
        return false;
    };
    roxmltree::Document::parse(&xml).is_ok_and(|doc| {
        matches!(
            doc.root_element().attribute("type"),
            Some("dir" | "fs" | "netfs")
        )
    })
}

/// `ranges` (sorted, not overlapping) without what `sent` covers.
pub fn subtract(ranges: Vec<Range<u64>>, sent: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut sent = sent.to_vec();
    sent.sort_by_key(|r| r.start);
    let mut out = Vec::new();
    for range in ranges {
        let mut start = range.start;
        for s in sent
            .iter()
            .filter(|s| s.start < range.end && s.end > range.start)
        {
            if s.start > start {
                out.push(start..s.start);
            }
            start = start.max(s.end);
        }
        if start < range.end {
            out.push(start..range.end);
        }
    }
    out
}

/// Sends the bytes `ranges` of `file` (the image at `path`, for messages) into
/// `volume` at the same offsets, one stream each.
pub fn upload(
    conn: &Connect,
    volume: &StorageVol,
    file: &File,
    path: &Path,
    ranges: &[Range<u64>],
) -> Result<(), AreaError> {
    upload_until(conn, volume, file, path, ranges, &AtomicBool::new(false))
}

/// [`upload`], given up (its stream aborted) once `cancelled` is set.
fn upload_until(
    conn: &Connect,
    volume: &StorageVol,
    file: &File,
    path: &Path,
    ranges: &[Range<u64>],
    cancelled: &AtomicBool,
) -> Result<(), AreaError> {
    let call = |e: virt::error::Error| AreaError::io("upload", path, io::Error::other(e));
    let mut buf = vec![0u8; 1 << 20];
    for range in ranges {
        let stream = Stream::new(conn, 0).map_err(call)?;
        volume
            .upload(&stream, range.start, range.end - range.start, 0)
            .map_err(call)?;
        let mut at = range.start;
        while at < range.end {
            if cancelled.load(Ordering::Relaxed) {
                let _ = stream.abort();
                return Err(AreaError::io(
                    "upload",
                    path,
                    io::Error::other("the upload was given up"),
                ));
            }
            let n = (range.end - at).min(buf.len() as u64) as usize;
            if let Err(e) = file.read_exact_at(&mut buf[..n], at) {
                let _ = stream.abort();
                return Err(AreaError::io("read", path, e));
            }
            let mut sent = 0;
            while sent < n {
                let m = stream.send(&buf[sent..n]).map_err(call)?;
                if m <= 0 {
                    let _ = stream.abort();
                    return Err(AreaError::io(
                        "upload",
                        path,
                        io::ErrorKind::WriteZero.into(),
                    ));
                }
                sent += m as usize;
            }
            at += n as u64;
        }
        stream.finish().map_err(call)?;
    }
    Ok(())
}

/// Sends ranges of an image into a volume in a thread of its own, in the order given,
/// while the image is still being written beyond them. One at a time: libvirt refuses a
/// second stream into a volume that has one.
pub struct Sender {
    ranges: Option<SyncSender<Range<u64>>>,
    /// Set when the sender is dropped unfinished: what it still holds is not sent.
    cancelled: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), AreaError>>>,
    sent: Vec<Range<u64>>,
}

impl Sender {
    /// Starts the thread, sending from `file` (the image at `path`) into `volume`.
    ///
    /// # Errors
    /// [`AreaError::Io`] when no thread can be started.
    pub fn start(
        conn: Arc<Connect>,
        volume: StorageVol,
        file: File,
        path: &Path,
    ) -> Result<Self, AreaError> {
        let (ranges, next) = sync_channel::<Range<u64>>(64);
        let shown = path.to_owned();
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancelled);
        let thread = std::thread::Builder::new()
            .name("nlxtp-send".into())
            .spawn(move || {
                // Each send is a stream of its own, which costs the daemon a helper
                // process: ranges that queued up meanwhile and follow each other go as
                // one.
                let mut pending = next.recv().ok();
                while let Some(mut range) = pending.take() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    while let Ok(more) = next.try_recv() {
                        if more.start == range.end {
                            range.end = more.end;
                        } else {
                            pending = Some(more);
                            break;
                        }
                    }
                    let range = std::slice::from_ref(&range);
                    upload_until(&conn, &volume, &file, &shown, range, &stop)?;
                    if pending.is_none() {
                        pending = next.recv().ok();
                    }
                }
                Ok(())
            })
            .map_err(|e| AreaError::io("start a thread to upload", path, e))?;
        Ok(Sender {
            ranges: Some(ranges),
            cancelled,
            thread: Some(thread),
            sent: Vec::new(),
        })
    }

    /// Hands `range` to the thread (waits while it has many in hand).
    pub fn send(&mut self, range: Range<u64>) {
        // A thread that stopped has failed: `finish` says why.
        if let Some(ranges) = &self.ranges {
            if ranges.send(range.clone()).is_ok() {
                self.sent.push(range);
            }
        }
    }

    /// The ranges handed over so far (sent, or being sent).
    pub fn handed(&self) -> &[Range<u64>] {
        &self.sent
    }

    /// Waits until everything handed over is in the volume; returns those ranges.
    ///
    /// # Errors
    /// The first failed send's.
    pub fn finish(mut self) -> Result<Vec<Range<u64>>, AreaError> {
        self.stop()?;
        Ok(std::mem::take(&mut self.sent))
    }

    fn stop(&mut self) -> Result<(), AreaError> {
        drop(self.ranges.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(AreaError::io(
                "upload",
                Path::new("the new volume"),
                io::Error::other("the sending thread failed"),
            )),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::area::vfat::block::Memory;

    #[test]
    fn written_ranges_are_sorted_and_merged() {
        let image = Memory::new(vec![0; 16 << 20]);
        let written = Written::new(&image);
        written.write_at(8 << 20, &[1; 512]).unwrap();
        written.write_at((8 << 20) + 512, &[2; 512]).unwrap();
        written.write_at(0, &[3; 512]).unwrap();
        written.write_at(4096, &[4; 10]).unwrap();
        written.write_at(100, &[]).unwrap();
        assert_eq!(
            written.ranges(0),
            vec![0..512, 4096..4106, (8 << 20)..(8 << 20) + 1024]
        );
        assert_eq!(
            written.ranges(1 << 20),
            vec![0..4106, (8 << 20)..(8 << 20) + 1024]
        );
        let mut bytes = vec![0; 16 << 20];
        image.read_at(0, &mut bytes).unwrap();
        assert_eq!(bytes[4096..4106], [4; 10]);
    }

    #[test]
    fn sent_ranges_are_subtracted() {
        let sent = [(4 << 20)..(8 << 20), (8 << 20)..(12 << 20)];
        assert_eq!(
            subtract(vec![0..(1 << 20), (2 << 20)..(13 << 20)], &sent),
            vec![0..(1 << 20), (2 << 20)..(4 << 20), (12 << 20)..(13 << 20)]
        );
        let one = |r: Range<u64>| std::iter::once(r).collect::<Vec<_>>();
        assert_eq!(subtract(one((4 << 20)..(6 << 20)), &sent), vec![]);
        assert_eq!(subtract(one(0..10), &[]), one(0..10));
    }

    #[test]
    fn overlapping_ranges_merge() {
        let mut ranges = vec![10..20, 0..5, 15..30, 5..6];
        merge(&mut ranges, 0);
        assert_eq!(ranges, vec![0..6, 10..30]);
    }
}
