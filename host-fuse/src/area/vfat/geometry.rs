//! The boot sector, parsed and checked before anything else reads the image.
//!
//! After [`Geometry::parse`] succeeds, every offset it hands out lies inside the image:
//! the FAT, the FAT12/16 root directory region and every cluster `2..=max_cluster`.

use super::block::BlockSource;
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

fn u16_at(b: &[u8; BOOT_SECTOR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; BOOT_SECTOR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn corrupt(what: impl Into<String>) -> AreaError {
    AreaError::Corrupt {
        what: format!("boot sector: {}", what.into()),
    }
}

/// Length of the boot sector fields we read.
pub const BOOT_SECTOR_LEN: usize = 512;

/// Byte offsets of the boot sector's fields (the BIOS parameter block).
mod field {
    pub const BYTES_PER_SECTOR: usize = 11;
    pub const SECTORS_PER_CLUSTER: usize = 13;
    pub const RESERVED_SECTORS: usize = 14;
    pub const FATS: usize = 16;
    pub const ROOT_ENTRIES: usize = 17;
    pub const TOTAL_SECTORS_16: usize = 19;
    pub const MEDIA: usize = 21;
    pub const SECTORS_PER_FAT_16: usize = 22;
    pub const TOTAL_SECTORS_32: usize = 32;
    /// FAT32 only, from here on.
    pub const SECTORS_PER_FAT_32: usize = 36;
    pub const EXT_FLAGS: usize = 40;
    pub const FS_VERSION: usize = 42;
    pub const ROOT_CLUSTER: usize = 44;
    pub const FS_INFO_SECTOR: usize = 48;
    pub const BACKUP_BOOT_SECTOR: usize = 50;
    /// The extended boot signature (0x28 or 0x29), FAT12/16 and FAT32; the volume id
    /// follows it, and (0x29 only) the label after the id.
    pub const EXT_SIGNATURE_16: usize = 38;
    pub const EXT_SIGNATURE_32: usize = 66;
    pub const SIGNATURE: usize = 510;
}

/// The fields that say how big things are, each checked on its own.
struct Bpb {
    bytes_per_sector: u32,
    sectors_per_cluster: u32,
    reserved: u64,
    fats: u8,
    root_entries: u16,
    total_sectors: u32,
    sectors_per_fat: u32,
    is_fat32: bool,
}

impl Bpb {
    fn read(b: &[u8; BOOT_SECTOR_LEN]) -> Result<Self, AreaError> {
        if b[field::SIGNATURE] != 0x55 || b[field::SIGNATURE + 1] != 0xAA {
            return Err(corrupt("no 55 AA signature, so this is not a FAT volume"));
        }
        let bytes_per_sector = u32::from(u16_at(b, field::BYTES_PER_SECTOR));
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(corrupt(format!("{bytes_per_sector} bytes per sector")));
        }
        let sectors_per_cluster = u32::from(b[field::SECTORS_PER_CLUSTER]);
        if !sectors_per_cluster.is_power_of_two() || sectors_per_cluster > 128 {
            return Err(corrupt(format!(
                "{sectors_per_cluster} sectors per cluster"
            )));
        }
        let cluster_size = bytes_per_sector * sectors_per_cluster;
        if cluster_size > 64 * 1024 {
            return Err(corrupt(format!("clusters of {cluster_size} bytes")));
        }
        let reserved = u64::from(u16_at(b, field::RESERVED_SECTORS));
        if reserved == 0 {
            return Err(corrupt("no reserved sectors"));
        }
        let fats = b[field::FATS];
        if !(1..=2).contains(&fats) {
            return Err(corrupt(format!("{fats} FATs")));
        }
        let root_entries = u16_at(b, field::ROOT_ENTRIES);
        let total16 = u32::from(u16_at(b, field::TOTAL_SECTORS_16));
        let total_sectors = match (total16, u32_at(b, field::TOTAL_SECTORS_32)) {
            (0, 0) => return Err(corrupt("a total sector count of 0")),
            (0, n) => n,
            (n, 0) => n,
            (_, _) => return Err(corrupt("two different total sector counts")),
        };
        let spf16 = u32::from(u16_at(b, field::SECTORS_PER_FAT_16));
        let is_fat32 = spf16 == 0;
        let sectors_per_fat = if is_fat32 {
            u32_at(b, field::SECTORS_PER_FAT_32)
        } else {
            spf16
        };
        if sectors_per_fat == 0 {
            return Err(corrupt("a FAT of 0 sectors"));
        }
        if is_fat32 && (root_entries != 0 || total16 != 0) {
            return Err(corrupt("FAT32 fields mixed with FAT12/16 fields"));
        }
        if !is_fat32 && root_entries == 0 {
            return Err(corrupt("an empty FAT12/16 root directory region"));
        }
        Ok(Bpb {
            bytes_per_sector,
            sectors_per_cluster,
            reserved,
            fats,
            root_entries,
            total_sectors,
            sectors_per_fat,
            is_fat32,
        })
    }
}

/// Where the regions are, from checked fields.
struct Regions {
    first_data_sector: u64,
    clusters: u64,
    fat_type: FatType,
}

impl Regions {
    fn of(bpb: &Bpb, image_len: u64) -> Result<Self, AreaError> {
        let bps = u64::from(bpb.bytes_per_sector);
        let root_dir_sectors = (u64::from(bpb.root_entries) * 32).div_ceil(bps);
        let fat_sectors = u64::from(bpb.sectors_per_fat);
        let first_data_sector = bpb.reserved + u64::from(bpb.fats) * fat_sectors + root_dir_sectors;
        let total = u64::from(bpb.total_sectors);
        if total <= first_data_sector {
            return Err(corrupt("no room for a data region"));
        }
        if total * bps > image_len {
            return Err(corrupt(format!(
                "a volume of {} bytes in an image of {image_len} bytes",
                total * bps
            )));
        }
        let clusters = (total - first_data_sector) / u64::from(bpb.sectors_per_cluster);
        if clusters == 0 {
            return Err(corrupt("no data clusters"));
        }
        let fat_type = FatType::from_clusters(clusters);
        if bpb.is_fat32 != (fat_type == FatType::Fat32) {
            return Err(corrupt(format!(
                "{clusters} clusters, which does not match the FAT{} layout of its fields",
                if bpb.is_fat32 { 32 } else { 16 }
            )));
        }
        if clusters > 0x0FFF_FFF5 {
            return Err(corrupt(format!("{clusters} clusters")));
        }
        let entries_in_fat = fat_sectors * bps * 8 / u64::from(fat_type.bits());
        if entries_in_fat < clusters + 2 {
            return Err(corrupt(format!(
                "a FAT with {entries_in_fat} entries for {clusters} clusters"
            )));
        }
        Ok(Regions {
            first_data_sector,
            clusters,
            fat_type,
        })
    }
}

/// FAT32's own fields: the active FAT, the root directory's cluster, FSInfo's sector.
struct Fat32Fields {
    active_fat: u64,
    root_cluster: u32,
    fs_info_sector: u64,
}

impl Fat32Fields {
    fn read(b: &[u8; BOOT_SECTOR_LEN], bpb: &Bpb, clusters: u64) -> Result<Self, AreaError> {
        let ext_flags = u16_at(b, field::EXT_FLAGS);
        let mut active_fat = 0;
        if ext_flags & 0x80 != 0 {
            active_fat = u64::from(ext_flags & 0x0F);
            if active_fat >= u64::from(bpb.fats) {
                return Err(corrupt(format!("active FAT {active_fat} of {}", bpb.fats)));
            }
        }
        if u16_at(b, field::FS_VERSION) != 0 {
            return Err(corrupt("an unknown FAT32 version"));
        }
        let root_cluster = u32_at(b, field::ROOT_CLUSTER);
        if root_cluster < 2 || u64::from(root_cluster) > clusters + 1 {
            return Err(corrupt(format!("root directory cluster {root_cluster}")));
        }
        let fs_info = u64::from(u16_at(b, field::FS_INFO_SECTOR));
        let backup = u64::from(u16_at(b, field::BACKUP_BOOT_SECTOR));
        if fs_info == 0 || fs_info >= bpb.reserved || backup >= bpb.reserved {
            return Err(corrupt("FSInfo or backup sector outside the reserved area"));
        }
        Ok(Fat32Fields {
            active_fat,
            root_cluster,
            fs_info_sector: fs_info,
        })
    }
}

/// The volume id and, if the boot sector has one, the label.
fn id_and_label(b: &[u8; BOOT_SECTOR_LEN], is_fat32: bool) -> (Option<u32>, Option<[u8; 11]>) {
    let ext_at = if is_fat32 {
        field::EXT_SIGNATURE_32
    } else {
        field::EXT_SIGNATURE_16
    };
    if !matches!(b[ext_at], 0x28 | 0x29) {
        return (None, None);
    }
    let mut label = [0u8; 11];
    label.copy_from_slice(&b[ext_at + 5..ext_at + 16]);
    (
        Some(u32_at(b, ext_at + 1)),
        (b[ext_at] == 0x29).then_some(label),
    )
}

impl Geometry {
    /// Reads the boot sector of the volume in `source` and checks it.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] for a source too short or a bad boot sector; those of
    /// reading `source`.
    pub fn read(source: &dyn BlockSource) -> Result<Self, AreaError> {
        let len = source.len();
        if len < BOOT_SECTOR_LEN as u64 {
            return Err(AreaError::Corrupt {
                what: format!("an image of {len} bytes, too short for a boot sector"),
            });
        }
        let mut sector = [0u8; BOOT_SECTOR_LEN];
        source.read_at(0, &mut sector)?;
        Geometry::parse(&sector, len)
    }

    /// Checks the boot sector `sector` (the image's first 512 bytes) against an image of
    /// `image_len` bytes.
    ///
    /// # Errors
    /// [`AreaError::Corrupt`] naming the first field that is out of range or inconsistent.
    pub fn parse(sector: &[u8; BOOT_SECTOR_LEN], image_len: u64) -> Result<Self, AreaError> {
        let bpb = Bpb::read(sector)?;
        let regions = Regions::of(&bpb, image_len)?;
        let fat32 = if bpb.is_fat32 {
            Some(Fat32Fields::read(sector, &bpb, regions.clusters)?)
        } else {
            None
        };
        let (volume_id, label) = id_and_label(sector, bpb.is_fat32);
        let bps = u64::from(bpb.bytes_per_sector);
        let fat_sectors = u64::from(bpb.sectors_per_fat);
        let active_fat = fat32.as_ref().map_or(0, |f| f.active_fat);
        let root_start = (bpb.reserved + u64::from(bpb.fats) * fat_sectors) * bps;
        Ok(Geometry {
            fat_type: regions.fat_type,
            bytes_per_sector: bpb.bytes_per_sector,
            cluster_size: bpb.bytes_per_sector * bpb.sectors_per_cluster,
            fats: bpb.fats,
            root_entries: bpb.root_entries,
            media: sector[field::MEDIA],
            fat_offset: (bpb.reserved + active_fat * fat_sectors) * bps,
            first_fat_offset: bpb.reserved * bps,
            fs_info_offset: fat32.as_ref().map(|f| f.fs_info_sector * bps),
            fat_len: fat_sectors * bps,
            root_region: (!bpb.is_fat32).then_some((root_start, u64::from(bpb.root_entries) * 32)),
            root_cluster: fat32.as_ref().map_or(0, |f| f.root_cluster),
            data_offset: regions.first_data_sector * bps,
            // Checked in Regions::of: at most 0x0FFF_FFF5.
            clusters: regions.clusters as u32,
            total_sectors: bpb.total_sectors,
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
