//! Where the FAT volume lies in a disk image: the whole image, or one partition of an
//! MBR or GPT partition table (the original testbed's disks, `virt-make-fs --partition`,
//! installers and Windows make partitioned disks).
//!
//! The table is the guest's, so it is hostile like everything else: entries past the
//! end of the image, overlapping entries, loops in the chain of extended partitions and
//! absurd GPT entry counts or sizes end in an [`AreaError::Corrupt`] naming the entry,
//! after bounded work (at most [`MAX_LOGICAL`] extended boot records, at most
//! [`MAX_GPT_ENTRIES`] GPT entries, every checksum checked).
//!
//! Which partition: the FAT one labelled NLXTP (the guest finds its disk by that label),
//! else the only FAT one; two candidates are an [`AreaError::AmbiguousVolume`] that
//! names them.

use std::fmt;

use nlxtp_core::layout::DEFAULT_VOLUME_LABEL;

use super::block::{BlockSource, Window};
use super::geometry::{FatType, Geometry, BOOT_SECTOR_LEN};
use crate::area::AreaError;

/// Sector size of partition tables (MBR and GPT on disks of 512-byte sectors).
pub const SECTOR: u64 = 512;
/// Logical partitions read at most in the chain of extended boot records.
pub const MAX_LOGICAL: usize = 128;
/// GPT entries read at most (the usual table has 128).
pub const MAX_GPT_ENTRIES: u32 = 1024;
/// The largest GPT entry accepted, in bytes (the usual entry has 128).
const MAX_GPT_ENTRY_LEN: u32 = 1024;

const MBR_TABLE: usize = 446;
const MBR_ENTRY_LEN: usize = 16;
const SIGNATURE: [u8; 2] = [0x55, 0xAA];
const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

/// Which kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A DOS (MBR) partition table, with extended partitions.
    Mbr,
    /// A GUID partition table.
    Gpt,
}

/// One partition of a disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its number as Linux counts it (`/dev/vdb1` is 1; logical MBR partitions from 5).
    pub number: u32,
    /// The table it is in.
    pub scheme: Scheme,
    /// Its first byte in the image.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The FAT volume in it, if there is one: its type and label.
    pub fat: Option<(FatType, String)>,
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} ({} MiB at {} KiB",
            self.number,
            self.len >> 20,
            self.offset >> 10
        )?;
        match &self.fat {
            Some((fat, label)) if label.is_empty() => write!(f, ", FAT{}, no label)", fat.bits()),
            Some((fat, label)) => write!(f, ", FAT{}, label {label})", fat.bits()),
            None => f.write_str(", not FAT)"),
        }
    }
}

/// Where the FAT volume of an image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePlace {
    /// Its first byte in the image.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The partition it fills, or `None` for a volume that is the whole image.
    pub partition: Option<Partition>,
}

/// The FAT volume in `disk` as a source of its own (see the module docs).
///
/// # Errors
/// As [`find_volume`].
pub fn volume_in<S: BlockSource>(disk: S) -> Result<Window<S>, AreaError> {
    let place = find_volume(&disk)?;
    Window::new(disk, place.offset, place.len)
}

/// Finds the FAT volume of `disk`: the whole image when it starts with a FAT boot
/// sector, else the partition the module docs describe.
///
/// # Errors
/// [`AreaError::Corrupt`] for an image that is neither a FAT volume nor a disk with a
/// valid partition table (the boot sector's own complaint, when there is no table), or a
/// table with no FAT partition; [`AreaError::AmbiguousVolume`]; those of reading `disk`.
pub fn find_volume(disk: &dyn BlockSource) -> Result<VolumePlace, AreaError> {
    let whole = Geometry::read(disk);
    let not_fat = match whole {
        Ok(_) => {
            return Ok(VolumePlace {
                offset: 0,
                len: disk.len(),
                partition: None,
            })
        }
        Err(e) => e,
    };
    if disk.len() < SECTOR {
        return Err(not_fat);
    }
    let mut sector = [0u8; BOOT_SECTOR_LEN];
    disk.read_at(0, &mut sector)?;
    let Some(partitions) = partitions(disk, &sector)? else {
        return Err(not_fat);
    };
    choose(disk, partitions)
}

