//! The file allocation table, loaded whole and checked whole.
//!
//! After [`Fat::load`] succeeds, every entry of a data cluster is free, bad, end of
//! chain, or a link to another data cluster that is itself in use, and no chain loops.
//! So following any chain ends, after at most `clusters` steps, without a check of its
//! own; [`Fat::chain`] keeps a bound anyway.

use super::geometry::{FatType, Geometry};
use crate::area::AreaError;

/// The largest FAT the host loads (a 2 GiB image of 512-byte FAT32 clusters).
const MAX_FAT_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Free,
    Next(u32),
    End,
    Bad,
}

/// The checked FAT of one volume.
#[derive(Debug)]
pub struct Fat {
    links: Vec<Link>,
}

fn corrupt(what: String) -> AreaError {
    AreaError::Corrupt { what }
}

fn raw_entry(bytes: &[u8], fat_type: FatType, cluster: usize) -> u32 {
    match fat_type {
        FatType::Fat12 => {
            let at = cluster + cluster / 2;
            let pair = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
            u32::from(if cluster.is_multiple_of(2) {
                pair & 0x0FFF
            } else {
                pair >> 4
            })
        }
        FatType::Fat16 => u32::from(u16::from_le_bytes([
            bytes[2 * cluster],
            bytes[2 * cluster + 1],
        ])),
        FatType::Fat32 => {
            let at = 4 * cluster;
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                & 0x0FFF_FFFF
        }
    }
}

