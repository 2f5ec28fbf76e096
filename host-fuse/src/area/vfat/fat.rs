//! The file allocation table: entries of 12, 16 or 32 bits (get and set, defined once
//! here for the reader and the writer), read on demand or whole, and followed safely.
//!
//! [`Fat`] reads the table lazily, a page at a time, through the volume's
//! [`BlockSource`]: following the few chains of a status read costs a page or two, not
//! the whole table. [`Fat::chain`] is bounded on its own: it follows at most `limit`
//! links and refuses a link to a cluster outside the volume or to a free or bad one, so
//! any chain, even a looped one, ends in a result or an error after `limit` steps.
//! [`Fat::check`] reads the whole table and checks every entry and every chain (none
//! loops), for walks over the whole volume; the status read skips it to stay fast.

use std::cell::RefCell;

use super::block::BlockSource;
use super::geometry::{FatType, Geometry};
use crate::area::AreaError;

/// The largest FAT the host reads (a 2 GiB image of 512-byte FAT32 clusters).
const MAX_FAT_BYTES: u64 = 16 << 20;

/// Bytes of the FAT read at once when reading on demand.
const PAGE: usize = 4096;

/// What [`FatType::set`] takes for "the chain ends here".
pub const END_OF_CHAIN: u32 = u32::MAX;

impl FatType {
    /// Where `cluster`'s entry starts in the FAT, and how many bytes hold it.
    fn span(self, cluster: u32) -> (usize, usize) {
        let c = cluster as usize;
        match self {
            FatType::Fat12 => (c + c / 2, 2),
            FatType::Fat16 => (2 * c, 2),
            FatType::Fat32 => (4 * c, 4),
        }
    }

    /// The value of `cluster`'s entry in `fat` (the table from its first byte), or
    /// `None` if `fat` is too short to hold it. FAT32's top four bits are not part of
    /// the value.
    pub fn get(self, fat: &[u8], cluster: u32) -> Option<u32> {
        let (at, n) = self.span(cluster);
        let b = fat.get(at..at.checked_add(n)?)?;
        Some(match self {
            FatType::Fat12 => {
                let pair = u16::from_le_bytes([b[0], b[1]]);
                u32::from(if cluster.is_multiple_of(2) {
                    pair & 0x0FFF
                } else {
                    pair >> 4
                })
            }
            FatType::Fat16 => u32::from(u16::from_le_bytes([b[0], b[1]])),
            FatType::Fat32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x0FFF_FFFF,
        })
    }

    /// Sets `cluster`'s entry in `fat` to `value` ([`END_OF_CHAIN`] for the end of a
    /// chain), keeping the bits of neighbours (FAT12) and FAT32's top four bits.
    ///
    /// # Panics
    /// If `fat` is too short to hold the entry: the writer sizes its table first.
    pub fn set(self, fat: &mut [u8], cluster: u32, value: u32) {
        let value = if value == END_OF_CHAIN {
            self.end_of_chain()
        } else {
            value & self.end_of_chain()
        };
        let (at, n) = self.span(cluster);
        let b = &mut fat[at..at + n];
        match self {
            FatType::Fat12 => {
                let pair = u16::from_le_bytes([b[0], b[1]]);
                let v = value as u16;
                let pair = if cluster.is_multiple_of(2) {
                    (pair & 0xF000) | v
                } else {
                    (pair & 0x000F) | (v << 4)
                };
                b.copy_from_slice(&pair.to_le_bytes());
            }
            FatType::Fat16 => b.copy_from_slice(&(value as u16).to_le_bytes()),
            FatType::Fat32 => {
                let old = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                b.copy_from_slice(&((old & 0xF000_0000) | value).to_le_bytes());
            }
        }
    }

    /// The value that ends a chain, as formatters write it.
    fn end_of_chain(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }

    /// The value that marks a bad cluster; values above it end a chain.
    fn bad(self) -> u32 {
        self.end_of_chain() - 8
    }

