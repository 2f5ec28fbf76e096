//! Directory entries, defined once for the reader and the writer: the 32-byte short
//! (8.3) entry and the long-name (VFAT) entries before it, with their field offsets,
//! encoding and decoding, the short-name checksum that ties them together, DOS times,
//! and the names a person sees, decoded as Linux's vfat driver shows them.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::area::AreaError;

pub const ENTRY_LEN: usize = 32;
const ATTR_VOLUME: u8 = 0x08;
pub const ATTR_DIR: u8 = 0x10;
pub const ATTR_ARCHIVE: u8 = 0x20;
pub const ATTR_LFN: u8 = 0x0F;
const ATTR_READ_ONLY: u8 = 0x01;
/// Windows NT / Linux `shortname=mixed`: the base name or extension is lower case.
/// They let "notes.txt" be one entry instead of a long name and a short one.
pub const LOWER_BASE: u8 = 0x08;
pub const LOWER_EXT: u8 = 0x10;
/// A long name has at most 255 UTF-16 units: 20 entries of 13.
const MAX_LFN_ENTRIES: u8 = 20;
/// UTF-16 units in one long-name entry.
pub const LONG_UNITS: usize = 13;
/// Where those units sit in a long-name entry.
const LONG_UNIT_AT: [usize; LONG_UNITS] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// In a long-name entry's order byte: this is the last part (stored first).
const LONG_LAST: u8 = 0x40;
/// The first name byte of a deleted entry, and of the end marker.
const DELETED: u8 = 0xE5;
const END: u8 = 0x00;

/// Byte offsets of the fields of a short entry (`NAME` is 11 bytes) and of a long-name
/// entry (`ORDER`, `ATTR`, `CHECKSUM`; the units at [`LONG_UNIT_AT`]).
pub mod field {
    pub const NAME: usize = 0;
    pub const ATTR: usize = 11;
    pub const CASE: usize = 12;
    pub const CREATE_TIME: usize = 14;
    pub const CREATE_DATE: usize = 16;
    pub const ACCESS_DATE: usize = 18;
    pub const CLUSTER_HI: usize = 20;
    pub const WRITE_TIME: usize = 22;
    pub const WRITE_DATE: usize = 24;
    pub const CLUSTER_LO: usize = 26;
    pub const SIZE: usize = 28;
    pub const ORDER: usize = 0;
    pub const CHECKSUM: usize = 13;
}

fn u16_at(e: &[u8; ENTRY_LEN], at: usize) -> u16 {
    u16::from_le_bytes([e[at], e[at + 1]])
}

/// The checksum of a short name that each of its long-name entries carries.
/// The checksum of a short name that each of its long-name entries carries.
pub fn short_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// A FAT date and time (local time is unknown to FAT; the host writes UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DosTime {
    date: u16,
    time: u16,
}

impl DosTime {
    /// Now.
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::from_unix(secs)
    }

    /// `secs` since 1970, clamped to what FAT holds (1980 to 2107).
    pub fn from_unix(secs: u64) -> Self {
        let secs = secs.clamp(315_532_800, 4_354_819_199);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Howard Hinnant's civil_from_days.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        let (hour, min, sec) = (
            (rem / 3600) as u16,
            (rem / 60 % 60) as u16,
            (rem % 60) as u16,
        );
        DosTime {
            date: ((year - 1980) << 9) | (month << 5) | day,
            time: (hour << 11) | (min << 5) | (sec / 2),
        }
    }
}

/// A short entry: `name` (11 stored bytes), attributes, case flags ([`LOWER_BASE`],
/// [`LOWER_EXT`]), first cluster, size, and `at` as its creation, access and write time.
pub fn encode_short(
    name: &[u8; 11],
    attr: u8,
    case: u8,
    cluster: u32,
    size: u32,
    at: DosTime,
) -> [u8; ENTRY_LEN] {
    let mut e = [0u8; ENTRY_LEN];
    e[field::NAME..field::NAME + 11].copy_from_slice(name);
    e[field::ATTR] = attr;
    e[field::CASE] = case;
    for pos in [field::CREATE_TIME, field::WRITE_TIME] {
        e[pos..pos + 2].copy_from_slice(&at.time.to_le_bytes());
    }
    for pos in [field::CREATE_DATE, field::ACCESS_DATE, field::WRITE_DATE] {
        e[pos..pos + 2].copy_from_slice(&at.date.to_le_bytes());
    }
    e[field::CLUSTER_HI..field::CLUSTER_HI + 2]
        .copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[field::CLUSTER_LO..field::CLUSTER_LO + 2].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[field::SIZE..field::SIZE + 4].copy_from_slice(&size.to_le_bytes());
    e
}

