//! A read-only, checked view of a FAT volume in an image file: the host's own parser,
//! bounded by construction.
//!
//! Opening checks the boot sector and the whole FAT ([`Geometry`], [`Fat`]), so no chain
//! loops and every cluster number used to compute an offset is inside the image. Every
//! walk is bounded by [`WalkLimits`], every directory by [`MAX_DIR_BYTES`], every file by
//! its cluster chain and the image's length; a directory reached twice (a directory loop)
//! is an error. Reads use `pread` on a file opened read-only: nothing here writes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::dir::{parse_dir, RawEntry, ENTRY_LEN};
use super::fat::Fat;
use super::geometry::{Geometry, BOOT_SECTOR_LEN};
use crate::area::{AreaError, AreaPath, Entry, EntryKind, Visitor, WalkBudget, WalkLimits};

/// The most bytes a directory may have: 65536 entries, the FAT specification's limit.
pub const MAX_DIR_BYTES: u64 = 65536 * ENTRY_LEN as u64;

/// An image file opened for reading, with its length at open time.
#[derive(Debug)]
pub struct Image {
    file: File,
    len: u64,
    path: PathBuf,
}

impl Image {
    /// Opens `path` read-only.
    ///
    /// # Errors
    /// [`AreaError::NotFound`] if there is no such file, else [`AreaError::Io`].
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
        let len = file
            .metadata()
            .map_err(|source| AreaError::io("inspect", path, source))?
            .len();
        Ok(Image {
            file,
            len,
            path: path.into(),
        })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads exactly `buf.len()` bytes at `offset`, which must lie inside the image.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a range past the end (the image shrank, or a caller
    /// trusted a bad offset); [`AreaError::Io`] if reading fails.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), AreaError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(AreaError::Corrupt {
                what: format!(
                    "a read of {} bytes at {offset} past the image's end",
                    buf.len()
                ),
            });
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| AreaError::io("read", &self.path, source))
    }
}

/// (offset, length) runs of bytes in the image.
type Runs = Vec<(u64, usize)>;

/// A directory as read: its live entries, its raw bytes, and where those bytes are.
struct Listing {
    entries: Vec<RawEntry>,
    bytes: Vec<u8>,
    runs: Runs,
}

/// Where a directory's entries are.
#[derive(Debug, Clone, Copy)]
enum DirPlace {
    /// The FAT12/16 root directory region.
    Region { offset: u64, len: u64 },
    /// A cluster chain.
    Chain(u32),
}

/// A file found in the volume: its entry and where its bytes are.
#[derive(Debug, Clone)]
pub struct Located {
    /// Byte offset in the image of the file's short directory entry.
    pub entry_offset: u64,
    /// The short entry's 32 bytes at the time it was found.
    pub entry: [u8; ENTRY_LEN],
    /// (offset, length) in the image of each run of contiguous clusters holding the
    /// file's bytes, covering `min(size, wanted)` bytes.
    pub ranges: Vec<(u64, usize)>,
    pub size: u64,
    pub is_dir: bool,
}

/// A checked FAT volume.
#[derive(Debug)]
pub struct Volume {
    pub image: Image,
    pub geometry: Geometry,
    fat: Fat,
}

impl Volume {
    /// Opens the image at `path`, checking only its boot sector: every chain is still
    /// bounded when followed ([`Fat::chain`]), but a loop anywhere else in the FAT goes
    /// unnoticed. For the status locate, which follows three chains.
    ///
    /// # Errors
    /// As [`Volume::open`].
    pub fn open_unchecked(path: &Path) -> Result<Self, AreaError> {
        let image = Image::open(path)?;
        let geometry = read_geometry(&image)?;
        let fat = Fat::load(&geometry, |offset, buf| image.read_at(offset, buf))?;
        Ok(Volume {
            image,
            geometry,
            fat,
        })
    }

    /// Opens and checks the image at `path`: boot sector and the whole FAT.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a bad boot sector or FAT, [`AreaError::Io`] and
    /// [`AreaError::NoImage`] from opening it.
    pub fn open(path: &Path) -> Result<Self, AreaError> {
        let image = Image::open(path)?;
        let geometry = read_geometry(&image)?;
        let fat = Fat::load(&geometry, |offset, buf| image.read_at(offset, buf))?;
        fat.check()?;
        Ok(Volume {
            image,
            geometry,
            fat,
        })
    }

    fn max_clusters_for(&self, bytes: u64) -> usize {
        bytes.div_ceil(u64::from(self.geometry.cluster_size)) as usize
    }

