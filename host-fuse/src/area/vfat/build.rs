//! Writes a whole upload into a volume the host has just formatted, in one pass, through
//! its [`BlockSource`].
//!
//! Where everything goes is decided first (`layout.rs`). Then every directory is written
//! once, the file data as one sequential stream, the used part of each FAT copy once,
//! and on FAT32 the FSInfo counts. A general FAT library instead searches the directory
//! for a free slot and a clashing short name for every file it creates, which is
//! quadratic in the files per directory (2,000 small files in one directory took fatfs
//! 4.5 s), and updates the FAT one entry at a time.
//!
//! The volume must be fresh: its FAT all free but for the reserved entries and, on
//! FAT32, the root directory's cluster; its root directory holding at most the volume
//! label. Only then is "the next free cluster" a counter.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use super::block::BlockSource;
use super::entry::{encode_short, DosTime, ATTR_ARCHIVE, ATTR_DIR, ENTRY_LEN};
use super::fat::END_OF_CHAIN;
use super::geometry::Geometry;
use super::layout::{allocate, directories, Allocation, DirNode, Target};
use super::plan::Plan;
use crate::area::{AreaError, AreaPath, Durability, UploadData};

/// Writes `plan` into the fresh volume `geometry` describes, in `volume`.
///
/// # Errors
/// [`AreaError::NoSpace`] before anything is written when the volume is too small;
/// [`AreaError::TooLarge`] for a directory of more than 65,536 entries, a file of 4 GiB
/// or more, or a top-level directory larger than a FAT12/16 root holds;
/// [`AreaError::ShortSource`] and [`AreaError::Sink`] when a file's source ends early or
/// fails; [`AreaError::Io`] when the image cannot be written.
pub fn write_plan(
    volume: &dyn BlockSource,
    geometry: &Geometry,
    plan: Plan,
    durability: Durability,
) -> Result<(), AreaError> {
    let mut dirs = directories(&plan)?;
    // What the fresh root already holds (the volume label's entry) stays in front.
    let (root_at, root_len) = match geometry.root_region {
        Some(region) => region,
        None => (
            geometry.cluster_offset(geometry.root_cluster),
            u64::from(geometry.cluster_size),
        ),
    };
    let mut root_head = vec![0u8; root_len as usize];
    volume.read_at(root_at, &mut root_head)?;
    let kept = root_head
        .chunks_exact(ENTRY_LEN)
        .take_while(|e| e[0] != 0)
        .count();
    root_head.truncate(kept * ENTRY_LEN);
    let alloc = allocate(&mut dirs, &plan, geometry, kept)?;

    let sizes: Vec<u64> = plan.files.iter().map(|(_, d)| d.len()).collect();
    write_directories(volume, geometry, &dirs, &alloc, &sizes, root_head)?;
    write_files(volume, geometry, plan.files, alloc.files_start, durability)?;
    write_fat(volume, geometry, alloc.end, |fat| {
        for dir in &dirs {
            for pair in dir.chain.windows(2) {
                fat.set(pair[0], pair[1]);
            }
            if let Some(&last) = dir.chain.last() {
                fat.set(last, END_OF_CHAIN);
            }
        }
        for &(first, count) in alloc.file_runs.iter().filter(|r| r.1 > 0) {
            let last = first + count - 1;
            for c in first..last {
                fat.set(c, c + 1);
            }
            fat.set(last, END_OF_CHAIN);
        }
    })?;
    if let Some(at) = geometry.fs_info_offset {
        // In use: the root's first cluster and everything handed out after it.
        let used = 1 + (alloc.end - alloc.first_free);
        let free = u64::from(geometry.clusters) - used;
        // Where the next free cluster is; "unknown" when none is left.
        let next = if alloc.end > u64::from(geometry.max_cluster()) {
            u32::MAX
        } else {
            alloc.end as u32
        };
        update_fs_info(volume, at, free as u32, next)?;
    }
    Ok(())
}

