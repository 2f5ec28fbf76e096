//! The boot sector, parsed and checked before anything else reads the image.
//!
//! After [`Geometry::parse`] succeeds, every offset it hands out lies inside the image:
//! the FAT, the FAT12/16 root directory region and every cluster `2..=max_cluster`.

use crate::area::AreaError;

/// FAT entry width, decided as fatfs, Linux and the FAT specification do: by cluster count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit entries (fewer than 4085 clusters).
    Fat12,
    /// 16-bit entries (fewer than 65525 clusters).
    Fat16,
    /// 28-bit entries.
    Fat32,
}

impl FatType {
    /// 12, 16 or 32.
    pub fn bits(self) -> u8 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    fn from_clusters(clusters: u64) -> Self {
        if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        }
    }
}

/// The layout of a FAT volume, from a boot sector that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub(crate) fat_type: FatType,
    pub(crate) bytes_per_sector: u32,
    pub(crate) cluster_size: u32,
    pub(crate) fats: u8,
    pub(crate) root_entries: u16,
    pub(crate) media: u8,
    /// Byte offset of the FAT that readers use (the active one).
    pub(crate) fat_offset: u64,
    /// Byte offset of the first FAT; the others follow it, `fat_len` bytes apart.
    pub(crate) first_fat_offset: u64,
    /// FAT32: byte offset of the FSInfo sector (free-cluster hints).
    pub(crate) fs_info_offset: Option<u64>,
    pub(crate) fat_len: u64,
    /// FAT12/16: the fixed root directory region (offset, length in bytes).
    pub(crate) root_region: Option<(u64, u64)>,
    /// FAT32: the root directory's first cluster.
    pub(crate) root_cluster: u32,
    pub(crate) data_offset: u64,
    pub(crate) clusters: u32,
    pub(crate) total_sectors: u32,
    pub(crate) volume_id: Option<u32>,
    pub(crate) label: Option<[u8; 11]>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn corrupt(what: impl Into<String>) -> AreaError {
    AreaError::Corrupt {
        what: format!("boot sector: {}", what.into()),
    }
}

/// Length of the boot sector fields we read.
pub const BOOT_SECTOR_LEN: usize = 512;