    /// The clusters of a file of `size` bytes starting at `first`, checked against the size.
    fn file_chain(&self, first: u32, size: u64, name: &str) -> Result<Vec<u32>, AreaError> {
        if size == 0 {
            return Ok(Vec::new());
        }
        if size > self.image.len {
            return Err(AreaError::Corrupt {
                what: format!("{name} claims {size} bytes, more than the whole image"),
            });
        }
        let what = format!("the file {name}");
        let chain = self.fat.chain(first, self.max_clusters_for(size), &what)?;
        let held = chain.len() as u64 * u64::from(self.geometry.cluster_size);
        if held < size {
            return Err(AreaError::Corrupt {
                what: format!("{name} claims {size} bytes but its clusters hold only {held}"),
            });
        }
        Ok(chain)
    }

    /// (offset, length) runs of contiguous clusters covering `len` bytes of `chain`.
    fn ranges(&self, chain: &[u32], len: u64) -> Vec<(u64, usize)> {
        let cluster = u64::from(self.geometry.cluster_size);
        let mut out: Vec<(u64, usize)> = Vec::new();
        let mut left = len;
        for &c in chain {
            if left == 0 {
                break;
            }
            let take = left.min(cluster);
            let offset = self.geometry.cluster_offset(c);
            match out.last_mut() {
                Some((at, n)) if *at + *n as u64 == offset => *n += take as usize,
                _ => out.push((offset, take as usize)),
            }
            left -= take;
        }
        out
    }

    /// A directory's bytes and the image offset of each of its entries' slot.
    fn read_dir(&self, place: DirPlace, name: &str) -> Result<(Vec<u8>, Runs), AreaError> {
        let ranges = match place {
            DirPlace::Region { offset, len } => vec![(offset, len as usize)],
            DirPlace::Chain(first) => {
                let what = format!("the directory {name}");
                let chain = self
                    .fat
                    .chain(first, self.max_clusters_for(MAX_DIR_BYTES), &what)?;
                let len = chain.len() as u64 * u64::from(self.geometry.cluster_size);
                self.ranges(&chain, len)
            }
        };
        let total: usize = ranges.iter().map(|r| r.1).sum();
        let mut bytes = vec![0u8; total];
        let mut at = 0;
        for &(offset, len) in &ranges {
            self.image.read_at(offset, &mut bytes[at..at + len])?;
            at += len;
        }
        Ok((bytes, ranges))
    }

    fn root(&self) -> DirPlace {
        match self.geometry.root_region {
            Some((offset, len)) => DirPlace::Region { offset, len },
            None => DirPlace::Chain(self.geometry.root_cluster),
        }
    }

    fn entries(&self, place: DirPlace, name: &str) -> Result<Listing, AreaError> {
        let (bytes, runs) = self.read_dir(place, name)?;
        let hi = self.geometry.root_region.is_none();
        Ok(Listing {
            entries: parse_dir(&bytes, hi)?,
            bytes,
            runs,
        })
    }

    fn subdir(&self, entry: &RawEntry, path: &str) -> Result<DirPlace, AreaError> {
        if !self.geometry.is_data_cluster(entry.first_cluster) {
            return Err(AreaError::Corrupt {
                what: format!(
                    "the directory {path} starts at cluster {}",
                    entry.first_cluster
                ),
            });
        }
        Ok(DirPlace::Chain(entry.first_cluster))
    }

    /// Finds the file or directory whose short names along the way are `shorts`, and
    /// where the first `wanted` bytes of it are. `None`: no such entry.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a broken chain on the way or in the file.
    pub fn locate_short(
        &self,
        shorts: &[[u8; 11]],
        wanted: u64,
    ) -> Result<Option<Located>, AreaError> {
        let mut place = self.root();
        let mut path = String::new();
        for (depth, short) in shorts.iter().enumerate() {
            let Listing {
                entries,
                bytes,
                runs: ranges,
            } = self.entries(place, &path)?;
            let Some(entry) = entries.into_iter().find(|e| &e.short == short) else {
                return Ok(None);
            };
            path = format!("{path}/{}", entry.name);
            if depth + 1 < shorts.len() {
                if !entry.is_dir {
                    return Ok(None);
                }
                place = self.subdir(&entry, &path)?;
                continue;
            }
            let at = entry.index * ENTRY_LEN;
            let mut raw = [0u8; ENTRY_LEN];
            raw.copy_from_slice(&bytes[at..at + ENTRY_LEN]);
            let size = u64::from(entry.size);
            let ranges_out = if entry.is_dir {
                Vec::new()
            } else {
                let chain = self.file_chain(entry.first_cluster, size, &path)?;
                self.ranges(&chain, size.min(wanted))
            };
            return Ok(Some(Located {
                entry_offset: offset_in(&ranges, at),
                entry: raw,
                ranges: ranges_out,
                size,
                is_dir: entry.is_dir,
            }));
        }
        Ok(None)
    }

