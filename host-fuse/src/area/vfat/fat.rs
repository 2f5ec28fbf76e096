//! The file allocation table, loaded whole, decoded on demand, checked whole on request.
//!
//! [`Fat::chain`] is bounded on its own: it follows at most `limit` links and refuses a
//! link to a cluster outside the volume or to a free or bad one, so any chain, even a
//! looped one, ends in a result or an error after `limit` steps. [`Fat::check`]
//! additionally checks every entry and every chain (none loops), for walks over the
//! whole volume; the status locate skips it to stay fast.

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
    /// A value that names no cluster of the volume (1, or beyond the last cluster).
    Wild(u32),
}

/// The FAT of one volume.
#[derive(Debug)]
pub struct Fat {
    bytes: Vec<u8>,
    fat_type: FatType,
    max: u32,
}

fn corrupt(what: String) -> AreaError {
    AreaError::Corrupt { what }
}

impl Fat {
    /// Wraps the FAT bytes `bytes` of a volume of `geometry`, which must hold an entry for
    /// every cluster up to `geometry.max_cluster()` plus two spare bytes.
    fn new(geometry: &Geometry, bytes: Vec<u8>) -> Self {
        Fat {
            bytes,
            fat_type: geometry.fat_type,
            max: geometry.max_cluster(),
        }
    }

    fn link(&self, cluster: u32) -> Link {
        if cluster < 2 || cluster > self.max {
            return Link::Wild(cluster);
        }
        let b = &self.bytes;
        let c = cluster as usize;
        let (raw, bad, end) = match self.fat_type {
            FatType::Fat12 => {
                let at = c + c / 2;
                let pair = u16::from_le_bytes([b[at], b[at + 1]]);
                let raw = if c.is_multiple_of(2) {
                    pair & 0x0FFF
                } else {
                    pair >> 4
                };
                (u32::from(raw), 0xFF7, 0xFF8)
            }
            FatType::Fat16 => (
                u32::from(u16::from_le_bytes([b[2 * c], b[2 * c + 1]])),
                0xFFF7,
                0xFFF8,
            ),
            FatType::Fat32 => {
                let at = 4 * c;
                let raw =
                    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) & 0x0FFF_FFFF;
                (raw, 0x0FFF_FFF7, 0x0FFF_FFF8)
            }
        };
        match raw {
            0 => Link::Free,
            n if n == bad => Link::Bad,
            n if n >= end => Link::End,
            n if (2..=self.max).contains(&n) => Link::Next(n),
            n => Link::Wild(n),
        }
    }

    /// Checks every entry of the FAT and every chain in it.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for an entry that points outside the volume or into a free
    /// or bad cluster, or a chain that loops.
    pub fn check(&self) -> Result<(), AreaError> {
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
                match self.link(at) {
                    Link::Next(next) => {
                        match self.link(next) {
                            Link::Free | Link::Bad => {
                                return Err(corrupt(format!(
                                    "FAT: cluster {at} links to cluster {next}, which is {}",
                                    if self.link(next) == Link::Free {
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

    /// Loads the active FAT of `geometry` through `read_at`, unchecked.
    ///
    /// # Errors
    /// [`AreaError::TooLarge`] for a FAT beyond 16 MiB, and whatever `read_at` returns.
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
        // The entry of the last FAT12 cluster reads one byte past its 12 bits.
        bytes.resize(len as usize + 2, 0);
        Ok(Self::new(geometry, bytes))
    }

    /// The clusters of the chain that starts at `first`, in order, at most `limit` of them.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] if `first` or a link is not a data cluster in use, or the
    /// chain is longer than `limit` (which is what a loop looks like).
    pub fn chain(&self, first: u32, limit: usize, what: &str) -> Result<Vec<u32>, AreaError> {
        let mut out = Vec::new();
        let mut at = first;
        loop {
            let link = self.link(at);
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
        let fat = Fat::new(&g, table(&[(2, 3), (3, 7), (7, 0xFFF), (9, 0xFF8)]));
        fat.check().unwrap();
        assert_eq!(fat.chain(2, 10, "f").unwrap(), vec![2, 3, 7]);
        assert_eq!(fat.chain(9, 10, "f").unwrap(), vec![9]);
        assert!(fat.chain(2, 2, "f").is_err());
        assert!(
            fat.chain(4, 10, "f").is_err(),
            "a free cluster starts no chain"
        );
        assert!(fat.chain(1, 10, "f").is_err());
        assert!(fat.chain(99_999, 10, "f").is_err());
        // Unchecked, a looped chain still ends: in an error after `limit` links.
        let looped = Fat::new(&g, table(&[(2, 3), (3, 2)]));
        let err = looped.chain(2, 100, "f").unwrap_err().to_string();
        assert!(err.contains("loops"), "{err}");
        let wild = Fat::new(&g, table(&[(2, 1)]));
        assert!(wild
            .chain(2, 100, "f")
            .unwrap_err()
            .to_string()
            .contains("links to 1"));
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
            let err = Fat::new(&g, table(links)).check().unwrap_err().to_string();
            assert!(err.contains(needle), "{links:?}: {err}");
        }
    }
}