/// Writes every directory once: the root (after `root_head`) and each subdirectory with
/// its `.` and `..`. `sizes` are the files' lengths.
fn write_directories(
    volume: &dyn BlockSource,
    geometry: &Geometry,
    dirs: &[DirNode],
    alloc: &Allocation,
    sizes: &[u64],
    root_head: Vec<u8>,
) -> Result<(), AreaError> {
    let at = DosTime::now();
    let cluster_size = geometry.cluster_size as usize;
    let mut buf = root_head;
    for (i, dir) in dirs.iter().enumerate() {
        if i > 0 {
            buf.clear();
            // `..` of a top-level directory names cluster 0, whatever the root's is.
            let parent = if dir.parent == 0 {
                0
            } else {
                dirs[dir.parent].chain[0]
            };
            let dots = [(b".          ", dir.chain[0]), (b"..         ", parent)];
            for (name, cluster) in dots {
                buf.extend_from_slice(&encode_short(name, ATTR_DIR, 0, cluster, 0, at));
            }
        }
        for entry in &dir.entries {
            match entry.target {
                Target::Dir(d) => entry.encode(&mut buf, ATTR_DIR, dirs[d].chain[0], 0, at),
                Target::File(f) => {
                    let first = alloc.file_runs[f].0;
                    entry.encode(&mut buf, ATTR_ARCHIVE, first, sizes[f] as u32, at);
                }
            }
        }
        if let (0, Some((region_at, region_len))) = (i, geometry.root_region) {
            buf.resize(region_len as usize, 0);
            volume.write_at(region_at, &buf)?;
            continue;
        }
        buf.resize(dir.chain.len() * cluster_size, 0);
        for (part, &cluster) in buf.chunks(cluster_size).zip(&dir.chain) {
            volume.write_at(geometry.cluster_offset(cluster), part)?;
        }
    }
    Ok(())
}

/// Writes the files' data as one sequential stream from cluster `start` on, each file
/// padded with zeros to whole clusters.
fn write_files(
    volume: &dyn BlockSource,
    geometry: &Geometry,
    files: Vec<(AreaPath, UploadData)>,
    start: u64,
    durability: Durability,
) -> Result<(), AreaError> {
    let cluster_size = u64::from(geometry.cluster_size);
    if files.iter().all(|(_, d)| d.is_empty()) {
        return Ok(());
    }
    let at = geometry.cluster_offset(start as u32);
    std::thread::scope(|scope| {
        let mut out = Stream::start(scope, volume, at, durability == Durability::Synced)?;
        let mut chunk = vec![0u8; 256 * 1024];
        for (path, data) in files {
            let len = data.len();
            match data {
                UploadData::Dir => {}
                UploadData::Bytes(bytes) => out.write(&bytes)?,
                UploadData::Reader { reader, len } => {
                    let copied = copy(reader.take(len), &mut out, &mut chunk, &path)?;
                    if copied < len {
                        return Err(AreaError::ShortSource {
                            path,
                            got: copied,
                            len,
                        });
                    }
                }
            }
            let pad = (len.div_ceil(cluster_size) * cluster_size - len) as usize;
            chunk[..pad].fill(0);
            out.write(&chunk[..pad])?;
        }
        out.finish()
    })
}

/// Bytes written between two early flushes.
const WRITEBACK_STEP: u64 = 16 << 20;

/// Bytes gathered before a write.
const STREAM_BUFFER: usize = 1 << 20;

/// A sequential stream into the volume, written with disk writes started early: a
/// thread flushes the volume each time another [`WRITEBACK_STEP`] bytes are written, so
/// the disk works while the upload is still being produced and the final fsync waits
/// only for the tail.
struct Stream<'scope> {
    volume: &'scope dyn BlockSource,
    at: u64,
    buf: Vec<u8>,
    unflushed: u64,
    kick: Option<SyncSender<()>>,
    flusher: Option<ScopedJoinHandle<'scope, Result<(), AreaError>>>,
}