    /// Visits every file and directory, parents before their contents, each directory's
    /// entries in name order. Files come with a reader of exactly their bytes.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for anything a valid volume does not contain (including
    /// two entries of one directory with the same name), [`AreaError::TooLarge`] when a
    /// limit is reached, [`AreaError::Sink`] when `visit` fails.
    pub fn walk(&self, limits: &WalkLimits, visit: &mut Visitor<'_>) -> Result<(), AreaError> {
        let mut walk = VolumeWalk {
            volume: self,
            budget: WalkBudget::new(limits),
            seen_dirs: HashSet::new(),
            visit,
        };
        walk.dir(self.root(), None, 0)
    }

    /// Reads the whole file at `path` (names compared as Linux's vfat does: ignoring
    /// case), refusing files longer than `max_len`.
    ///
    /// # Errors
    /// [`AreaError::NotFound`], [`AreaError::NotAFile`], [`AreaError::TooLarge`],
    /// [`AreaError::Corrupt`].
    pub fn read_file(&self, path: &AreaPath, max_len: u64) -> Result<Vec<u8>, AreaError> {
        let mut place = self.root();
        let parts: Vec<&str> = path.components().collect();
        let mut shown = String::new();
        for (i, part) in parts.iter().enumerate() {
            let shown_dir = if shown.is_empty() { "/" } else { &shown };
            let entries = self.entries(place, shown_dir)?.entries;
            let found = entries
                .into_iter()
                .find(|e| names_match(&e.name, part) || short_matches(&e.short, part));
            let Some(entry) = found else {
                return Err(AreaError::NotFound { path: path.clone() });
            };
            shown = if shown.is_empty() {
                entry.name.clone()
            } else {
                format!("{shown}/{}", entry.name)
            };
            let last = i + 1 == parts.len();
            if !entry.is_dir && last {
                let size = u64::from(entry.size);
                let chain = self.file_chain(entry.first_cluster, size, &shown)?;
                if size > max_len {
                    return Err(AreaError::TooLarge {
                        what: format!("the file {path}"),
                        limit: max_len,
                    });
                }
                let mut out = vec![0u8; size as usize];
                let mut at = 0;
                for (offset, len) in self.ranges(&chain, size) {
                    self.image.read_at(offset, &mut out[at..at + len])?;
                    at += len;
                }
                return Ok(out);
            }
            if !entry.is_dir {
                return Err(AreaError::NotFound { path: path.clone() });
            }
            if last {
                return Err(AreaError::NotAFile { path: path.clone() });
            }
            place = self.subdir(&entry, &shown)?;
        }
        Err(AreaError::NotAFile { path: path.clone() })
    }
}

/// One walk over a volume: what it has used of its limits, and the directories it has
/// entered (a directory reached twice is a loop).
struct VolumeWalk<'a, 'v> {
    volume: &'a Volume,
    budget: WalkBudget,
    seen_dirs: HashSet<u32>,
    visit: &'a mut Visitor<'v>,
}

impl VolumeWalk<'_, '_> {
    /// Visits the entries of the directory at `place`, whose path is `parent`.
    fn dir(
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
        let mut reader = RangeReader::new(&volume.image, volume.ranges(&chain, size));
        let visited = (self.visit)(&entry, Some(&mut reader));
        if let Some(failed) = reader.failed.take() {
            return Err(failed);
        }
        visited.map_err(AreaError::sink)
    }
}

fn names_match(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

fn short_matches(short: &[u8; 11], name: &str) -> bool {
    super::dir::short_form(name).is_some_and(|s| &s == short)
}

/// The image offset of byte `at` of a directory laid out in `ranges`.
fn offset_in(ranges: &[(u64, usize)], mut at: usize) -> u64 {
    for &(offset, len) in ranges {
        if at < len {
            return offset + at as u64;
        }
        at -= len;
    }
    unreachable!("an entry index inside the directory's bytes")
}

/// Reads the boot sector and checks it.
///
/// # Errors
/// [`AreaError::Corrupt`] for an image too short or a bad boot sector.
pub fn read_geometry(image: &Image) -> Result<Geometry, AreaError> {
    if image.len < BOOT_SECTOR_LEN as u64 {
        return Err(AreaError::Corrupt {
            what: format!(
                "an image of {} bytes, too short for a boot sector",
                image.len
            ),
        });
    }
    let mut sector = [0u8; BOOT_SECTOR_LEN];
    image.read_at(0, &mut sector)?;
    Geometry::parse(&sector, image.len)
}

/// Reads exactly the bytes of some (offset, length) runs of an image, then ends.
struct RangeReader<'a> {
    image: &'a Image,
    ranges: std::vec::IntoIter<(u64, usize)>,
    current: Option<(u64, usize)>,
    /// Why a read failed: reported by the walk instead of the visitor's error.
    failed: Option<AreaError>,
}

impl<'a> RangeReader<'a> {
    fn new(image: &'a Image, ranges: Vec<(u64, usize)>) -> Self {
        RangeReader {
            image,
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
                    if let Err(failed) = self.image.read_at(offset, &mut buf[..n]) {
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
