//! A walk over a whole volume, for a download or a listing: every directory once (one
//! reached twice is a loop), every file with a reader of exactly its bytes, all within
//! the walk's limits.

use std::collections::HashSet;
use std::io::{self, Read};

use super::block::BlockSource;
use super::entry::RawEntry;
use super::volume::{DirPlace, Runs, Volume};
use crate::area::{AreaError, AreaPath, Entry, EntryKind, Visitor, WalkBudget};

/// One walk over a volume: what it has used of its limits, and the directories it has
/// entered (a directory reached twice is a loop).
pub struct VolumeWalk<'a, 'v, S> {
    pub volume: &'a Volume<S>,
    pub budget: WalkBudget,
    pub seen_dirs: HashSet<u32>,
    pub visit: &'a mut Visitor<'v>,
}

impl<S: BlockSource> VolumeWalk<'_, '_, S> {
    /// Visits the entries of the directory at `place`, whose path is `parent`.
    pub fn dir(
        &mut self,
        place: DirPlace,
        parent: Option<&AreaPath>,
        depth: usize,
    ) -> Result<(), AreaError> {
        let shown = parent.map_or("/", AreaPath::as_str);
        let mut entries = self.volume.entries(place, shown)?.entries;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(AreaError::Corrupt {
                what: format!("two entries named {:?} in {shown}", pair[0].name),
            });
        }
        for raw in entries {
            self.budget.count_entries(1)?;
            let path = match parent {
                Some(p) => p.join(&raw.name),
                None => AreaPath::new(raw.name.clone()),
            }
            .map_err(|_| AreaError::Corrupt {
                what: format!("the name {:?} in {shown}", raw.name),
            })?;
            if raw.is_dir {
                self.subdir(&raw, path, depth)?;
            } else {
                self.file(&raw, path)?;
            }
        }
        Ok(())
    }

    fn subdir(&mut self, raw: &RawEntry, path: AreaPath, depth: usize) -> Result<(), AreaError> {
        let entry = Entry {
            path,
            kind: EntryKind::Dir,
            size: 0,
            mode: 0o755,
        };
        self.budget.enter(depth + 1, &entry.path)?;
        let sub = self.volume.subdir(raw, entry.path.as_str())?;
        if !self.seen_dirs.insert(raw.first_cluster) {
            return Err(AreaError::Corrupt {
                what: format!(
                    "the directory {} is reached twice (a directory loop)",
                    entry.path
                ),
            });
        }
        (self.visit)(&entry, None).map_err(AreaError::sink)?;
        self.dir(sub, Some(&entry.path), depth + 1)
    }

    fn file(&mut self, raw: &RawEntry, path: AreaPath) -> Result<(), AreaError> {
        let volume = self.volume;
        let size = u64::from(raw.size);
        let chain = volume.file_chain(raw.first_cluster, size, path.as_str())?;
        self.budget.count_file(size)?;
        // Each file's chain holds its size, so files holding more than the data region
        // share clusters: a guest multiplying what a download reads.
        let region = u64::from(volume.geometry.clusters) * u64::from(volume.geometry.cluster_size);
        if self.budget.bytes() > region {
            return Err(AreaError::Corrupt {
                what: format!(
                    "the files hold {} bytes, more than the volume's {region}: files share (cross-link) clusters",
                    self.budget.bytes()
                ),
            });
        }
        let entry = Entry {
            path,
            kind: EntryKind::File,
            size,
            mode: if raw.read_only { 0o444 } else { 0o644 },
        };
        let mut reader = RangeReader::new(&volume.source, volume.ranges(&chain, size));
        let visited = (self.visit)(&entry, Some(&mut reader));
        if let Some(failed) = reader.failed.take() {
            return Err(failed);
        }
        visited.map_err(AreaError::sink)
    }
}

/// Reads exactly the bytes of some (offset, length) runs of an image, then ends.
struct RangeReader<'a> {
    source: &'a dyn BlockSource,
    ranges: std::vec::IntoIter<(u64, usize)>,
    current: Option<(u64, usize)>,
    /// Why a read failed: reported by the walk instead of the visitor's error.
    failed: Option<AreaError>,
}

impl<'a> RangeReader<'a> {
    fn new(source: &'a dyn BlockSource, ranges: Runs) -> Self {
        RangeReader {
            source,
            ranges: ranges.into_iter(),
            current: None,
            failed: None,
        }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.current {
                Some((_, 0)) | None => match self.ranges.next() {
                    Some(next) => self.current = Some(next),
                    None => return Ok(0),
                },
                Some((offset, left)) => {
                    let n = left.min(buf.len());
                    // The image may shrink under us; read_at then reports it.
                    if let Err(failed) = self.source.read_at(offset, &mut buf[..n]) {
                        self.failed = Some(failed);
                        return Err(io::Error::other("reading the image failed"));
                    }
                    self.current = Some((offset + n as u64, left - n));
                    return Ok(n);
                }
            }
        }
    }
}
