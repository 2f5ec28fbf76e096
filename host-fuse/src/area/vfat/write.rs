//! Upload: build a fresh image beside the live one and rename it over.
//!
//! The live image is never written. The host takes QEMU's lock bytes on it
//! ([`ImageWriteGuard`]), creates a temporary file in the same directory with the same
//! length, formats it with fatfs keeping the old volume's layout, label and volume id,
//! lays the new files into it in one pass (`build.rs`; [`START_SCRIPT`] is the root's
//! last entry), fsyncs it, renames it over the image and fsyncs the directory. A crash
//! before the rename leaves the old image (and a stray `.nlxtp-upload-*.img` file, which
//! a later upload into the same directory removes once it is stale); after it, the new
//! one.
//!
//! Why format instead of deleting the old files: the old content is the guest's, and
//! nothing that writes should walk hostile structures (a looped directory chain hangs
//! fatfs, a bad FAT entry panics it). Formatting means the writer only ever sees a volume
//! the host made itself; of the old image only the boot sector is read, by the host's own
//! checked parser.
//!
//! Locks: the guard on the old image is held from before the first read to after the
//! directory fsync. The new file is locked too (same bytes) before it is renamed, and
//! stays locked until the rename is durable: so at every moment, whichever inode the
//! image path names is locked, and no QEMU can start on the new image before it is
//! complete and on disk, nor on the old one while it is being replaced. A second upload
//! racing this one gets [`AreaError::Busy`] instead of interleaving.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fatfs::FormatVolumeOptions;
use nlxtp_core::layout::{DEFAULT_VOLUME_LABEL, START_SCRIPT};

use super::block::ImageFile;
use super::build;
use super::geometry::{FatType, Geometry};
use super::lock::ImageWriteGuard;
use crate::area::{AreaError, AreaPath, Durability, UploadData, UploadFile};

/// Runs a fatfs call, turning a panic inside the crate into an error.
///
/// With `panic = "abort"` a panic ends the process instead; the host feeds fatfs only
/// volumes it formatted itself, so a panic would be a bug in the crate, not an attack.
pub(crate) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> io::Result<T>,
) -> Result<io::Result<T>, AreaError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| AreaError::Corrupt {
        what: format!("the FAT library failed while it {what}"),
    })
}

/// Files in the order they are written, directories first (parents before children),
/// the start script last. Every parent of a file is among `dirs`; names are valid vFAT
/// long names, unique ignoring case.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) dirs: Vec<AreaPath>,
    pub(super) files: Vec<(AreaPath, UploadData)>,
}

/// Why a name cannot be a vFAT long file name (as fatfs and Linux's vfat accept them).
fn bad_vfat_name(name: &str) -> Option<String> {
    if name.len() > 255 {
        return Some(format!("a name of {} bytes, more than 255", name.len()));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Some("a name ending in '.' or ' ', which vFAT drops".into());
    }
    name.chars()
        .find(|&c| {
            !(c.is_ascii_alphanumeric()
                // Not C1 controls; not U+FFFF, which is padding in a long name.
                || ('\u{A0}'..='\u{FFFD}').contains(&c)
                || "$%'-_@~`!(){}. +,;=[]^#&".contains(c))
        })
        .map(|c| format!("the character {c:?}, which vFAT cannot hold"))
}

/// A name as vFAT compares it, for collisions: fatfs matches names upper-cased (so
/// "straße" opens "STRASSE"), the reader lower-cased; folding both ways catches both.
fn fold(name: &str) -> String {
    name.to_uppercase().to_lowercase()
}

impl Plan {
    fn new(files: Vec<UploadFile>) -> Result<Self, AreaError> {
        // Every path and each of its parents, keyed by the case-folded path.
        let mut seen: HashMap<String, (AreaPath, bool)> = HashMap::new();
        let mut dirs = BTreeMap::new();
        let mut plan = Plan::default();
        let mut script = None;
        for file in files {
            let path = file.path;
            let bad = path.components().find_map(bad_vfat_name);
            if let Some(reason) = bad {
                return Err(AreaError::BadName { path, reason });
            }
            let is_dir = matches!(file.data, UploadData::Dir);
            let mut ancestors = Vec::new();
            let mut at = path.parent();
            while let Some(p) = at {
                at = p.parent();
                ancestors.push(p);
            }
            for (p, dir) in ancestors
                .into_iter()
                .map(|p| (p, true))
                .chain([(path.clone(), is_dir)])
            {
                match seen.get(&fold(p.as_str())) {
                    None => {
                        if dir {
                            dirs.insert((p.components().count(), p.as_str().to_owned()), p.clone());
                        }
                        seen.insert(fold(p.as_str()), (p, dir));
                    }
                    // A parent shared by several files, or a directory named twice.
                    Some((other, true)) if dir && *other == p => {}
                    Some((other, other_dir)) if *other == p && *other_dir != dir => {
                        return Err(AreaError::BadName {
                            path: path.clone(),
                            reason: format!("{p} is both a file and a directory"),
                        })
                    }
                    Some((other, _)) => {
                        return Err(AreaError::NameCollision {
                            first: other.clone(),
                            second: p,
                        })
                    }
                }
            }
            if is_dir {
                continue;
            }
            if path.as_str() == START_SCRIPT {
                script = Some((path, file.data));
            } else {
                plan.files.push((path, file.data));
            }
        }
        plan.dirs = dirs.into_values().collect();
        plan.files.extend(script);
        Ok(plan)
    }
}

