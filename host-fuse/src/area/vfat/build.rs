//! Writes a whole upload into a volume the host has just formatted, as its files
//! arrive, through its [`BlockSource`].
//!
//! File data goes first: each file, as it comes, at the next free clusters, contiguous,
//! so all of it is one sequential stream (with disk writes started early, see
//! [`Stream`]) and an upload can be written while its archive is still being read or
//! received. Once the last file is in, the directories are laid out after the data
//! (`layout.rs`) and each is written once, then the used part of each FAT copy once,
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
use std::sync::Arc;
use std::thread::JoinHandle;

use super::block::BlockSource;
use super::entry::{encode_short, DosTime, ATTR_ARCHIVE, ATTR_DIR, ENTRY_LEN};
use super::fat::END_OF_CHAIN;
use super::geometry::Geometry;
use super::layout::{allocate_dirs, directories, first_free, DirNode, Target, MAX_FILE_LEN};
use super::plan::Names;
use crate::area::{AreaError, AreaPath, Durability};

/// A file whose data is in place.
#[derive(Debug)]
struct Placed {
    path: AreaPath,
    len: u64,
    /// Its first cluster; 0 for an empty file.
    first: u32,
    clusters: u32,
}

/// An upload being written into the fresh volume `V`: files and directories in any
/// order, then [`Builder::finish`].
#[derive(Debug)]
pub struct Builder<V: BlockSource + 'static> {
    geometry: Geometry,
    /// What the fresh root already holds (the volume label's entry), kept in front.
    root_head: Vec<u8>,
    names: Names,
    files: Vec<Placed>,
    first_free: u64,
    /// The next free cluster.
    next: u64,
    /// One past the volume's last cluster.
    end: u64,
    out: Stream<V>,
    /// A file did not fit: from then on clusters are only counted, for the message.
    overflowed: bool,
}

