//! A read-only, checked view of a FAT volume in an image file: the host's own parser,
//! bounded by construction.
//!
//! Opening checks the boot sector and the whole FAT ([`Geometry`], [`Fat`]), so no chain
//! loops and every cluster number used to compute an offset is inside the image. Every
//! walk is bounded by [`WalkLimits`], every directory by [`MAX_DIR_BYTES`], every file by
//! its cluster chain and the image's length; a directory reached twice (a directory loop)
//! is an error. Reads go through a [`BlockSource`]; nothing here writes.

use std::collections::HashSet;
use std::path::Path;

use super::block::{BlockSource, Disk, ImageFile};
use super::entry::{parse_dir, RawEntry, ENTRY_LEN};
use super::fat::Fat;
use super::geometry::Geometry;
use super::partition;
use super::walk::VolumeWalk;
use crate::area::{AreaError, AreaPath, Visitor, WalkBudget, WalkLimits};

/// The most bytes a directory may have: 65536 entries, the FAT specification's limit.
pub const MAX_DIR_BYTES: u64 = 65536 * ENTRY_LEN as u64;

/// Bytes of a directory read at once (a multiple of [`ENTRY_LEN`]).
const DIR_PIECE: usize = 4096;

/// (offset, length) runs of bytes in the image.
pub type Runs = Vec<(u64, usize)>;

/// A directory as read: its live entries, its raw bytes, and where those bytes are.
pub struct Listing {
    pub entries: Vec<RawEntry>,
    bytes: Vec<u8>,
    runs: Runs,
}

/// Where a directory's entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirPlace {
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
    pub is_dir: bool,
}

/// A FAT volume in a [`BlockSource`]: its boot sector checked, its FAT read as needed.
#[derive(Debug)]
pub struct Volume<S = Disk> {
    pub source: S,
    pub geometry: Geometry,
    fat: Fat,
}

impl Volume<Disk> {
    /// Opens the image at `path`, checking only its boot sector (see
    /// [`Volume::new_unchecked`]).
    ///
    /// # Errors
    /// As [`Volume::open`].
    pub fn open_unchecked(path: &Path) -> Result<Self, AreaError> {
        Self::new_unchecked(partition::volume_in(ImageFile::open(path)?)?)
    }

    /// Opens and checks the image at `path`: boot sector and the whole FAT.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a bad boot sector or FAT, [`AreaError::Io`] and
    /// [`AreaError::NoImage`] from opening it.
    pub fn open(path: &Path) -> Result<Self, AreaError> {
        Self::new(partition::volume_in(ImageFile::open(path)?)?)
    }
}

impl<S: BlockSource> Volume<S> {
    /// The volume in `source`, checking only its boot sector: the FAT is read as chains
    /// are followed, and every chain is still bounded ([`Fat::chain`]), but a loop
    /// elsewhere in the FAT goes unnoticed. For the status read, which follows a few.
    ///
    /// # Errors
    /// As [`Volume::new`].
    pub fn new_unchecked(source: S) -> Result<Self, AreaError> {
        let geometry = Geometry::read(&source)?;
        let fat = Fat::lazy(&geometry)?;
        Ok(Volume {
            source,
            geometry,
            fat,
        })
    }

    /// The volume in `source`, checked: boot sector and the whole FAT.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a bad boot sector or FAT, [`AreaError::Io`].
    pub fn new(source: S) -> Result<Self, AreaError> {
        let geometry = Geometry::read(&source)?;
        let fat = Fat::load(&geometry, &source)?;
        fat.check(&source)?;
        Ok(Volume {
            source,
            geometry,
            fat,
        })
    }

    pub(super) fn max_clusters_for(&self, bytes: u64) -> usize {
        bytes.div_ceil(u64::from(self.geometry.cluster_size)) as usize
    }