/// How many long-name entries a name of `units` UTF-16 units takes.
pub fn long_entries(units: usize) -> usize {
    units.div_ceil(LONG_UNITS)
}

/// Appends the long-name entries of `long` (UTF-16) for the short name `short`, last
/// part first, as they precede the short entry.
pub fn encode_long(long: &[u16], short: &[u8; 11], out: &mut Vec<u8>) {
    let sum = short_checksum(short);
    let count = long_entries(long.len());
    for ord in (1..=count).rev() {
        let mut e = [0u8; ENTRY_LEN];
        e[field::ORDER] = ord as u8 | if ord == count { LONG_LAST } else { 0 };
        e[field::ATTR] = ATTR_LFN;
        e[field::CHECKSUM] = sum;
        let first = (ord - 1) * LONG_UNITS;
        for (k, &pos) in LONG_UNIT_AT.iter().enumerate() {
            // After the name: one NUL, then 0xFFFF padding.
            let unit = match long.get(first + k) {
                Some(&u) => u,
                None if first + k == long.len() => 0,
                None => 0xFFFF,
            };
            e[pos..pos + 2].copy_from_slice(&unit.to_le_bytes());
        }
        out.extend_from_slice(&e);
    }
}

/// One file or directory, as its short entry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The name a person sees: the long name if a valid one precedes the short entry.
    pub name: String,
    /// The 11 bytes of the short name, as stored.
    pub short: [u8; 11],
    pub is_dir: bool,
    pub read_only: bool,
    pub first_cluster: u32,
    pub size: u32,
    /// Index of the short entry in its directory.
    pub index: usize,
}