impl<V: BlockSource + 'static> Builder<V> {
    /// Starts writing into `volume`, freshly formatted; flushes early when `durability`
    /// asks for the upload on the disk.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] if `volume` is not a FAT volume, [`AreaError::Io`].
    pub fn start(volume: V, durability: Durability) -> Result<Self, AreaError> {
        let geometry = Geometry::read(&volume)?;
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
        let first_free = first_free(&geometry);
        let at = geometry.cluster_offset(first_free as u32);
        let out = Stream::start(Arc::new(volume), at, durability == Durability::Synced)?;
        Ok(Builder {
            end: u64::from(geometry.max_cluster()) + 1,
            geometry,
            root_head,
            names: Names::default(),
            files: Vec::new(),
            first_free,
            next: first_free,
            out,
            overflowed: false,
        })
    }

    /// Adds the directory `path` (directories holding files are made anyway; this makes
    /// empty ones).
    ///
    /// # Errors
    /// [`AreaError::BadName`], [`AreaError::NameCollision`].
    pub fn dir(&mut self, path: &AreaPath) -> Result<(), AreaError> {
        self.names.add(path, true)
    }

    /// Adds the file `path` with exactly `len` bytes from `data`.
    ///
    /// # Errors
    /// [`AreaError::BadName`], [`AreaError::NameCollision`], [`AreaError::TooLarge`] for
    /// 4 GiB or more, [`AreaError::ShortSource`] and [`AreaError::Sink`] when `data` ends
    /// early or fails, [`AreaError::Io`] when the volume cannot be written.
    pub fn file(&mut self, path: AreaPath, len: u64, data: &mut dyn Read) -> Result<(), AreaError> {
        if len > MAX_FILE_LEN {
            return Err(AreaError::TooLarge {
                what: format!("{path} ({len} bytes), as FAT holds files"),
                limit: MAX_FILE_LEN,
            });
        }
        self.names.add(&path, false)?;
        let cluster_size = u64::from(self.geometry.cluster_size);
        let clusters = len.div_ceil(cluster_size);
        let first = if clusters == 0 { 0 } else { self.next as u32 };
        self.overflowed |= self.next + clusters > self.end;
        self.next += clusters;
        if !self.overflowed {
            let copied = self.out.copy_from(data, len, &path)?;
            if copied < len {
                return Err(AreaError::ShortSource {
                    path,
                    got: copied,
                    len,
                });
            }
            self.out.zeros((clusters * cluster_size - len) as usize)?;
        }
        self.files.push(Placed {
            path,
            len,
            first,
            clusters: clusters as u32,
        });
        Ok(())
    }

    /// The volume written to.
    pub fn volume(&self) -> &V {
        &self.out.volume
    }

    /// Where the file data written so far lies in the volume: it starts at the first
    /// free cluster and is never written again (the directories and FATs are written
    /// by [`Builder::finish`], elsewhere).
    pub fn data_written(&self) -> std::ops::Range<u64> {
        self.geometry.cluster_offset(self.first_free as u32)..self.out.at
    }

    /// Lays out and writes the directories, the FATs and FSInfo; gives the volume back.
    ///
    /// # Errors
    /// [`AreaError::NoSpace`] when the upload did not fit; [`AreaError::TooLarge`] for a
    /// directory of more than 65,536 entries or a top-level directory larger than a
    /// FAT12/16 root holds; [`AreaError::Io`].
    pub fn finish(self) -> Result<V, AreaError> {
        let Builder {
            geometry,
            root_head,
            names,
            files,
            first_free,
            next,
            end,
            out,
            ..
        } = self;
        let volume = out.finish()?;
        let paths: Vec<AreaPath> = files.iter().map(|f| f.path.clone()).collect();
        let mut dirs = directories(&names.dirs, &paths)?;
        let kept = root_head.len() / ENTRY_LEN;
        let used_end = allocate_dirs(&mut dirs, &geometry, kept, next)?;
        let cluster_size = u64::from(geometry.cluster_size);
        if used_end > end {
            return Err(AreaError::NoSpace {
                needed: (used_end - first_free) * cluster_size,
                available: end.saturating_sub(first_free) * cluster_size,
            });
        }
        write_directories(&*volume, &geometry, &dirs, &files, root_head)?;
        write_fat(&*volume, &geometry, used_end, |fat| {
            for dir in &dirs {
                for pair in dir.chain.windows(2) {
                    fat.set(pair[0], pair[1]);
                }
                if let Some(&last) = dir.chain.last() {
                    fat.set(last, END_OF_CHAIN);
                }
            }
            for file in files.iter().filter(|f| f.clusters > 0) {
                let last = file.first + file.clusters - 1;
                for c in file.first..last {
                    fat.set(c, c + 1);
                }
                fat.set(last, END_OF_CHAIN);
            }
        })?;
        if let Some(at) = geometry.fs_info_offset {
            // In use: the root's first cluster and everything handed out after it.
            let used = 1 + (used_end - first_free);
            let free = u64::from(geometry.clusters) - used;
            // Where the next free cluster is; "unknown" when none is left.
            let next_free = if used_end > u64::from(geometry.max_cluster()) {
                u32::MAX
            } else {
                used_end as u32
            };
            update_fs_info(&*volume, at, free as u32, next_free)?;
        }
        Arc::try_unwrap(volume).map_err(|_| AreaError::Corrupt {
            what: "the image is still in use after its upload was written".into(),
        })
    }
}