    /// The clusters of a file of `size` bytes starting at `first`, checked against the size.
    pub(super) fn file_chain(
        &self,
        first: u32,
        size: u64,
        name: &str,
    ) -> Result<Vec<u32>, AreaError> {
        if size == 0 {
            return Ok(Vec::new());
        }
        if size > self.source.len() {
            return Err(AreaError::Corrupt {
                what: format!("{name} claims {size} bytes, more than the whole image"),
            });
        }
        let what = format!("the file {name}");
        let limit = self.max_clusters_for(size);
        let chain = self.fat.chain(&self.source, first, limit, &what)?;
        let held = chain.len() as u64 * u64::from(self.geometry.cluster_size);
        if held < size {
            return Err(AreaError::Corrupt {
                what: format!("{name} claims {size} bytes but its clusters hold only {held}"),
            });
        }
        Ok(chain)
    }

    /// (offset, length) runs of contiguous clusters covering `len` bytes of `chain`.
    pub(super) fn ranges(&self, chain: &[u32], len: u64) -> Runs {
        let cluster = u64::from(self.geometry.cluster_size);
        let mut out: Runs = Vec::new();
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

    /// Reads the bytes of `runs`, one after another.
    fn read_runs(&self, runs: &[(u64, usize)], out: &mut [u8]) -> Result<(), AreaError> {
        let mut at = 0;
        for &(offset, len) in runs {
            self.source.read_at(offset, &mut out[at..at + len])?;
            at += len;
        }
        Ok(())
    }

    /// A directory's bytes up to its end marker (an entry starting with 0: nothing after
    /// it counts), and where all of its bytes are. The whole chain is followed either way.
    fn read_dir(&self, place: DirPlace, name: &str) -> Result<(Vec<u8>, Runs), AreaError> {
        let ranges = match place {
            DirPlace::Region { offset, len } => vec![(offset, len as usize)],
            DirPlace::Chain(first) => {
                let what = format!("the directory {name}");
                let limit = self.max_clusters_for(MAX_DIR_BYTES);
                let chain = self.fat.chain(&self.source, first, limit, &what)?;
                let len = chain.len() as u64 * u64::from(self.geometry.cluster_size);
                self.ranges(&chain, len)
            }
        };
        // In pieces, stopping after the end marker: a root region of 16 KiB usually
        // holds a handful of entries.
        let mut bytes = Vec::new();
        for &(offset, len) in &ranges {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(DIR_PIECE);
                let at = bytes.len();
                bytes.resize(at + n, 0);
                self.source
                    .read_at(offset + done as u64, &mut bytes[at..])?;
                done += n;
                if bytes[at..].chunks_exact(ENTRY_LEN).any(|e| e[0] == 0) {
                    return Ok((bytes, ranges));
                }
            }
        }
        Ok((bytes, ranges))
    }

    fn root(&self) -> DirPlace {
        match self.geometry.root_region {
            Some((offset, len)) => DirPlace::Region { offset, len },
            None => DirPlace::Chain(self.geometry.root_cluster),
        }
    }

    pub(super) fn entries(&self, place: DirPlace, name: &str) -> Result<Listing, AreaError> {
        let (bytes, runs) = self.read_dir(place, name)?;
        let hi = self.geometry.root_region.is_none();
        Ok(Listing {
            entries: parse_dir(&bytes, hi)?,
            bytes,
            runs,
        })
    }

