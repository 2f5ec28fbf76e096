//! Short names for the long names of an upload: the 8.3 name a long name has as it
//! is (case kept by the NT flags), or one derived the way Linux and Windows derive it
//! (`LONGFI~1.TXT`), unique in its directory.

use std::collections::{HashMap, HashSet};

use super::entry::{LOWER_BASE, LOWER_EXT};

/// Characters a short name may hold besides A-Z and 0-9.
const SHORT_PUNCTUATION: &[u8] = b"$%'-_@~`!(){}^#&";

fn short_char(c: char) -> Option<u8> {
    let u = c.to_ascii_uppercase();
    let ok = u.is_ascii_uppercase()
        || u.is_ascii_digit()
        || (u.is_ascii() && SHORT_PUNCTUATION.contains(&(u as u8)));
    ok.then_some(u as u8)
}

/// `name` as an 8.3 name with nothing lost but case: its 11 stored bytes, and the case
/// flags if the case can be shown by flags (each part all lower or all upper case).
pub fn exact_short(name: &str) -> Option<([u8; 11], Option<u8>)> {
    let (base, ext) = match name.rfind('.') {
        Some(0) => return None,
        Some(dot) if dot + 1 == name.len() => return None,
        Some(dot) => (&name[..dot], &name[dot + 1..]),
        None => (name, ""),
    };
    if base.len() > 8 || ext.len() > 3 {
        return None;
    }
    let mut short = [b' '; 11];
    for (i, c) in base.chars().enumerate() {
        short[i] = short_char(c)?;
    }
    for (i, c) in ext.chars().enumerate() {
        short[8 + i] = short_char(c)?;
    }
    let case = |part: &str, flag: u8| {
        let lower = part.bytes().any(|b| b.is_ascii_lowercase());
        let upper = part.bytes().any(|b| b.is_ascii_uppercase());
        match (lower, upper) {
            (true, true) => None,
            (true, false) => Some(flag),
            _ => Some(0),
        }
    };
    let flags = case(base, LOWER_BASE)
        .zip(case(ext, LOWER_EXT))
        .map(|(b, e)| b | e);
    Some((short, flags))
}

/// The short names of one directory: unique, and derived from the long names the way
/// Linux and Windows derive them (`LONGFI~1.TXT`).
#[derive(Default)]
pub struct ShortNames {
    pub used: HashSet<[u8; 11]>,
    /// The next numeric tail to try, by basis: keeps a directory of thousands of similar
    /// names linear instead of quadratic.
    next_tail: HashMap<([u8; 6], [u8; 3]), u32>,
}

impl ShortNames {
    /// A short name for `name` with a numeric tail, not yet used in the directory.
    pub fn tailed(&mut self, name: &str) -> Option<[u8; 11]> {
        let trimmed = name.trim_start_matches('.');
        let (base, ext) = match trimmed.rfind('.') {
            Some(dot) => (&trimmed[..dot], &trimmed[dot + 1..]),
            None => (trimmed, ""),
        };
        let convert = |part: &str, out: &mut [u8]| {
            let mut n = 0;
            for c in part.chars().filter(|&c| c != ' ' && c != '.') {
                if n == out.len() {
                    break;
                }
                out[n] = short_char(c).unwrap_or(b'_');
                n += 1;
            }
            n
        };
        let mut basis = [b' '; 6];
        let mut basis_len = convert(base, &mut basis);
        if basis_len == 0 {
            basis[0] = b'_';
            basis_len = 1;
        }
        let mut ext3 = [b' '; 3];
        convert(ext, &mut ext3);
        let key = (basis, ext3);
        let start = self.next_tail.get(&key).copied().unwrap_or(1);
        for tail in start..=999_999 {
            let digits = tail.to_string();
            let keep = basis_len.min(7 - digits.len());
            let mut short = [b' '; 11];
            short[..keep].copy_from_slice(&basis[..keep]);
            short[keep] = b'~';
            short[keep + 1..keep + 1 + digits.len()].copy_from_slice(digits.as_bytes());
            short[8..].copy_from_slice(&ext3);
            if self.used.insert(short) {
                self.next_tail.insert(key, tail + 1);
                return Some(short);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_short_names_and_their_case() {
        assert_eq!(exact_short("a.txt"), Some((*b"A       TXT", Some(0x18))));
        assert_eq!(exact_short("README"), Some((*b"README     ", Some(0))));
        assert_eq!(exact_short("Notes.TXT"), Some((*b"NOTES   TXT", None)));
        assert_eq!(exact_short("x.Md"), Some((*b"X       MD ", None)));
        for long in [
            "auto_exec.sh",
            "a.b.c",
            ".hidden",
            "a b",
            "toolongname",
            "a.html",
            "é",
        ] {
            assert_eq!(exact_short(long), None, "{long}");
        }
    }

    #[test]
    fn tailed_short_names_are_unique_and_linear() {
        let mut names = ShortNames::default();
        assert_eq!(names.tailed("auto_exec.sh"), Some(*b"AUTO_E~1SH "));
        assert_eq!(names.tailed("auto_exec2.sh"), Some(*b"AUTO_E~2SH "));
        assert_eq!(names.tailed(".bashrc"), Some(*b"BASHRC~1   "));
        assert_eq!(names.tailed("a+b c.tar.gz"), Some(*b"A_BCTA~1GZ "));
        assert_eq!(names.tailed("Ünïcode"), Some(*b"_N_COD~1   "));
        let mut seen = HashSet::new();
        for i in 0..20_000 {
            let s = names.tailed(&format!("long file name {i}.data")).unwrap();
            assert!(seen.insert(s));
        }
        assert!(seen.contains(b"LONGF~99DAT"));
        assert!(seen.contains(b"LONG~999DAT"));
    }
}