/// Writes every directory once: the root (after `root_head`) and each subdirectory with
/// its `.` and `..`.
fn write_directories(
    volume: &dyn BlockSource,
    geometry: &Geometry,
    dirs: &[DirNode],
    files: &[Placed],
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
                    let file = &files[f];
                    entry.encode(&mut buf, ATTR_ARCHIVE, file.first, file.len as u32, at);
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

/// Bytes written between two early flushes.
const WRITEBACK_STEP: u64 = 16 << 20;

/// Bytes gathered before a write.
const STREAM_BUFFER: usize = 1 << 20;

/// A sequential stream into the volume, written with disk writes started early: a
/// thread flushes the volume each time another [`WRITEBACK_STEP`] bytes are written, so
/// the disk works while the upload is still being produced and the final fsync waits
/// only for the tail. Sources are read straight into its buffer.
#[derive(Debug)]
struct Stream<V: BlockSource + 'static> {
    volume: Arc<V>,
    at: u64,
    /// [`STREAM_BUFFER`] bytes, of which `filled` are to be written at `at`.
    buf: Vec<u8>,
    filled: usize,
    unflushed: u64,
    kick: Option<SyncSender<()>>,
    flusher: Option<JoinHandle<Result<(), AreaError>>>,
}

impl<V: BlockSource + 'static> Stream<V> {
    /// Writes to `volume` from `at` on, with the flushing thread only if `flush`.
    fn start(volume: Arc<V>, at: u64, flush: bool) -> Result<Self, AreaError> {
        let mut stream = Stream {
            volume,
            at,
            buf: vec![0; STREAM_BUFFER],
            filled: 0,
            unflushed: 0,
            kick: None,
            flusher: None,
        };
        if flush {
            let (kick, kicked) = sync_channel::<()>(1);
            let volume = Arc::clone(&stream.volume);
            let flusher = std::thread::Builder::new()
                .name("nlxtp-writeback".into())
                .spawn(move || {
                    while kicked.recv().is_ok() {
                        volume.flush()?;
                    }
                    Ok(())
                })
                .map_err(|e| {
                    AreaError::io("start a writeback thread for", stream.volume.name(), e)
                })?;
            stream.kick = Some(kick);
            stream.flusher = Some(flusher);
        }
        Ok(stream)
    }

    /// Copies at most `len` bytes of `source` into the stream; returns how many came
    /// (fewer: the source ended). Errors reading are the upload's, errors writing the
    /// image's.
    fn copy_from(
        &mut self,
        source: &mut dyn Read,
        len: u64,
        path: &AreaPath,
    ) -> Result<u64, AreaError> {
        let mut total = 0u64;
        while total < len {
            if self.filled == self.buf.len() {
                self.drain()?;
            }
            let room = (self.buf.len() - self.filled).min((len - total) as usize);
            let n = match source.read(&mut self.buf[self.filled..self.filled + room]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(AreaError::Sink {
                        source: io::Error::new(
                            e.kind(),
                            format!("reading the upload's {path}: {e}"),
                        ),
                    })
                }
            };
            self.filled += n;
            total += n as u64;
        }
        Ok(total)
    }

    /// Writes `count` zeros.
    fn zeros(&mut self, mut count: usize) -> Result<(), AreaError> {
        while count > 0 {
            if self.filled == self.buf.len() {
                self.drain()?;
            }
            let n = count.min(self.buf.len() - self.filled);
            self.buf[self.filled..self.filled + n].fill(0);
            self.filled += n;
            count -= n;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), AreaError> {
        let filled = std::mem::take(&mut self.filled);
        self.volume.write_at(self.at, &self.buf[..filled])?;
        self.at += filled as u64;
        self.unflushed += filled as u64;
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
    /// would not see it again). Gives the volume back.
    fn finish(mut self) -> Result<Arc<V>, AreaError> {
        self.drain()?;
        self.stop()?;
        let volume = Arc::clone(&self.volume);
        drop(self);
        Ok(volume)
    }

    /// Stops the flushing thread and waits until it has ended.
    fn stop(&mut self) -> Result<(), AreaError> {
        drop(self.kick.take());
        match self.flusher.take().map(JoinHandle::join) {
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

/// An upload given up: its thread ends with it.
impl<V: BlockSource + 'static> Drop for Stream<V> {
    fn drop(&mut self) {
        let _ = self.stop();
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