/// The partitions of `disk`, whose first sector is `sector0`: `None` if it has no
/// partition table.
///
/// # Errors
/// [`AreaError::Corrupt`] for a table that is there but broken.
pub fn partitions(
    disk: &dyn BlockSource,
    sector0: &[u8; BOOT_SECTOR_LEN],
) -> Result<Option<Vec<Partition>>, AreaError> {
    let Some(entries) = mbr_entries(sector0) else {
        return Ok(None);
    };
    let mut found = if entries.iter().any(|e| e.kind == TYPE_GPT_PROTECTIVE) {
        gpt(disk)?
    } else {
        mbr(disk, &entries)?
    };
    for part in &mut found {
        part.fat = Window::new(disk, part.offset, part.len)
            .and_then(|w| Geometry::read(&w))
            .ok()
            .map(|g| (g.fat_type, label_text(g.label)));
    }
    check_overlaps(&found)?;
    Ok(Some(found))
}

/// A boot sector's label as text, without its padding.
fn label_text(raw: Option<[u8; 11]>) -> String {
    raw.map(|l| String::from_utf8_lossy(&l).trim_end().to_owned())
        .unwrap_or_default()
}

fn choose(disk: &dyn BlockSource, partitions: Vec<Partition>) -> Result<VolumePlace, AreaError> {
    let fat: Vec<&Partition> = partitions.iter().filter(|p| p.fat.is_some()).collect();
    let labelled: Vec<&Partition> = fat
        .iter()
        .copied()
        .filter(|p| {
            p.fat
                .as_ref()
                .is_some_and(|(_, label)| label.eq_ignore_ascii_case(DEFAULT_VOLUME_LABEL))
        })
        .collect();
    let candidates = if labelled.is_empty() { fat } else { labelled };
    match candidates.as_slice() {
        [one] => Ok(VolumePlace {
            offset: one.offset,
            len: one.len,
            partition: Some((*one).clone()),
        }),
        [] => Err(AreaError::Corrupt {
            what: format!(
                "{} has a partition table but no FAT partition: {}",
                disk.name().display(),
                list(&partitions)
            ),
        }),
        many => Err(AreaError::AmbiguousVolume {
            image: disk.name().into(),
            partitions: list(many.iter().copied()),
        }),
    }
}

fn list<'a>(partitions: impl IntoIterator<Item = &'a Partition>) -> String {
    let names: Vec<String> = partitions.into_iter().map(ToString::to_string).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// One entry of an MBR or extended boot record.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    kind: u8,
    start: u32,
    sectors: u32,
}

/// The four entries of a sector that holds an MBR partition table, or `None` if it does
/// not look like one (no signature, a status byte other than 0 or 0x80, no entry used).
fn mbr_entries(sector: &[u8; BOOT_SECTOR_LEN]) -> Option<[MbrEntry; 4]> {
    if sector[510..512] != SIGNATURE {
        return None;
    }
    let mut entries = [MbrEntry {
        kind: 0,
        start: 0,
        sectors: 0,
    }; 4];
    for (i, entry) in entries.iter_mut().enumerate() {
        let raw = &sector[MBR_TABLE + i * MBR_ENTRY_LEN..][..MBR_ENTRY_LEN];
        if !matches!(raw[0], 0x00 | 0x80) {
            return None;
        }
        *entry = MbrEntry {
            kind: raw[4],
            start: u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
            sectors: u32::from_le_bytes(raw[12..16].try_into().expect("4 bytes")),
        };
    }
    entries.iter().any(|e| e.kind != 0).then_some(entries)
}

/// A partition of `sectors` sectors at sector `start`, checked against the disk.
fn partition(
    disk: &dyn BlockSource,
    number: u32,
    scheme: Scheme,
    start: u64,
    sectors: u64,
) -> Result<Partition, AreaError> {
    let offset = start * SECTOR;
    let len = sectors * SECTOR;
    if start == 0 || sectors == 0 || offset.saturating_add(len) > disk.len() {
        return Err(AreaError::Corrupt {
            what: format!(
                "partition table: partition {number} ({sectors} sectors at sector {start}) lies outside the image of {} bytes",
                disk.len()
            ),
        });
    }
    Ok(Partition {
        number,
        scheme,
        offset,
        len,
        fat: None,
    })
}