impl Geometry {
    /// Checks the boot sector `sector` (the image's first 512 bytes) against an image of
    /// `image_len` bytes.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] naming the first field that is out of range or inconsistent.
    pub fn parse(sector: &[u8; BOOT_SECTOR_LEN], image_len: u64) -> Result<Self, AreaError> {
        let b = &sector[..];
        if b[510] != 0x55 || b[511] != 0xAA {
            return Err(corrupt("no 55 AA signature, so this is not a FAT volume"));
        }
        let bytes_per_sector = u32::from(u16_at(b, 11));
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(corrupt(format!("{bytes_per_sector} bytes per sector")));
        }
        let sectors_per_cluster = u32::from(b[13]);
        if !sectors_per_cluster.is_power_of_two() || sectors_per_cluster > 128 {
            return Err(corrupt(format!(
                "{sectors_per_cluster} sectors per cluster"
            )));
        }
        let cluster_size = bytes_per_sector * sectors_per_cluster;
        if cluster_size > 64 * 1024 {
            return Err(corrupt(format!("clusters of {cluster_size} bytes")));
        }
        let reserved = u64::from(u16_at(b, 14));
        if reserved == 0 {
            return Err(corrupt("no reserved sectors"));
        }
        let fats = b[16];
        if !(1..=2).contains(&fats) {
            return Err(corrupt(format!("{fats} FATs")));
        }
        let root_entries = u16_at(b, 17);
        let total16 = u32::from(u16_at(b, 19));
        let total32 = u32_at(b, 32);
        let total_sectors = match (total16, total32) {
            (0, 0) => return Err(corrupt("a total sector count of 0")),
            (0, n) => n,
            (n, 0) => n,
            (_, _) => return Err(corrupt("two different total sector counts")),
        };
        let spf16 = u32::from(u16_at(b, 22));
        let is_fat32 = spf16 == 0;
        let sectors_per_fat = if is_fat32 { u32_at(b, 36) } else { spf16 };
        if sectors_per_fat == 0 {
            return Err(corrupt("a FAT of 0 sectors"));
        }
        if is_fat32 && (root_entries != 0 || total16 != 0) {
            return Err(corrupt("FAT32 fields mixed with FAT12/16 fields"));
        }
        if !is_fat32 && root_entries == 0 {
            return Err(corrupt("an empty FAT12/16 root directory region"));
        }
        let bps = u64::from(bytes_per_sector);
        let root_dir_sectors = (u64::from(root_entries) * 32).div_ceil(bps);
        let fat_sectors = u64::from(sectors_per_fat);
        let first_data_sector = reserved + u64::from(fats) * fat_sectors + root_dir_sectors;
        let total = u64::from(total_sectors);
        if total <= first_data_sector {
            return Err(corrupt("no room for a data region"));
        }
        if total * bps > image_len {
            return Err(corrupt(format!(
                "a volume of {} bytes in an image of {image_len} bytes",
                total * bps
            )));
        }
        let clusters = (total - first_data_sector) / u64::from(sectors_per_cluster);
        if clusters == 0 {
            return Err(corrupt("no data clusters"));
        }
        let fat_type = FatType::from_clusters(clusters);
        if is_fat32 != (fat_type == FatType::Fat32) {
            return Err(corrupt(format!(
                "{clusters} clusters, which does not match the FAT{} layout of its fields",
                if is_fat32 { 32 } else { 16 }
            )));
        }
        if clusters > 0x0FFF_FFF5 {
            return Err(corrupt(format!("{clusters} clusters")));
        }
        let fat_len = fat_sectors * bps;
        let entries_in_fat = fat_len * 8 / u64::from(fat_type.bits());
        if entries_in_fat < clusters + 2 {
            return Err(corrupt(format!(
                "a FAT with {entries_in_fat} entries for {clusters} clusters"
            )));
        }
        let mut active_fat = 0;
        let mut root_cluster = 0;
        let mut fs_info_offset = None;
        if is_fat32 {
            let ext_flags = u16_at(b, 40);
            if ext_flags & 0x80 != 0 {
                active_fat = u64::from(ext_flags & 0x0F);
                if active_fat >= u64::from(fats) {
                    return Err(corrupt(format!("active FAT {active_fat} of {fats}")));
                }
            }
            if u16_at(b, 42) != 0 {
                return Err(corrupt("an unknown FAT32 version"));
            }
            root_cluster = u32_at(b, 44);
            if root_cluster < 2 || u64::from(root_cluster) > clusters + 1 {
                return Err(corrupt(format!("root directory cluster {root_cluster}")));
            }
            let fs_info = u64::from(u16_at(b, 48));
            let backup = u64::from(u16_at(b, 50));
            if fs_info == 0 || fs_info >= reserved || backup >= reserved {
                return Err(corrupt("FSInfo or backup sector outside the reserved area"));
            }
            fs_info_offset = Some(fs_info * bps);
        }
        let (ext_at, label_at) = if is_fat32 { (66, 71) } else { (38, 43) };
        let (volume_id, label) = if matches!(b[ext_at], 0x28 | 0x29) {
            let mut label = [0u8; 11];
            label.copy_from_slice(&b[label_at..label_at + 11]);
            (
                Some(u32_at(b, ext_at + 1)),
                (b[ext_at] == 0x29).then_some(label),
            )
        } else {
            (None, None)
        };
        let fat_offset = (reserved + active_fat * fat_sectors) * bps;
        let root_start = (reserved + u64::from(fats) * fat_sectors) * bps;
        Ok(Geometry {
            fat_type,
            bytes_per_sector,
            cluster_size,
            fats,
            root_entries,
            media: b[21],
            fat_offset,
            first_fat_offset: reserved * bps,
            fs_info_offset,
            fat_len,
            root_region: (!is_fat32).then_some((root_start, u64::from(root_entries) * 32)),
            root_cluster,
            data_offset: first_data_sector * bps,
            // Checked above: at most 0x0FFF_FFF5.
            clusters: clusters as u32,
            total_sectors,
            volume_id,
            label,
        })
    }

    /// The highest valid cluster number.
    pub fn max_cluster(&self) -> u32 {
        self.clusters + 1
    }

    /// Whether `cluster` names a data cluster of this volume.
    pub fn is_data_cluster(&self, cluster: u32) -> bool {
        (2..=self.max_cluster()).contains(&cluster)
    }

    /// Byte offset of a data cluster; `cluster` must satisfy [`Geometry::is_data_cluster`].
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        debug_assert!(self.is_data_cluster(cluster));
        self.data_offset + u64::from(cluster - 2) * u64::from(self.cluster_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 boot sector for a 16 MiB volume, as mkfs.vfat writes it.
    fn fat16() -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&4u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&512u16.to_le_bytes());
        b[19..21].copy_from_slice(&32768u16.to_le_bytes());
        b[21] = 0xF8;
        b[22..24].copy_from_slice(&32u16.to_le_bytes());
        b[38] = 0x29;
        b[39..43].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        b[43..54].copy_from_slice(b"NLXTP      ");
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn parses_a_plain_fat16_sector() {
        let g = Geometry::parse(&fat16(), 16 << 20).unwrap();
        assert_eq!(g.fat_type, FatType::Fat16);
        assert_eq!(g.cluster_size, 2048);
        assert_eq!(g.fat_offset, 4 * 512);
        assert_eq!(g.root_region, Some(((4 + 64) * 512, 512 * 32)));
        assert_eq!(g.data_offset, (4 + 64 + 32) * 512);
        assert_eq!(g.clusters, (32768 - 100) / 4);
        assert_eq!(g.volume_id, Some(0x1234_5678));
        assert_eq!(&g.label.unwrap(), b"NLXTP      ");
    }

    fn rejects(change: impl FnOnce(&mut [u8; 512]), image_len: u64, needle: &str) {
        let mut b = fat16();
        change(&mut b);
        let err = Geometry::parse(&b, image_len).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }

    #[test]
    fn rejects_each_broken_field() {
        rejects(|b| b[510] = 0, 16 << 20, "55 AA");
        rejects(|b| b[12] = 0, 16 << 20, "bytes per sector");
        rejects(|b| b[13] = 3, 16 << 20, "sectors per cluster");
        rejects(|b| b[14] = 0, 16 << 20, "reserved");
        rejects(|b| b[16] = 7, 16 << 20, "7 FATs");
        rejects(|b| b[17..19].fill(0), 16 << 20, "root directory");
        rejects(|b| b[19..21].fill(0), 16 << 20, "total sector count of 0");
        rejects(|b| b[32] = 1, 16 << 20, "two different");
        rejects(|_| {}, 8 << 20, "in an image of");
        rejects(
            |b| b[22..24].copy_from_slice(&1u16.to_le_bytes()),
            16 << 20,
            "entries for",
        );
        // 16 MiB of 512-byte clusters is FAT16 by count but claims FAT32 layout.
        rejects(|b| b[22..24].fill(0), 16 << 20, "FAT32 fields");
    }
}