    /// The bytes of a FAT that hold entries `0..clusters`.
    pub fn bytes_for(self, clusters: u64) -> u64 {
        (clusters * u64::from(self.bits())).div_ceil(8)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Free,
    Next(u32),
    End,
    Bad,
    /// A value that names no cluster of the volume (1, or beyond the last cluster).
    Wild(u32),
}

/// The table's bytes read so far.
#[derive(Debug)]
struct Pages {
    /// The table from its first byte, two spare zero bytes at the end (the entry of the
    /// last FAT12 cluster may read one byte past its 12 bits).
    bytes: Vec<u8>,
    /// Which [`PAGE`]s of `bytes` hold what the source holds.
    loaded: Vec<bool>,
}

/// The active FAT of one volume, read through its [`BlockSource`] as needed.
#[derive(Debug)]
pub struct Fat {
    fat_type: FatType,
    max: u32,
    /// Where the table is in the source.
    offset: u64,
    /// The bytes of it that matter: entries up to the last cluster.
    len: usize,
    pages: RefCell<Pages>,
}

fn corrupt(what: String) -> AreaError {
    AreaError::Corrupt { what }
}

impl Fat {
    /// The active FAT of `geometry`, nothing read yet.
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] for a FAT beyond 16 MiB.
    pub fn lazy(geometry: &Geometry) -> Result<Self, AreaError> {
        // Only the entries up to the last cluster matter; a FAT may be longer.
        let needed =
            (u64::from(geometry.max_cluster()) + 1) * u64::from(geometry.fat_type.bits()) / 8 + 2;
        let len = needed.min(geometry.fat_len);
        if len > MAX_FAT_BYTES {
            return Err(AreaError::TooLarge {
                what: "the image's FAT".into(),
                limit: MAX_FAT_BYTES,
            });
        }
        let len = len as usize;
        Ok(Fat {
            fat_type: geometry.fat_type,
            max: geometry.max_cluster(),
            offset: geometry.fat_offset,
            len,
            pages: RefCell::new(Pages {
                bytes: vec![0u8; len + 2],
                loaded: vec![false; len.div_ceil(PAGE)],
            }),
        })
    }

    /// The active FAT of `geometry`, read whole from `source` at once.
    ///
    /// # Errors
    /// As [`Fat::lazy`], and those of reading `source`.
    pub fn load(geometry: &Geometry, source: &dyn BlockSource) -> Result<Self, AreaError> {
        let fat = Self::lazy(geometry)?;
        fat.load_all(source)?;
        Ok(fat)
    }

    fn load_all(&self, source: &dyn BlockSource) -> Result<(), AreaError> {
        let mut pages = self.pages.borrow_mut();
        if pages.loaded.iter().all(|&l| l) {
            return Ok(());
        }
        source.read_at(self.offset, &mut pages.bytes[..self.len])?;
        pages.loaded.fill(true);
        Ok(())
    }

    /// Reads the pages that hold bytes `at..at + n` of the table, if not read yet.
    fn load_span(&self, source: &dyn BlockSource, at: usize, n: usize) -> Result<(), AreaError> {
        let mut pages = self.pages.borrow_mut();
        let last = (at + n - 1).min(self.len.saturating_sub(1)) / PAGE;
        for page in at / PAGE..=last {
            if page >= pages.loaded.len() || pages.loaded[page] {
                continue;
            }
            let start = page * PAGE;
            let end = (start + PAGE).min(self.len);
            source.read_at(self.offset + start as u64, &mut pages.bytes[start..end])?;
            pages.loaded[page] = true;
        }
        Ok(())
    }

    /// What `cluster`'s entry says, from bytes already read.
    fn decode(&self, bytes: &[u8], cluster: u32) -> Link {
        if cluster < 2 || cluster > self.max {
            return Link::Wild(cluster);
        }
        // Inside `bytes` for every cluster up to `max` (Fat::lazy sized it so).
        let raw = self.fat_type.get(bytes, cluster).unwrap_or(0);
        let bad = self.fat_type.bad();
        match raw {
            0 => Link::Free,
            n if n == bad => Link::Bad,
            n if n > bad => Link::End,
            n if (2..=self.max).contains(&n) => Link::Next(n),
            n => Link::Wild(n),
        }
    }

    /// What `cluster`'s entry says, reading its page first if needed.
    fn link(&self, source: &dyn BlockSource, cluster: u32) -> Result<Link, AreaError> {
        if (2..=self.max).contains(&cluster) {
            let (at, n) = self.fat_type.span(cluster);
            self.load_span(source, at, n)?;
        }
        Ok(self.decode(&self.pages.borrow().bytes, cluster))
    }