/// The short name as text: `BASE.EXT`, with the NT lower-case flags applied. Bytes
/// beyond ASCII are in the guest's OEM code page, which the host does not know: they
/// become U+FFFD, as fatfs does.
fn short_name_text(short: &[u8; 11], case: u8) -> String {
    let part = |bytes: &[u8], lower: bool| -> String {
        let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        bytes[..end]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let b = if i == 0 && b == 0x05 { 0xE5 } else { b };
                match b {
                    0x20..=0x7E if lower => char::from(b.to_ascii_lowercase()),
                    0x20..=0x7E => char::from(b),
                    _ => char::REPLACEMENT_CHARACTER,
                }
            })
            .collect()
    };
    let base = part(&short[..8], case & LOWER_BASE != 0);
    let ext = part(&short[8..], case & LOWER_EXT != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Collects the long-name entries that precede a short entry.
#[derive(Default)]
struct LongName {
    units: Vec<u16>,
    /// The sequence number the next entry must have (they come last part first).
    expect: u8,
    checksum: u8,
    valid: bool,
}

impl LongName {
    fn push(&mut self, e: &[u8; ENTRY_LEN]) {
        let order = e[field::ORDER];
        let seq = order & 0x1F;
        if order & LONG_LAST != 0 {
            *self = LongName {
                units: vec![0xFFFF; LONG_UNITS * usize::from(seq)],
                expect: seq,
                checksum: e[field::CHECKSUM],
                valid: (1..=MAX_LFN_ENTRIES).contains(&seq),
            };
        } else if !self.valid || seq != self.expect || e[field::CHECKSUM] != self.checksum {
            self.valid = false;
            return;
        }
        if !self.valid || seq == 0 {
            self.valid = false;
            return;
        }
        let at = LONG_UNITS * usize::from(seq - 1);
        for (unit, &pos) in self.units[at..at + LONG_UNITS]
            .iter_mut()
            .zip(&LONG_UNIT_AT)
        {
            *unit = u16_at(e, pos);
        }
        self.expect = seq - 1;
    }

    /// The long name for the short entry `short`, if a complete, matching one was read.
    fn finish(&mut self, short: &[u8; 11]) -> Result<Option<String>, AreaError> {
        let taken = std::mem::take(self);
        if !taken.valid || taken.expect != 0 || taken.checksum != short_checksum(short) {
            return Ok(None);
        }
        let end = taken
            .units
            .iter()
            .position(|&u| u == 0)
            .unwrap_or(taken.units.len());
        if end == 0 {
            return Ok(None);
        }
        String::from_utf16(&taken.units[..end])
            .map(Some)
            .map_err(|_| AreaError::Corrupt {
                what: "a long file name that is not valid UTF-16".into(),
            })
    }
}

/// Parses a directory's bytes into its live entries (no `.`, `..`, volume label, deleted
/// or long-name entries), in on-disk order. `first_cluster_hi` is whether the high 16
/// bits of the first cluster count (FAT32 only).
///
/// # Errors
/// [`AreaError::Corrupt`] for a long name that is not valid UTF-16.
pub fn parse_dir(bytes: &[u8], first_cluster_hi: bool) -> Result<Vec<RawEntry>, AreaError> {
    let mut out = Vec::new();
    let mut long = LongName::default();
    for (index, e) in bytes.chunks_exact(ENTRY_LEN).enumerate() {
        let e: &[u8; ENTRY_LEN] = e.try_into().expect("chunks of ENTRY_LEN");
        match e[field::NAME] {
            END => break,
            DELETED => {
                long = LongName::default();
                continue;
            }
            _ => {}
        }
        let attr = e[field::ATTR];
        if attr & 0x3F == ATTR_LFN {
            long.push(e);
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[field::NAME..field::NAME + 11]);
        if attr & ATTR_VOLUME != 0 || short == *b".          " || short == *b"..         " {
            long = LongName::default();
            continue;
        }
        let name = match long.finish(&short)? {
            Some(name) => name,
            None => short_name_text(&short, e[field::CASE]),
        };
        let hi = if first_cluster_hi {
            u32::from(u16_at(e, field::CLUSTER_HI))
        } else {
            0
        };
        let size = &e[field::SIZE..field::SIZE + 4];
        out.push(RawEntry {
            name,
            short,
            is_dir: attr & ATTR_DIR != 0,
            read_only: attr & ATTR_READ_ONLY != 0,
            first_cluster: hi << 16 | u32::from(u16_at(e, field::CLUSTER_LO)),
            size: u32::from_le_bytes([size[0], size[1], size[2], size[3]]),
            index,
        });
    }
    Ok(out)
}

/// The 11 stored bytes of an 8.3 name given as `NAME.EXT` (upper case), if it is one.
pub fn short_form(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || ext.contains('.') {
        return None;
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(out.map(|b| b.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_entry(short: &[u8; 11], attr: u8, case: u8, cluster: u32, size: u32) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(short);
        e[11] = attr;
        e[12] = case;
        e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
        e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
        e[28..32].copy_from_slice(&size.to_le_bytes());
        e
    }

    fn long_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
        let mut units: Vec<u16> = name.encode_utf16().collect();
        units.push(0);
        while !units.len().is_multiple_of(13) {
            units.push(0xFFFF);
        }
        let parts = units.len() / 13;
        (1..=parts)
            .rev()
            .map(|seq| {
                let mut e = [0u8; 32];
                e[0] = seq as u8 | if seq == parts { 0x40 } else { 0 };
                e[11] = ATTR_LFN;
                e[13] = short_checksum(short);
                let chunk = &units[13 * (seq - 1)..13 * seq];
                let slots = (1..11)
                    .step_by(2)
                    .chain((14..26).step_by(2))
                    .chain((28..32).step_by(2));
                for (u, at) in chunk.iter().zip(slots) {
                    e[at..at + 2].copy_from_slice(&u.to_le_bytes());
                }
                e
            })
            .collect()
    }

    #[test]
    fn decodes_short_long_and_mixed_case_names() {
        let long_short = *b"A_VERY~1TXT";
        let mut dir = Vec::new();
        dir.extend(short_entry(b"NLXTP      ", ATTR_VOLUME, 0, 0, 0));
        dir.extend(short_entry(b".          ", ATTR_DIR, 0, 5, 0));
        dir.extend(short_entry(
            b"STATUS  BIN",
            0,
            LOWER_BASE | LOWER_EXT,
            0x1_0003,
            8192,
        ));
        for e in long_entries("a very long name, ünïcode.txt", &long_short) {
            dir.extend(e);
        }
        dir.extend(short_entry(&long_short, ATTR_READ_ONLY, 0, 7, 10));
        let mut deleted = short_entry(b"GONE    TXT", 0, 0, 9, 1);
        deleted[0] = 0xE5;
        dir.extend(deleted);
        dir.extend(short_entry(b"SUB        ", ATTR_DIR, 0, 8, 0));
        dir.extend([0u8; 32]);
        dir.extend(short_entry(b"AFTEREND   ", 0, 0, 9, 1));

        let fat32 = parse_dir(&dir, true).unwrap();
        let names: Vec<&str> = fat32.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["status.bin", "a very long name, ünïcode.txt", "SUB"]
        );
        assert_eq!(fat32[0].first_cluster, 0x1_0003);
        assert_eq!(fat32[0].size, 8192);
        assert!(fat32[1].read_only && !fat32[1].is_dir);
        assert!(fat32[2].is_dir);
        let fat16 = parse_dir(&dir, false).unwrap();
        assert_eq!(fat16[0].first_cluster, 3, "FAT16 ignores the high word");
    }

    #[test]
    fn ignores_a_long_name_with_a_wrong_checksum_or_order() {
        let short = *b"FOO     TXT";
        let mut wrong_sum = long_entries("foo-long.txt", b"OTHER   TXT");
        wrong_sum.push(short_entry(&short, 0, 0, 3, 1));
        assert_eq!(
            parse_dir(&wrong_sum.concat(), false).unwrap()[0].name,
            "FOO.TXT"
        );

        let mut parts = long_entries("a name of more than thirteen units.txt", &short);
        parts.swap(0, 1);
        parts.push(short_entry(&short, 0, 0, 3, 1));
        assert_eq!(
            parse_dir(&parts.concat(), false).unwrap()[0].name,
            "FOO.TXT"
        );
    }

    #[test]
    fn dos_time_of_a_known_instant() {
        // 2026-11-26 12:55:07 UTC.
        let t = DosTime::from_unix(1_795_697_707);
        assert_eq!(t.date, ((2026 - 1980) << 9) | (11 << 5) | 26);
        assert_eq!(t.time, (12 << 11) | (55 << 5) | 3);
        let now = DosTime::now();
        assert!(now.date >> 9 >= 2024 - 1980);
    }

    #[test]
    fn checksum_matches_the_specification() {
        // The specification's loop, written out.
        let name = b"AUTO_E~1SH ";
        let mut sum: u8 = 0;
        for &b in name {
            sum = (if sum & 1 != 0 { 0x80u8 } else { 0 })
                .wrapping_add(sum >> 1)
                .wrapping_add(b);
        }
        assert_eq!(short_checksum(name), sum);
    }

    #[test]
    fn what_is_encoded_decodes_the_same() {
        let short = *b"A_VERY~1TXT";
        let name = "a very long name, ünïcode.txt";
        let units: Vec<u16> = name.encode_utf16().collect();
        let mut dir = Vec::new();
        encode_long(&units, &short, &mut dir);
        assert_eq!(dir.len(), super::long_entries(units.len()) * ENTRY_LEN);
        let at = DosTime::from_unix(1_795_697_707);
        dir.extend(encode_short(&short, ATTR_ARCHIVE, 0, 0x1_0007, 12345, at));
        dir.extend(encode_short(b"SUB        ", ATTR_DIR, LOWER_BASE, 9, 0, at));
        let entries = parse_dir(&dir, true).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, name);
        assert_eq!(
            (entries[0].first_cluster, entries[0].size),
            (0x1_0007, 12345)
        );
        assert_eq!(entries[0].index, super::long_entries(units.len()));
        assert_eq!(entries[1].name, "sub");
        assert!(entries[1].is_dir);
    }

    #[test]
    fn short_forms() {
        assert_eq!(short_form("status.bin"), Some(*b"STATUS  BIN"));
        assert_eq!(short_form("nlxtp"), Some(*b"NLXTP      "));
        assert_eq!(short_form("toolongname.bin"), None);
        assert_eq!(short_form("a.b.c"), None);
    }
}