pub(crate) fn fatfs_type(fat_type: FatType) -> fatfs::FatType {
    match fat_type {
        FatType::Fat12 => fatfs::FatType::Fat12,
        FatType::Fat16 => fatfs::FatType::Fat16,
        FatType::Fat32 => fatfs::FatType::Fat32,
    }
}

/// A volume id for a new volume: not secret, only different from other volumes'.
pub(crate) fn fresh_volume_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u32) ^ ((nanos >> 32) as u32) ^ std::process::id().rotate_left(16)
}

/// The label's 11 stored bytes, or `None` if it is not 1-11 characters of what a FAT
/// label may hold (upper-case ASCII letters, digits, space and `_-`).
pub(crate) fn label_bytes(label: &str) -> Option<[u8; 11]> {
    let ok = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b" _-".contains(&b);
    if label.is_empty() || label.len() > 11 || !label.bytes().all(ok) || label.starts_with(' ') {
        return None;
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Some(out)
}

/// Formats `file` as the old volume was laid out; if fatfs cannot reproduce that layout,
/// with fatfs's own choice for the FAT type the old volume had.
fn format_like(file: &mut File, old: &Geometry) -> Result<(), AreaError> {
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
        rewind(file)?;
        match guarded("formatted the new image", || {
            fatfs::format_volume(&mut *file, options)
        })? {
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

fn rewind(file: &mut File) -> Result<(), AreaError> {
    file.seek(SeekFrom::Start(0))
        .map(|_| ())
        .map_err(|e| AreaError::io("seek in", Path::new("the new image"), e))
}

/// Replaces the content of the image at `image` with `files` (see the module docs).
///
/// # Errors
/// See [`SharedArea::replace`](crate::area::SharedArea::replace).
pub fn replace(
    image: &Path,
    files: Vec<UploadFile>,
    durability: Durability,
) -> Result<(), AreaError> {
    let plan = Plan::new(files)?;
    let guard = ImageWriteGuard::acquire(image)?;
    replace_guarded(image, &guard, plan, durability).map(drop)
}

/// [`SharedArea::replace`](crate::area::SharedArea::replace) for a caller that already holds the image's `guard` and keeps the image
/// guarded throughout: no QEMU can start on it before, during or after. Returns the
/// guard on the new image; on an error, `guard` comes back (the image is unchanged).
///
/// # Errors
/// As [`SharedArea::replace`](crate::area::SharedArea::replace), with the guard.
pub fn replace_holding(
    image: &Path,
    guard: ImageWriteGuard,
    files: Vec<UploadFile>,
    durability: Durability,
) -> Result<ImageWriteGuard, (AreaError, ImageWriteGuard)> {
    let plan = match Plan::new(files) {
        Ok(plan) => plan,
        Err(e) => return Err((e, guard)),
    };
    match replace_guarded(image, &guard, plan, durability) {
        Ok(new) => Ok(new),
        Err(e) => Err((e, guard)),
    }
}

/// The upload under `guard`; returns the guard on the new image, taken before the rename.
fn replace_guarded(
    image: &Path,
    guard: &ImageWriteGuard,
    plan: Plan,
    durability: Durability,
) -> Result<ImageWriteGuard, AreaError> {
    let old = ImageFile::from_file(
        guard
            .file()
            .try_clone()
            .map_err(|e| AreaError::io("open", image, e))?,
        image,
    )?;
    let geometry = Geometry::read(&old)?;
    let meta = old
        .file()
        .metadata()
        .map_err(|e| AreaError::io("inspect", image, e))?;
    let dir = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(|e| AreaError::io("create a temporary image in", dir, e))?;
    let temp_path = temp.path().to_owned();
    let mut file = temp
        .as_file()
        .try_clone()
        .map_err(|e| AreaError::io("open", &temp_path, e))?;
    let temp_guard = ImageWriteGuard::lock(
        file.try_clone()
            .map_err(|e| AreaError::io("open", &temp_path, e))?,
        &temp_path,
    )?;
    file.set_len(meta.len())
        .map_err(|e| AreaError::io("size", &temp_path, e))?;
    format_like(&mut file, &geometry)?;
    let fresh = Geometry::read(&ImageFile::from_file(
        file.try_clone()
            .map_err(|e| AreaError::io("open", &temp_path, e))?,
        &temp_path,
    )?)?;
    build::write_plan(&file, &fresh, plan, &temp_path, durability)?;
    file.set_permissions(meta.permissions())
        .map_err(|e| AreaError::io("set the permissions of", &temp_path, e))?;
    let mine = file
        .metadata()
        .map_err(|e| AreaError::io("inspect", &temp_path, e))?;
    if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| AreaError::io("give the old owner to", &temp_path, e))?;
    }
    let synced = durability == Durability::Synced;
    if synced {
        file.sync_all()
            .map_err(|e| AreaError::io("flush", &temp_path, e))?;
    }
    temp.persist(image)
        .map_err(|e| AreaError::io("rename the new image over", image, e.error))?;
    if synced {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| AreaError::io("flush the directory", dir, e))?;
    }
    let removed = remove_leftovers(dir);
    if removed > 0 {
        tracing::info!("removed {removed} temporary image(s) of killed uploads");
    }
    Ok(temp_guard)
}