fn mbr(disk: &dyn BlockSource, entries: &[MbrEntry; 4]) -> Result<Vec<Partition>, AreaError> {
    let mut found = Vec::new();
    let mut extended = None;
    for (i, e) in entries.iter().enumerate() {
        let number = i as u32 + 1;
        if e.kind == 0 {
            continue;
        }
        let part = partition(disk, number, Scheme::Mbr, e.start.into(), e.sectors.into())?;
        if EXTENDED_TYPES.contains(&e.kind) {
            if extended.replace(part).is_some() {
                return Err(AreaError::Corrupt {
                    what: "partition table: more than one extended partition".into(),
                });
            }
        } else {
            found.push(part);
        }
    }
    if let Some(ext) = extended {
        found.extend(logical(disk, &ext)?);
    }
    Ok(found)
}

/// The logical partitions in the extended partition `ext`: a chain of extended boot
/// records, each naming one partition and the next record.
fn logical(disk: &dyn BlockSource, ext: &Partition) -> Result<Vec<Partition>, AreaError> {
    let ext_start = ext.offset / SECTOR;
    let ext_end = ext_start + ext.len / SECTOR;
    let mut found = Vec::new();
    let mut seen = Vec::new();
    let mut record = ext_start;
    for number in 5.. {
        if found.len() >= MAX_LOGICAL || seen.contains(&record) {
            return Err(AreaError::Corrupt {
                what: format!(
                    "partition table: the chain of extended boot records loops or holds more than {MAX_LOGICAL} partitions"
                ),
            });
        }
        seen.push(record);
        let mut sector = [0u8; BOOT_SECTOR_LEN];
        disk.read_at(record * SECTOR, &mut sector)?;
        let Some([this, next, ..]) = mbr_entries(&sector) else {
            return Err(AreaError::Corrupt {
                what: format!("partition table: no valid extended boot record at sector {record}"),
            });
        };
        if this.kind != 0 {
            let start = record + u64::from(this.start);
            let part = partition(disk, number, Scheme::Mbr, start, this.sectors.into())?;
            if start < ext_start || start + u64::from(this.sectors) > ext_end {
                return Err(AreaError::Corrupt {
                    what: format!(
                        "partition table: logical partition {number} lies outside its extended partition"
                    ),
                });
            }
            found.push(part);
        }
        if next.kind == 0 || next.start == 0 {
            break;
        }
        record = ext_start + u64::from(next.start);
        if record >= ext_end {
            return Err(AreaError::Corrupt {
                what: format!(
                    "partition table: an extended boot record points past its extended partition (sector {record})"
                ),
            });
        }
    }
    Ok(found)
}

