//! Formatting with fatfs: a new volume, or one laid out as an old one was. fatfs only
//! ever sees a volume the host is formatting itself, through a [`BlockSource`].

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use fatfs::FormatVolumeOptions;
use nlxtp_core::layout::DEFAULT_VOLUME_LABEL;

use super::block::{BlockSource, Cursor};
use super::geometry::{FatType, Geometry};
use crate::area::AreaError;

/// Runs a fatfs call, turning a panic inside the crate into an error.
///
/// With `panic = "abort"` a panic ends the process instead; the host feeds fatfs only
/// volumes it formatted itself, so a panic would be a bug in the crate, not an attack.
fn guarded<T>(what: &str, f: impl FnOnce() -> io::Result<T>) -> Result<io::Result<T>, AreaError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| AreaError::Corrupt {
        what: format!("the FAT library failed while it {what}"),
    })
}

/// fatfs's name for a FAT type.
pub fn fatfs_type(fat_type: FatType) -> fatfs::FatType {
    match fat_type {
        FatType::Fat12 => fatfs::FatType::Fat12,
        FatType::Fat16 => fatfs::FatType::Fat16,
        FatType::Fat32 => fatfs::FatType::Fat32,
    }
}

/// A volume id for a new volume: not secret, only different from other volumes'.
pub fn fresh_volume_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u32) ^ ((nanos >> 32) as u32) ^ std::process::id().rotate_left(16)
}

/// The label's 11 stored bytes, or `None` if it is not 1-11 characters of what a FAT
/// label may hold (upper-case ASCII letters, digits, space and `_-`).
pub fn label_bytes(label: &str) -> Option<[u8; 11]> {
    let ok = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b" _-".contains(&b);
    if label.is_empty() || label.len() > 11 || !label.bytes().all(ok) || label.starts_with(' ') {
        return None;
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Some(out)
}

/// Formats `volume` with fatfs (which sees it through a [`Cursor`]); `what` says what
/// the call did, for the message if fatfs panics.
///
/// # Errors
/// The outer error: fatfs panicked; the inner one: fatfs's own.
pub fn format(
    volume: &dyn BlockSource,
    options: FormatVolumeOptions,
    what: &str,
) -> Result<io::Result<()>, AreaError> {
    guarded(what, || fatfs::format_volume(Cursor::new(volume), options))
}

/// Formats `volume` as the old volume was laid out; if fatfs cannot reproduce that
/// layout, with fatfs's own choice for the FAT type the old volume had.
///
/// # Errors
/// [`AreaError::Io`] if neither worked, [`AreaError::Corrupt`] if fatfs panicked.
pub fn format_like(volume: &dyn BlockSource, old: &Geometry) -> Result<(), AreaError> {
    let label = old
        .label
        .unwrap_or_else(|| label_bytes(DEFAULT_VOLUME_LABEL).expect("a valid default label"));
    let base = FormatVolumeOptions::new()
        .bytes_per_sector(old.bytes_per_sector as u16)
        .total_sectors(old.total_sectors)
        .volume_label(label)
        .volume_id(old.volume_id.unwrap_or_else(fresh_volume_id));
    let mut same = base
        .clone()
        .fat_type(fatfs_type(old.fat_type))
        .bytes_per_cluster(old.cluster_size)
        .fats(old.fats)
        .media(old.media);
    if old.fat_type != FatType::Fat32 {
        same = same.max_root_dir_entries(old.root_entries);
    }
    let mut last = None;
    for options in [same, base.fat_type(fatfs_type(old.fat_type))] {
        match format(volume, options, "formatted the new image")? {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(AreaError::io(
        "format a copy of",
        Path::new("the image"),
        last.unwrap_or_else(|| io::Error::other("no format attempted")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(label_bytes("NLXTP"), Some(*b"NLXTP      "));
        assert_eq!(label_bytes("A_B-1 2"), Some(*b"A_B-1 2    "));
        for bad in ["", "nlxtp", "TWELVECHARSX", " X", "Ä"] {
            assert_eq!(label_bytes(bad), None, "{bad:?}");
        }
    }
}