/// What a temporary image's name starts and ends with.
const TEMP_PREFIX: &str = ".nlxtp-upload-";
const TEMP_SUFFIX: &str = ".img";

/// A temporary image not written for this long, and not locked, is a killed upload's.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// Removes the temporary images killed uploads left in `dir`: those no upload holds
/// (each holds its own, see the module docs) and that have not been written for
/// [`STALE_AFTER`] (which covers the moment between a temporary image's creation and its
/// lock). Best effort: returns how many went.
fn remove_leftovers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let stale = entry
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        let path = entry.path();
        // Taking its lock is the check that no upload still writes it.
        if stale {
            if let Ok(_held) = ImageWriteGuard::acquire(&path) {
                removed += usize::from(std::fs::remove_file(&path).is_ok());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(paths: &[&str]) -> Vec<UploadFile> {
        paths
            .iter()
            .map(|p| UploadFile::bytes(p, b"x".to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn plans_dirs_first_and_the_start_script_last() {
        let plan = Plan::new(files(&["auto_exec.sh", "b/c/d.txt", "a.txt", "b/e"])).unwrap();
        let dirs: Vec<&str> = plan.dirs.iter().map(AreaPath::as_str).collect();
        assert_eq!(dirs, ["b", "b/c"]);
        let order: Vec<&str> = plan.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["b/c/d.txt", "a.txt", "b/e", "auto_exec.sh"]);
    }

    #[test]
    fn rejects_what_vfat_cannot_hold() {
        for (paths, needle) in [
            (&["a/B.txt", "a/b.TXT"][..], "would be the same file"),
            (&["straße", "STRASSE"], "would be the same file"),
            (&["Dir/x", "dir/y"], "would be the same file"),
            (&["x", "x"], "would be the same file"),
            (&["x", "x/y"], "both a file and a directory"),
            (&["x/y", "x"], "both a file and a directory"),
            (&["a:b"], "':'"),
            (&["ok/what?"], "'?'"),
            (&["trailing."], "ending in"),
            (&["emoji\u{1F600}"], "cannot hold"),
            (&["c1\u{85}control"], "cannot hold"),
            (&["pad\u{FFFF}"], "cannot hold"),
        ] {
            let err = Plan::new(files(paths)).unwrap_err().to_string();
            assert!(err.contains(needle), "{paths:?}: {err}");
        }
        let long = "n".repeat(256);
        assert!(Plan::new(files(&[&long])).is_err());
        assert!(Plan::new(files(&["Dir/x", "Dir/y", "dir2/z"])).is_ok());
    }

    #[test]
    fn labels() {
        assert_eq!(label_bytes("NLXTP"), Some(*b"NLXTP      "));
        assert_eq!(label_bytes("A_B-1 2"), Some(*b"A_B-1 2    "));
        for bad in ["", "nlxtp", "TWELVECHARSX", " X", "Ä"] {
            assert_eq!(label_bytes(bad), None, "{bad:?}");
        }
    }
}