impl<'scope> Stream<'scope> {
    /// Writes to `volume` from `at` on, with the flushing thread only if `flush`.
    fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        volume: &'scope dyn BlockSource,
        at: u64,
        flush: bool,
    ) -> Result<Self, AreaError> {
        let mut stream = Stream {
            volume,
            at,
            buf: Vec::with_capacity(STREAM_BUFFER),
            unflushed: 0,
            kick: None,
            flusher: None,
        };
        if flush {
            let (kick, kicked) = sync_channel::<()>(1);
            let flusher = std::thread::Builder::new()
                .name("nlxtp-writeback".into())
                .spawn_scoped(scope, move || {
                    while kicked.recv().is_ok() {
                        volume.flush()?;
                    }
                    Ok(())
                })
                .map_err(|e| AreaError::io("start a writeback thread for", volume.name(), e))?;
            stream.kick = Some(kick);
            stream.flusher = Some(flusher);
        }
        Ok(stream)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), AreaError> {
        if self.buf.len() + bytes.len() > STREAM_BUFFER {
            self.drain()?;
        }
        if bytes.len() >= STREAM_BUFFER {
            self.put(bytes)
        } else {
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn drain(&mut self) -> Result<(), AreaError> {
        let buf = std::mem::take(&mut self.buf);
        let written = self.put(&buf);
        self.buf = buf;
        self.buf.clear();
        written
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), AreaError> {
        self.volume.write_at(self.at, bytes)?;
        self.at += bytes.len() as u64;
        self.unflushed += bytes.len() as u64;
        if self.unflushed >= WRITEBACK_STEP {
            self.unflushed = 0;
            if let Some(kick) = &self.kick {
                // Busy flushing already: the next step catches up.
                let _ = kick.try_send(());
            }
        }
        Ok(())
    }

    /// Writes what is left and stops the thread; an error of its flushes is the write's
    /// (the kernel reports a writeback error once per open file, so the final fsync
    /// would not see it again).
    fn finish(mut self) -> Result<(), AreaError> {
        self.drain()?;
        drop(self.kick.take());
        match self.flusher.take().map(ScopedJoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(AreaError::io(
                "flush",
                self.volume.name(),
                io::Error::other("the writeback thread failed"),
            )),
            None => Ok(()),
        }
    }
}

/// Copies `source` into the image stream; errors reading are the upload's, errors
/// writing are the image's.
fn copy(
    mut source: impl Read,
    out: &mut Stream<'_>,
    chunk: &mut [u8],
    path: &AreaPath,
) -> Result<u64, AreaError> {
    let mut total = 0u64;
    loop {
        let n = match source.read(chunk) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(AreaError::Sink {
                    source: io::Error::new(e.kind(), format!("reading the upload's {path}: {e}")),
                })
            }
        };
        out.write(&chunk[..n])?;
        total += n as u64;
    }
}

/// The used front of a FAT in memory.
struct FatTable {
    bytes: Vec<u8>,
    geometry: Geometry,
}

impl FatTable {
    /// Sets entry `cluster` to `next` (or [`END_OF_CHAIN`]).
    fn set(&mut self, cluster: u32, next: u32) {
        self.geometry.fat_type.set(&mut self.bytes, cluster, next);
    }
}

/// Reads the front of the first FAT covering entries `0..end`, lets `fill` set entries,
/// and writes it to every FAT copy.
fn write_fat(
    volume: &dyn BlockSource,
    geometry: &Geometry,
    end: u64,
    fill: impl FnOnce(&mut FatTable),
) -> Result<(), AreaError> {
    let sector = u64::from(geometry.bytes_per_sector);
    let len = (geometry.fat_type.bytes_for(end) + 1)
        .div_ceil(sector)
        .saturating_mul(sector)
        .min(geometry.fat_len);
    let mut bytes = vec![0u8; len as usize];
    volume.read_at(geometry.first_fat_offset, &mut bytes)?;
    let mut fat = FatTable {
        bytes,
        geometry: geometry.clone(),
    };
    fill(&mut fat);
    for copy in 0..u64::from(geometry.fats) {
        volume.write_at(
            geometry.first_fat_offset + copy * geometry.fat_len,
            &fat.bytes,
        )?;
    }
    Ok(())
}

/// FAT32's FSInfo sector: the free cluster count and where the next free one is (hints,
/// but fsck.vfat checks them and Linux trusts the count for `df`).
fn update_fs_info(
    volume: &dyn BlockSource,
    at: u64,
    free: u32,
    next_free: u32,
) -> Result<(), AreaError> {
    /// Byte offsets in the FSInfo sector.
    const LEAD_SIG: usize = 0;
    const STRUCT_SIG: usize = 484;
    const FREE_COUNT: usize = 488;
    const NEXT_FREE: usize = 492;
    const TRAIL_SIG: usize = 508;
    let mut sector = [0u8; 512];
    volume.read_at(at, &mut sector)?;
    let sig = |pos: usize| u32::from_le_bytes(sector[pos..pos + 4].try_into().unwrap());
    if sig(LEAD_SIG) != 0x4161_5252
        || sig(STRUCT_SIG) != 0x6141_7272
        || sig(TRAIL_SIG) != 0xAA55_0000
    {
        return Ok(());
    }
    sector[FREE_COUNT..FREE_COUNT + 4].copy_from_slice(&free.to_le_bytes());
    sector[NEXT_FREE..NEXT_FREE + 4].copy_from_slice(&next_free.to_le_bytes());
    volume.write_at(at, &sector)
}