    /// Reads the whole table and checks every entry of it and every chain in it.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for an entry that points outside the volume or into a free
    /// or bad cluster, or a chain that loops; those of reading `source`.
    pub fn check(&self, source: &dyn BlockSource) -> Result<(), AreaError> {
        self.load_all(source)?;
        let pages = self.pages.borrow();
        let link = |c| self.decode(&pages.bytes, c);
        // One pass, colouring each cluster "on the current path" and then "ends well",
        // so each is walked once.
        const UNSEEN: u8 = 0;
        const ON_PATH: u8 = 1;
        const ENDS: u8 = 2;
        let mut colour = vec![UNSEEN; self.max as usize + 1];
        let mut path = Vec::new();
        for start in 2..=self.max {
            let mut at = start;
            while colour[at as usize] == UNSEEN {
                colour[at as usize] = ON_PATH;
                path.push(at);
                match link(at) {
                    Link::Next(next) => {
                        match link(next) {
                            Link::Free | Link::Bad => {
                                return Err(corrupt(format!(
                                    "FAT: cluster {at} links to cluster {next}, which is {}",
                                    if link(next) == Link::Free {
                                        "free"
                                    } else {
                                        "marked bad"
                                    }
                                )))
                            }
                            _ => {}
                        }
                        if colour[next as usize] == ON_PATH {
                            return Err(corrupt(format!(
                                "FAT: the cluster chain through cluster {next} loops"
                            )));
                        }
                        at = next;
                    }
                    Link::Wild(n) => {
                        return Err(corrupt(format!(
                            "FAT: cluster {at} links to {n}, which is not a cluster of the volume"
                        )))
                    }
                    Link::Free | Link::End | Link::Bad => break,
                }
            }
            for done in path.drain(..) {
                colour[done as usize] = ENDS;
            }
        }
        Ok(())
    }

