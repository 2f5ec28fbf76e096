//! Directory entries: short (8.3) entries, long-name (VFAT) entries, and the names a
//! person sees, decoded as Linux's vfat driver shows them.

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

fn short_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
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
    fn push(&mut self, e: &[u8]) {
        let order = e[0];
        let seq = order & 0x1F;
        if order & 0x40 != 0 {
            *self = LongName {
                units: vec![0xFFFF; 13 * usize::from(seq)],
                expect: seq,
                checksum: e[13],
                valid: (1..=MAX_LFN_ENTRIES).contains(&seq),
            };
        } else if !self.valid || seq != self.expect || e[13] != self.checksum {
            self.valid = false;
            return;
        }
        if !self.valid || seq == 0 {
            self.valid = false;
            return;
        }
        let at = 13 * usize::from(seq - 1);
        let pieces = [&e[1..11], &e[14..26], &e[28..32]];
        let mut i = at;
        for piece in pieces {
            for pair in piece.chunks_exact(2) {
                self.units[i] = u16::from_le_bytes([pair[0], pair[1]]);
                i += 1;
            }
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
        match e[0] {
            0x00 => break,
            0xE5 => {
                long = LongName::default();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == ATTR_LFN {
            long.push(e);
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        if attr & ATTR_VOLUME != 0 || short == *b".          " || short == *b"..         " {
            long = LongName::default();
            continue;
        }
        let name = match long.finish(&short)? {
            Some(name) => name,
            None => short_name_text(&short, e[12]),
        };
        let hi = if first_cluster_hi {
            u32::from(u16::from_le_bytes([e[20], e[21]]))
        } else {
            0
        };
        out.push(RawEntry {
            name,
            short,
            is_dir: attr & ATTR_DIR != 0,
            read_only: attr & ATTR_READ_ONLY != 0,
            first_cluster: hi << 16 | u32::from(u16::from_le_bytes([e[26], e[27]])),
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
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
    fn short_forms() {
        assert_eq!(short_form("status.bin"), Some(*b"STATUS  BIN"));
        assert_eq!(short_form("nlxtp"), Some(*b"NLXTP      "));
        assert_eq!(short_form("toolongname.bin"), None);
        assert_eq!(short_form("a.b.c"), None);
    }
}