impl Fat {
    /// Decodes and checks the FAT bytes `bytes` (the active FAT, `geometry.fat_len` long).
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] for a FAT beyond 16 MiB; [`AreaError::Corrupt`] for an entry
    /// that points outside the volume or into a free or bad cluster, or a chain that loops.
    pub fn check(geometry: &Geometry, bytes: &[u8]) -> Result<Self, AreaError> {
        let fat_type = geometry.fat_type;
        let (bad, end) = match fat_type {
            FatType::Fat12 => (0xFF7, 0xFF8),
            FatType::Fat16 => (0xFFF7, 0xFFF8),
            FatType::Fat32 => (0x0FFF_FFF7, 0x0FFF_FFF8),
        };
        let max = geometry.max_cluster();
        // Geometry::parse checked the FAT has an entry for every cluster.
        let count = max as usize + 1;
        let mut links = Vec::with_capacity(count);
        for cluster in 0..count {
            let raw = raw_entry(bytes, fat_type, cluster);
            links.push(match raw {
                _ if cluster < 2 => Link::End,
                0 => Link::Free,
                n if n == bad => Link::Bad,
                n if n >= end => Link::End,
                n if (2..=max).contains(&n) => Link::Next(n),
                n => {
                    return Err(corrupt(format!(
                        "FAT: cluster {cluster} links to {n}, which is not a cluster of the volume"
                    )))
                }
            });
        }
        let fat = Fat { links };
        fat.check_chains()?;
        Ok(fat)
    }

    /// Every link leads to a used cluster and no chain loops: one pass, colouring each
    /// cluster "on the current path" and then "ends well", so each is walked once.
    fn check_chains(&self) -> Result<(), AreaError> {
        const UNSEEN: u8 = 0;
        const ON_PATH: u8 = 1;
        const ENDS: u8 = 2;
        let mut colour = vec![UNSEEN; self.links.len()];
        let mut path = Vec::new();
        for start in 2..self.links.len() {
            let mut at = start;
            while colour[at] == UNSEEN {
                colour[at] = ON_PATH;
                path.push(at);
                match self.links[at] {
                    Link::Next(next) => {
                        let next = next as usize;
                        match self.links[next] {
                            Link::Free | Link::Bad => {
                                return Err(corrupt(format!(
                                    "FAT: cluster {at} links to cluster {next}, which is {}",
                                    if self.links[next] == Link::Free {
                                        "free"
                                    } else {
                                        "marked bad"
                                    }
                                )))
                            }
                            _ => {}
                        }
                        if colour[next] == ON_PATH {
                            return Err(corrupt(format!(
                                "FAT: the cluster chain through cluster {next} loops"
                            )));
                        }
                        at = next;
                    }
                    Link::Free | Link::End | Link::Bad => break,
                }
            }
            for done in path.drain(..) {
                colour[done] = ENDS;
            }
        }
        Ok(())
    }

    /// Loads the active FAT of `geometry` through `read_at`.
    ///
    /// # Errors
    /// See [`Fat::check`], and whatever `read_at` returns.
    pub fn load(
        geometry: &Geometry,
        read_at: impl FnOnce(u64, &mut [u8]) -> Result<(), AreaError>,
    ) -> Result<Self, AreaError> {
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
        let mut bytes = vec![0u8; len as usize];
        read_at(geometry.fat_offset, &mut bytes)?;
        // raw_entry of the last FAT12 cluster reads one byte past its 12 bits.
        bytes.resize(len as usize + 2, 0);
        Self::check(geometry, &bytes)
    }

    /// The clusters of the chain that starts at `first`, in order, at most `limit` of them.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] if `first` is not a data cluster or is free or bad, or the
    /// chain is longer than `limit`.
    pub fn chain(&self, first: u32, limit: usize, what: &str) -> Result<Vec<u32>, AreaError> {
        let mut out = Vec::new();
        let mut at = first;
        loop {
            match self.links.get(at as usize) {
                Some(Link::Next(_) | Link::End) if at >= 2 => {}
                _ => {
                    return Err(corrupt(format!(
                        "{what} starts at cluster {first}, which holds no data"
                    )))
                }
            }
            if out.len() == limit {
                return Err(corrupt(format!("{what} has more clusters than it can use")));
            }
            out.push(at);
            match self.links[at as usize] {
                Link::Next(next) => at = next,
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn set12(fat: &mut [u8], cluster: usize, value: u16) {
        let at = cluster + cluster / 2;
        let mut pair = u16::from_le_bytes([fat[at], fat[at + 1]]);
        pair = if cluster.is_multiple_of(2) {
            (pair & 0xF000) | value
        } else {
            (pair & 0x000F) | (value << 4)
        };
        fat[at..at + 2].copy_from_slice(&pair.to_le_bytes());
    }

    fn table(links: &[(usize, u16)]) -> Vec<u8> {
        let mut fat = vec![0u8; 9 * 512 + 2];
        set12(&mut fat, 0, 0xFF0);
        set12(&mut fat, 1, 0xFFF);
        for &(cluster, value) in links {
            set12(&mut fat, cluster, value);
        }
        fat
    }

    #[test]
    fn follows_a_fat12_chain() {
        let g = fat12_geometry();
        let fat = Fat::check(&g, &table(&[(2, 3), (3, 7), (7, 0xFFF), (9, 0xFF8)])).unwrap();
        assert_eq!(fat.chain(2, 10, "f").unwrap(), vec![2, 3, 7]);
        assert_eq!(fat.chain(9, 10, "f").unwrap(), vec![9]);
        assert!(fat.chain(2, 2, "f").is_err());
        assert!(
            fat.chain(4, 10, "f").is_err(),
            "a free cluster starts no chain"
        );
        assert!(fat.chain(1, 10, "f").is_err());
        assert!(fat.chain(99_999, 10, "f").is_err());
    }

    #[test]
    fn rejects_loops_and_wild_links() {
        let g = fat12_geometry();
        let cases: [(&[(usize, u16)], &str); 5] = [
            (&[(2, 3), (3, 4), (4, 2)], "loops"),
            (&[(5, 5)], "loops"),
            (&[(2, 1)], "links to 1"),
            (&[(2, 3000)], "links to 3000"),
            (&[(2, 3)], "free"),
        ];
        for (links, needle) in cases {
            let err = Fat::check(&g, &table(links)).unwrap_err().to_string();
            assert!(err.contains(needle), "{links:?}: {err}");
        }
    }
}