    /// The clusters of the chain that starts at `first`, in order, at most `limit` of them.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] if `first` or a link is not a data cluster in use, or the
    /// chain is longer than `limit` (which is what a loop looks like); those of reading
    /// `source`.
    pub fn chain(
        &self,
        source: &dyn BlockSource,
        first: u32,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u32>, AreaError> {
        let mut out = Vec::new();
        let mut at = first;
        loop {
            let link = self.link(source, at)?;
            match link {
                Link::Next(_) | Link::End => {}
                // `at` is a cluster of the volume, its entry names none.
                Link::Wild(n) if n != at => {
                    return Err(corrupt(format!(
                        "{what}: cluster {at} links to {n}, which is not a cluster of the volume"
                    )))
                }
                _ if out.is_empty() => {
                    return Err(corrupt(format!(
                        "{what} starts at cluster {first}, which holds no data"
                    )))
                }
                _ => {
                    return Err(corrupt(format!(
                        "{what} runs into cluster {at}, which holds no data"
                    )))
                }
            }
            if out.len() == limit {
                let mut seen = out.clone();
                seen.sort_unstable();
                return Err(corrupt(if seen.binary_search(&at).is_ok() {
                    format!("the cluster chain of {what} loops")
                } else {
                    format!("{what} has more clusters than it can use")
                }));
            }
            out.push(at);
            match link {
                Link::Next(next) => at = next,
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::area::vfat::block::Memory;
    use crate::area::vfat::geometry::BOOT_SECTOR_LEN;

    fn fat12_geometry() -> Geometry {
        // 1.44 MiB floppy as mformat writes it: 2847 clusters of 512 bytes.
        let mut b = [0u8; BOOT_SECTOR_LEN];
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 1;
        b[14] = 1;
        b[16] = 2;
        b[17..19].copy_from_slice(&224u16.to_le_bytes());
        b[19..21].copy_from_slice(&2880u16.to_le_bytes());
        b[22] = 9;
        b[510] = 0x55;
        b[511] = 0xAA;
        Geometry::parse(&b, 2880 * 512).unwrap()
    }

    /// A volume's first bytes: the reserved sector, then a FAT12 with `links`.
    fn table(links: &[(u32, u32)]) -> Memory {
        let mut fat = vec![0u8; 9 * 512];
        FatType::Fat12.set(&mut fat, 0, 0xFF0);
        FatType::Fat12.set(&mut fat, 1, 0xFFF);
        for &(cluster, value) in links {
            FatType::Fat12.set(&mut fat, cluster, value);
        }
        let mut image = vec![0u8; 512];
        image.extend(fat);
        Memory::new(image)
    }

    fn fat(source: &Memory) -> (Fat, &Memory) {
        (Fat::lazy(&fat12_geometry()).unwrap(), source)
    }

    #[test]
    fn follows_a_fat12_chain() {
        let src = table(&[(2, 3), (3, 7), (7, 0xFFF), (9, 0xFF8)]);
        let (f, s) = fat(&src);
        assert_eq!(f.chain(s, 2, 10, "f").unwrap(), vec![2, 3, 7]);
        assert_eq!(src.reads(), 1, "one page of the FAT read, not all of it");
        f.check(s).unwrap();
        assert_eq!(f.chain(s, 9, 10, "f").unwrap(), vec![9]);
        assert!(f.chain(s, 2, 2, "f").is_err());
        assert!(
            f.chain(s, 4, 10, "f").is_err(),
            "a free cluster starts no chain"
        );
        assert!(f.chain(s, 1, 10, "f").is_err());
        assert!(f.chain(s, 99_999, 10, "f").is_err());
        // Unchecked, a looped chain still ends: in an error after `limit` links.
        let looped = table(&[(2, 3), (3, 2)]);
        let (f, s) = fat(&looped);
        let err = f.chain(s, 2, 100, "f").unwrap_err().to_string();
        assert!(err.contains("loops"), "{err}");
        let wild = table(&[(2, 1)]);
        let (f, s) = fat(&wild);
        assert!(f
            .chain(s, 2, 100, "f")
            .unwrap_err()
            .to_string()
            .contains("links to 1"));
    }

    #[test]
    fn a_chain_across_pages_reads_each_page_once() {
        // Entry 2730 straddles bytes 4095 and 4096: the first two pages.
        let src = table(&[(2, 2730), (2730, 2731), (2731, 3), (3, 0xFFF)]);
        let (f, s) = fat(&src);
        assert_eq!(f.chain(s, 2, 10, "f").unwrap(), vec![2, 2730, 2731, 3]);
        assert_eq!(src.reads(), 2);
    }

    #[test]
    fn rejects_loops_and_wild_links() {
        let cases: [(&[(u32, u32)], &str); 5] = [
            (&[(2, 3), (3, 4), (4, 2)], "loops"),
            (&[(5, 5)], "loops"),
            (&[(2, 1)], "links to 1"),
            (&[(2, 3000)], "links to 3000"),
            (&[(2, 3)], "free"),
        ];
        for (links, needle) in cases {
            let src = table(links);
            let (f, s) = fat(&src);
            let err = f.check(s).unwrap_err().to_string();
            assert!(err.contains(needle), "{links:?}: {err}");
        }
    }

    #[test]
    fn entries_of_each_width_round_trip() {
        let mut fat = vec![0u8; 12];
        FatType::Fat12.set(&mut fat, 2, 0x345);
        FatType::Fat12.set(&mut fat, 3, 0xABC);
        FatType::Fat12.set(&mut fat, 4, END_OF_CHAIN);
        assert_eq!(&fat[3..8], &[0x45, 0xC3, 0xAB, 0xFF, 0x0F]);
        assert_eq!(FatType::Fat12.get(&fat, 3), Some(0xABC));
        assert_eq!(FatType::Fat12.get(&fat, 4), Some(0xFFF));
        assert_eq!(FatType::Fat12.get(&fat, 8), None, "past the bytes");

        let mut fat = vec![0xFFu8; 16];
        FatType::Fat32.set(&mut fat, 2, 0x0123_4567);
        assert_eq!(&fat[8..12], &[0x67, 0x45, 0x23, 0xF1], "top four bits kept");
        assert_eq!(FatType::Fat32.get(&fat, 2), Some(0x0123_4567));
        FatType::Fat16.set(&mut fat, 1, END_OF_CHAIN);
        assert_eq!(FatType::Fat16.get(&fat, 1), Some(0xFFFF));
    }
}