/// The partitions of the GUID partition table whose header is at sector 1.
fn gpt(disk: &dyn BlockSource) -> Result<Vec<Partition>, AreaError> {
    let corrupt = |what: String| AreaError::Corrupt {
        what: format!("GUID partition table: {what}"),
    };
    let mut header = [0u8; SECTOR as usize];
    if disk.len() < 3 * SECTOR {
        return Err(corrupt("the image is too short for one".into()));
    }
    disk.read_at(SECTOR, &mut header)?;
    if &header[..8] != GPT_SIGNATURE {
        return Err(corrupt("no header at sector 1".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let header_len = u32_at(12) as usize;
    if !(92..=SECTOR as usize).contains(&header_len) {
        return Err(corrupt(format!("a header of {header_len} bytes")));
    }
    let mut zeroed = header;
    zeroed[16..20].fill(0);
    if crc32(&zeroed[..header_len]) != u32_at(16) {
        return Err(corrupt("the header's checksum does not match".into()));
    }
    let (entries_lba, count, entry_len) = (u64_at(72), u32_at(80), u32_at(84));
    if count > MAX_GPT_ENTRIES
        || !(128..=MAX_GPT_ENTRY_LEN).contains(&entry_len)
        || !entry_len.is_power_of_two()
    {
        return Err(corrupt(format!(
            "{count} entries of {entry_len} bytes (at most {MAX_GPT_ENTRIES} entries of 128 to {MAX_GPT_ENTRY_LEN} bytes, a power of two)"
        )));
    }
    let table_len = u64::from(count) * u64::from(entry_len);
    let table_at = entries_lba.saturating_mul(SECTOR);
    if entries_lba < 2 || table_at.saturating_add(table_len) > disk.len() {
        return Err(corrupt(format!(
            "entries at sector {entries_lba} lie outside the image"
        )));
    }
    let mut table = vec![0u8; table_len as usize];
    disk.read_at(table_at, &mut table)?;
    if crc32(&table) != u32_at(88) {
        return Err(corrupt("the entries' checksum does not match".into()));
    }
    let mut found = Vec::new();
    for (i, entry) in table.chunks_exact(entry_len as usize).enumerate() {
        if entry[..16].iter().all(|&b| b == 0) {
            continue; // unused
        }
        let first = u64::from_le_bytes(entry[32..40].try_into().expect("8 bytes"));
        let last = u64::from_le_bytes(entry[40..48].try_into().expect("8 bytes"));
        let number = i as u32 + 1;
        if last < first {
            return Err(corrupt(format!("partition {number} ends before it starts")));
        }
        found.push(partition(
            disk,
            number,
            Scheme::Gpt,
            first,
            last - first + 1,
        )?);
    }
    Ok(found)
}

fn check_overlaps(partitions: &[Partition]) -> Result<(), AreaError> {
    let mut sorted: Vec<&Partition> = partitions.iter().collect();
    sorted.sort_by_key(|p| p.offset);
    for pair in sorted.windows(2) {
        if pair[0].offset + pair[0].len > pair[1].offset {
            return Err(AreaError::Corrupt {
                what: format!(
                    "partition table: partitions {} and {} overlap",
                    pair[0].number, pair[1].number
                ),
            });
        }
    }
    Ok(())
}

/// The CRC-32 of GPT headers and entries (IEEE, as zlib's).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(bytes)
}

/// Where [`write_table`] puts the partition: 1 MiB in, as partitioning tools do.
pub const FIRST_SECTOR: u64 = 2048;
/// GPT entries written (the usual table) and their length.
const GPT_ENTRIES: u32 = 128;
const GPT_ENTRY_LEN: u32 = 128;
/// Sectors the GPT entries take: 128 entries of 128 bytes.
const GPT_TABLE_SECTORS: u64 = (GPT_ENTRIES as u64 * GPT_ENTRY_LEN as u64) / SECTOR;
/// "Microsoft basic data", the type FAT partitions have in a GPT, in its on-disk order.
const GPT_BASIC_DATA: [u8; 16] = [
    0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
];

/// Writes a partition table of `scheme` with one partition for a FAT volume of
/// `fat_type` into `disk` (which the caller has just made, all zeros), from
/// [`FIRST_SECTOR`] to the end (a GPT keeps its backup in the last 33 sectors). `ids`
/// are 32 random bytes for the GPT's disk and partition GUIDs (or the MBR's disk id).
/// Returns where the partition is.
///
/// # Errors
/// [`AreaError::Corrupt`] if the disk is too small for a partition; those of writing.
pub fn write_table(
    disk: &dyn BlockSource,
    scheme: Scheme,
    fat_type: FatType,
    ids: [u8; 32],
) -> Result<VolumePlace, AreaError> {
    let place = table_region(disk.len(), scheme)?;
    let sectors = disk.len() / SECTOR;
    let count = place.len / SECTOR;
    let last = FIRST_SECTOR + count - 1;
    match scheme {
        Scheme::Mbr => {
            let kind = match fat_type {
                FatType::Fat12 => 0x01,
                FatType::Fat16 => 0x0E,
                FatType::Fat32 => 0x0C,
            };
            let mut mbr = [0u8; BOOT_SECTOR_LEN];
            mbr[440..444].copy_from_slice(&ids[..4]);
            mbr_entry(&mut mbr, 0, kind, FIRST_SECTOR, count);
            disk.write_at(0, &mbr)?;
        }
        Scheme::Gpt => write_gpt(disk, sectors, last, ids)?,
    }
    Ok(place)
}

/// Where [`write_table`] puts the partition on a disk of `disk_len` bytes.
///
/// # Errors
/// [`AreaError::Corrupt`] if the disk is too small for a partition.
pub fn table_region(disk_len: u64, scheme: Scheme) -> Result<VolumePlace, AreaError> {
    let sectors = disk_len / SECTOR;
    let last = match scheme {
        Scheme::Mbr => sectors.saturating_sub(1),
        Scheme::Gpt => sectors.saturating_sub(2 + GPT_TABLE_SECTORS),
    };
    if last < FIRST_SECTOR + 64 {
        return Err(AreaError::Corrupt {
            what: format!("an image of {disk_len} bytes is too small for a partition 1 MiB in"),
        });
    }
    Ok(VolumePlace {
        offset: FIRST_SECTOR * SECTOR,
        len: (last - FIRST_SECTOR + 1) * SECTOR,
        partition: None,
    })
}

fn mbr_entry(mbr: &mut [u8; BOOT_SECTOR_LEN], i: usize, kind: u8, start: u64, sectors: u64) {
    let entry = &mut mbr[MBR_TABLE + i * MBR_ENTRY_LEN..][..MBR_ENTRY_LEN];
    // CHS fields say "use the LBA fields" (0xFE 0xFF 0xFF), as tools write them today.
    entry[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    entry[4] = kind;
    entry[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    entry[8..12].copy_from_slice(&clamp(start).to_le_bytes());
    entry[12..16].copy_from_slice(&clamp(sectors).to_le_bytes());
    mbr[510..512].copy_from_slice(&SIGNATURE);
}

fn write_gpt(
    disk: &dyn BlockSource,
    sectors: u64,
    last: u64,
    ids: [u8; 32],
) -> Result<(), AreaError> {
    let mut protective = [0u8; BOOT_SECTOR_LEN];
    mbr_entry(&mut protective, 0, TYPE_GPT_PROTECTIVE, 1, sectors - 1);
    disk.write_at(0, &protective)?;

    let mut table = vec![0u8; (GPT_TABLE_SECTORS * SECTOR) as usize];
    table[..16].copy_from_slice(&GPT_BASIC_DATA);
    table[16..32].copy_from_slice(&guid(&ids[16..32]));
    table[32..40].copy_from_slice(&FIRST_SECTOR.to_le_bytes());
    table[40..48].copy_from_slice(&last.to_le_bytes());
    for (i, unit) in DEFAULT_VOLUME_LABEL.encode_utf16().enumerate() {
        table[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    let backup_table = sectors - 1 - GPT_TABLE_SECTORS;
    for (me, other, entries) in [(1, sectors - 1, 2), (sectors - 1, 1, backup_table)] {
        let mut header = [0u8; SECTOR as usize];
        header[..8].copy_from_slice(GPT_SIGNATURE);
        header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        header[12..16].copy_from_slice(&92u32.to_le_bytes());
        header[24..32].copy_from_slice(&me.to_le_bytes());
        header[32..40].copy_from_slice(&other.to_le_bytes());
        header[40..48].copy_from_slice(&(2 + GPT_TABLE_SECTORS).to_le_bytes());
        header[48..56].copy_from_slice(&last.to_le_bytes());
        header[56..72].copy_from_slice(&guid(&ids[..16]));
        header[72..80].copy_from_slice(&entries.to_le_bytes());
        header[80..84].copy_from_slice(&GPT_ENTRIES.to_le_bytes());
        header[84..88].copy_from_slice(&GPT_ENTRY_LEN.to_le_bytes());
        header[88..92].copy_from_slice(&crc32(&table).to_le_bytes());
        let crc = crc32(&header[..92]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        disk.write_at(entries * SECTOR, &table)?;
        disk.write_at(me * SECTOR, &header)?;
    }
    Ok(())
}

/// 16 random bytes as a version 4 GUID.
fn guid(random: &[u8]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&random[..16]);
    g[7] = (g[7] & 0x0F) | 0x40;
    g[8] = (g[8] & 0x3F) | 0x80;
    g
}