    pub(super) fn subdir(&self, entry: &RawEntry, path: &str) -> Result<DirPlace, AreaError> {
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
    /// where the first `wanted` bytes of it are; directories listed once per `dirs`.
    /// `None`: no such entry.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a broken chain on the way or in the file.
    pub fn locate_short_in(
        &self,
        dirs: &mut Dirs,
        shorts: &[[u8; 11]],
        wanted: u64,
    ) -> Result<Option<Located>, AreaError> {
        let mut place = self.root();
        let mut path = String::new();
        for (depth, short) in shorts.iter().enumerate() {
            let listing = dirs.list(self, place, &path)?;
            let Some(entry) = listing.entries.iter().find(|e| &e.short == short) else {
                return Ok(None);
            };
            path = format!("{path}/{}", entry.name);
            if depth + 1 < shorts.len() {
                if !entry.is_dir {
                    return Ok(None);
                }
                place = self.subdir(entry, &path)?;
                continue;
            }
            let at = entry.index * ENTRY_LEN;
            let mut raw = [0u8; ENTRY_LEN];
            raw.copy_from_slice(&listing.bytes[at..at + ENTRY_LEN]);
            let size = u64::from(entry.size);
            let ranges = if entry.is_dir {
                Vec::new()
            } else {
                let chain = self.file_chain(entry.first_cluster, size, &path)?;
                self.ranges(&chain, size.min(wanted))
            };
            return Ok(Some(Located {
                entry_offset: offset_in(&listing.runs, at),
                entry: raw,
                ranges,
                is_dir: entry.is_dir,
            }));
        }
        Ok(None)
    }

    /// Reads the bytes of a located file, as many as its ranges cover, into `out`.
    ///
    /// # Errors
    /// Those of reading the source.
    pub fn read_located(&self, located: &Located, out: &mut Vec<u8>) -> Result<(), AreaError> {
        read_located(&self.source, located, out)
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
        let file = self.find_file(&mut Dirs::default(), path, max_len)?;
        self.read_found(&file)
    }

    /// The bytes of a file [`Volume::find_file`] found.
    ///
    /// # Errors
    /// Those of reading the source.
    pub fn read_found(&self, file: &FoundFile) -> Result<Vec<u8>, AreaError> {
        let mut out = vec![0u8; file.size as usize];
        self.read_runs(&self.ranges(&file.chain, file.size), &mut out)?;
        Ok(out)
    }

    /// Finds the file at `path` as [`Volume::read_file`] does, checking its chain and
    /// its size against `max_len`, without reading it; directories listed once per
    /// `dirs`.
    ///
    /// # Errors
    /// As [`Volume::read_file`].
    pub fn find_file(
        &self,
        dirs: &mut Dirs,
        path: &AreaPath,
        max_len: u64,
    ) -> Result<FoundFile, AreaError> {
        let mut place = self.root();
        let parts: Vec<&str> = path.components().collect();
        let mut shown = String::new();
        for (i, part) in parts.iter().enumerate() {
            let shown_dir = if shown.is_empty() { "/" } else { &shown };
            let entries = &dirs.list(self, place, shown_dir)?.entries;
            let found = entries
                .iter()
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
                return Ok(FoundFile { size, chain });
            }
            if !entry.is_dir {
                return Err(AreaError::NotFound { path: path.clone() });
            }
            if last {
                return Err(AreaError::NotAFile { path: path.clone() });
            }
            place = self.subdir(entry, &shown)?;
        }
        Err(AreaError::NotAFile { path: path.clone() })
    }
}

/// A file [`Volume::find_file`] found: its size and its clusters, checked.
#[derive(Debug, Clone)]
pub struct FoundFile {
    /// Its size in bytes.
    pub size: u64,
    chain: Vec<u32>,
}

/// Directories already listed during one look at a volume, so that several lookups
/// read each directory once.
#[derive(Default)]
pub struct Dirs {
    listed: Vec<(DirPlace, Listing)>,
}

impl Dirs {
    fn list<S: BlockSource>(
        &mut self,
        volume: &Volume<S>,
        place: DirPlace,
        name: &str,
    ) -> Result<&Listing, AreaError> {
        let at = match self.listed.iter().position(|(p, _)| *p == place) {
            Some(at) => at,
            None => {
                let listing = volume.entries(place, name)?;
                self.listed.push((place, listing));
                self.listed.len() - 1
            }
        };
        Ok(&self.listed[at].1)
    }
}

/// Reads the bytes of `located` from `source`, as many as its ranges cover, into `out`.
///
/// # Errors
/// Those of reading `source`.
pub fn read_located(
    source: &dyn BlockSource,
    located: &Located,
    out: &mut Vec<u8>,
) -> Result<(), AreaError> {
    let len: usize = located.ranges.iter().map(|r| r.1).sum();
    out.resize(len, 0);
    let mut at = 0;
    for &(offset, n) in &located.ranges {
        source.read_at(offset, &mut out[at..at + n])?;
        at += n;
    }
    Ok(())
}

/// Writes `bytes` over the bytes of `located` from byte `at` of the file on, in place.
///
/// # Errors
/// [`AreaError::Corrupt`] when the ranges do not cover `at..at + bytes.len()`; those of
/// writing `source`.
pub fn write_located(
    source: &dyn BlockSource,
    located: &Located,
    mut at: usize,
    mut bytes: &[u8],
) -> Result<(), AreaError> {
    for &(offset, n) in &located.ranges {
        if bytes.is_empty() {
            break;
        }
        if at >= n {
            at -= n;
            continue;
        }
        let here = bytes.len().min(n - at);
        source.write_at(offset + at as u64, &bytes[..here])?;
        bytes = &bytes[here..];
        at = 0;
    }
    if !bytes.is_empty() {
        return Err(AreaError::Corrupt {
            what: "a write past the end of a located file".into(),
        });
    }
    Ok(())
}

fn names_match(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

fn short_matches(short: &[u8; 11], name: &str) -> bool {
    super::entry::short_form(name).is_some_and(|s| &s == short)
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;
    use crate::area::vfat::block::Window;

    fn run(program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("{program} did not start (install dosfstools and mtools): {e}")
            });
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
    }

    /// Every file and directory with its bytes, as a walk gives them.
    fn contents<S: BlockSource>(volume: &Volume<S>) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        volume
            .walk(&WalkLimits::default(), &mut |entry, reader| {
                let bytes = reader.map(|r| {
                    let mut b = Vec::new();
                    r.read_to_end(&mut b).map(|_| b)
                });
                out.push((entry.path.to_string(), bytes.transpose()?));
                Ok(())
            })
            .unwrap();
        out
    }

    /// A FAT16 volume of 16 MiB made by mkfs.vfat 2 MiB into a 24 MiB disk, with files
    /// put in by mtools; read through a window it is the volume copied out on its own.
    #[test]
    fn a_window_reads_a_volume_inside_a_bigger_disk() {
        const OFFSET: u64 = 2 << 20;
        const LEN: u64 = 16 << 20;
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(24 << 20)
            .unwrap();
        let disk_s = disk.to_str().unwrap();
        let sectors = (OFFSET / 512).to_string();
        let blocks = (LEN / 1024).to_string();
        run(
            "mkfs.vfat",
            &["--offset", &sectors, "-n", "NLXTP", disk_s, &blocks],
        );
        let at = format!("{disk_s}@@{OFFSET}");
        let src: PathBuf = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a long name.txt"), b"in a window").unwrap();
        std::fs::write(src.join("sub/BIG.BIN"), vec![7u8; 100_000]).unwrap();
        run("mmd", &["-i", &at, "::sub"]);
        let put = |from: &str, to: &str| {
            let from = src.join(from);
            run("mcopy", &["-i", &at, from.to_str().unwrap(), to]);
        };
        put("a long name.txt", "::a long name.txt");
        put("sub/BIG.BIN", "::sub/BIG.BIN");

        let plain = dir.path().join("plain.img");
        let bytes = std::fs::read(&disk).unwrap();
        std::fs::write(&plain, &bytes[OFFSET as usize..(OFFSET + LEN) as usize]).unwrap();
        let whole = Volume::open(&plain).unwrap();
        let window = Window::new(ImageFile::open(&disk).unwrap(), OFFSET, LEN).unwrap();
        let inside = Volume::new(window).unwrap();
        let files = contents(&whole);
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(contents(&inside), files);
        let path = AreaPath::new("SUB/big.bin").unwrap();
        assert_eq!(
            inside.read_file(&path, 1 << 20).unwrap(),
            vec![7u8; 100_000]
        );

        // The disk itself is no FAT volume at its start.
        assert!(Volume::open(&disk).is_err());
    }
}
