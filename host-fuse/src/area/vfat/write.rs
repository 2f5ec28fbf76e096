//! Upload: build a fresh image beside the live one and rename it over.
//!
//! The live image is never written. The host takes QEMU's lock bytes on it
//! ([`ImageWriteGuard`]), creates a temporary file in the same directory with the same
//! length, formats it with fatfs keeping the old volume's layout, label and volume id,
//! writes the new files ([`START_SCRIPT`] last), flushes and fsyncs it, renames it over
//! the image and fsyncs the directory. A crash before the rename leaves the old image
//! (and a stray `.nlxtp-upload-*` file); after it, the new one.
//!
//! Why format instead of deleting the old files: the old content is the guest's, and
//! fatfs must never walk hostile structures (a looped directory chain hangs it, a bad
//! FAT entry panics it). Formatting means fatfs only ever sees a volume the host made
//! itself; of the old image only the boot sector is read, by the host's own checked
//! parser.
//!
//! Locks: the guard on the old image is held from before the first read to after the
//! directory fsync. The new file is locked too (same bytes) before it is renamed, and
//! stays locked until the rename is durable: so at every moment, whichever inode the
//! image path names is locked, and no QEMU can start on the new image before it is
//! complete and on disk, nor on the old one while it is being replaced. A second upload
//! racing this one gets [`AreaError::Busy`] instead of interleaving.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};
use nlxtp_core::layout::{DEFAULT_VOLUME_LABEL, START_SCRIPT};

use super::geometry::{FatType, Geometry};
use super::lock::ImageWriteGuard;
use super::page_cache::PageCached;
use super::volume::{read_geometry, Image, Volume};
use crate::area::{AreaError, AreaPath, UploadData, UploadFile};

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

/// Files in the order they are written, directories first, the start script last.
#[derive(Debug, Default)]
struct Plan {
    dirs: Vec<AreaPath>,
    files: Vec<(AreaPath, UploadData)>,
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
                || ('\u{80}'..='\u{FFFF}').contains(&c)
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

    /// Bytes the plan takes in whole clusters: each file rounded up, one cluster per
    /// directory, and the directory entries (up to 21 of 32 bytes per name).
    fn needed(&self, cluster: u64) -> u64 {
        let files: u64 = self
            .files
            .iter()
            .map(|(_, d)| d.len().div_ceil(cluster) * cluster)
            .sum();
        let names = (self.files.len() + self.dirs.len()) as u64 * 21 * 32;
        files + self.dirs.len() as u64 * cluster + names.div_ceil(cluster) * cluster
    }
}

/// fatfs's clock: the host's UTC time (the FAT format has no time zone).
#[derive(Debug)]
struct UtcClock;

static UTC: UtcClock = UtcClock;

impl UtcClock {
    fn now() -> fatfs::DateTime {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // FAT dates run from 1980 to 2107.
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
        fatfs::DateTime {
            date: fatfs::Date { year, month, day },
            time: fatfs::Time {
                hour: (rem / 3600) as u16,
                min: (rem / 60 % 60) as u16,
                sec: (rem % 60) as u16,
                millis: 0,
            },
        }
    }
}

impl fatfs::TimeProvider for UtcClock {
    fn get_current_date(&self) -> fatfs::Date {
        Self::now().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        Self::now()
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

/// Writes `plan` into the freshly formatted volume in `file`.
fn fill(file: &mut File, plan: Plan, temp: &Path) -> Result<(), AreaError> {
    rewind(file)?;
    let io_err = |what: &'static str| move |e: io::Error| AreaError::io(what, temp, e);
    let options = FsOptions::new().time_provider(&UTC);
    // fatfs reads and writes a field at a time: give it a page cache.
    let mut buffered = PageCached::new(&mut *file).map_err(io_err("inspect"))?;
    let fs = guarded("mounted the new image", || {
        FileSystem::new(&mut buffered, options)
    })?
    .map_err(io_err("mount the new image"))?;
    let stats =
        guarded("counted free space", || fs.stats())?.map_err(io_err("count free space in"))?;
    let cluster = u64::from(stats.cluster_size());
    let available = u64::from(stats.free_clusters()) * cluster;
    let needed = plan.needed(cluster);
    if needed > available {
        return Err(AreaError::NoSpace { needed, available });
    }
    let root = fs.root_dir();
    for dir in &plan.dirs {
        guarded("created a directory", || {
            root.create_dir(dir.as_str()).map(|_| ())
        })?
        .map_err(io_err("create a directory in"))?;
    }
    for (path, data) in plan.files {
        let mut out = guarded("created a file", || root.create_file(path.as_str()))?
            .map_err(io_err("create a file in"))?;
        let len = data.len();
        let copied = match data {
            UploadData::Dir => 0,
            UploadData::Bytes(bytes) => {
                guarded("wrote a file", || out.write_all(&bytes))?.map_err(io_err("write"))?;
                len
            }
            UploadData::Reader { reader, len } => {
                let mut source = reader.take(len);
                copy_into(&mut source, &mut out, &path, temp)?
            }
        };
        if copied < len {
            return Err(AreaError::ShortSource {
                path,
                got: copied,
                len,
            });
        }
        guarded("flushed a file", || out.flush())?.map_err(io_err("write"))?;
    }
    drop(root);
    guarded("unmounted the new image", || fs.unmount())?.map_err(io_err("finish"))?;
    buffered.finish().map_err(io_err("finish"))?;
    Ok(())
}

/// Copies `source` into a fatfs file; errors reading `source` are the upload's, errors
/// writing are the image's.
fn copy_into(
    source: &mut dyn Read,
    out: &mut impl Write,
    path: &AreaPath,
    temp: &Path,
) -> Result<u64, AreaError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(AreaError::Sink {
                    source: io::Error::new(e.kind(), format!("reading the upload's {path}: {e}")),
                })
            }
        };
        guarded("wrote a file", || out.write_all(&buf[..n]))?
            .map_err(|e| AreaError::io("write", temp, e))?;
        total += n as u64;
    }
}

/// fatfs 0.3 writes a long-name entry before the `.` and `..` entries of every directory
/// it creates, so they are not in the first two slots where the FAT specification (and
/// fsck.vfat) wants them, and points `..` of a FAT32 top-level directory at the root's
/// cluster instead of 0. Moves them into place and marks the long-name slots deleted;
/// no other entry moves.
fn fix_dot_entries(file: &File, temp: &Path, max_dirs: usize) -> Result<(), AreaError> {
    use std::os::unix::fs::FileExt;
    let volume = Volume::open(temp)?;
    for (cluster, parent) in volume.directories(max_dirs)? {
        let at = volume.geometry.cluster_offset(cluster);
        let mut slots = [0u8; 128];
        volume.image.read_at(at, &mut slots)?;
        let lfn = |i: usize| slots[32 * i + 11] == 0x0F;
        let named = |i: usize, name: &[u8; 11]| &slots[32 * i..32 * i + 11] == name;
        if !(lfn(0) && named(1, b".          ") && lfn(2) && named(3, b"..         ")) {
            continue;
        }
        let mut fixed = [0u8; 128];
        fixed[..32].copy_from_slice(&slots[32..64]);
        fixed[32..64].copy_from_slice(&slots[96..128]);
        fixed[64..128].copy_from_slice(&slots[64..128]);
        fixed[64] = 0xE5;
        fixed[96] = 0xE5;
        // `..` of a top-level directory: cluster 0, whatever the root's cluster is.
        let parent = parent.to_le_bytes();
        fixed[32 + 20..32 + 22].copy_from_slice(&parent[2..4]);
        fixed[32 + 26..32 + 28].copy_from_slice(&parent[0..2]);
        file.write_all_at(&fixed, at)
            .map_err(|e| AreaError::io("write", temp, e))?;
    }
    Ok(())
}

/// Replaces the content of the image at `image` with `files` (see the module docs).
///
/// # Errors
/// See [`SharedArea::replace`](crate::area::SharedArea::replace).
pub fn replace(image: &Path, files: Vec<UploadFile>) -> Result<(), AreaError> {
    let plan = Plan::new(files)?;
    let guard = ImageWriteGuard::acquire(image)?;
    let old = Image::from_file(
        guard
            .file()
            .try_clone()
            .map_err(|e| AreaError::io("open", image, e))?,
        image,
    )?;
    let geometry = read_geometry(&old)?;
    let meta = old
        .file()
        .metadata()
        .map_err(|e| AreaError::io("inspect", image, e))?;
    let dir = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".nlxtp-upload-")
        .suffix(".img")
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
    let dirs = plan.dirs.len();
    fill(&mut file, plan, &temp_path)?;
    fix_dot_entries(&file, &temp_path, dirs)?;
    file.set_permissions(meta.permissions())
        .map_err(|e| AreaError::io("set the permissions of", &temp_path, e))?;
    let mine = file
        .metadata()
        .map_err(|e| AreaError::io("inspect", &temp_path, e))?;
    if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| AreaError::io("give the old owner to", &temp_path, e))?;
    }
    file.sync_all()
        .map_err(|e| AreaError::io("flush", &temp_path, e))?;
    temp.persist(image)
        .map_err(|e| AreaError::io("rename the new image over", image, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AreaError::io("flush the directory", dir, e))?;
    drop(temp_guard);
    drop(guard);
    Ok(())
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
        ] {
            let err = Plan::new(files(paths)).unwrap_err().to_string();
            assert!(err.contains(needle), "{paths:?}: {err}");
        }
        let long = "n".repeat(256);
        assert!(Plan::new(files(&[&long])).is_err());
        assert!(Plan::new(files(&["Dir/x", "Dir/y", "dir2/z"])).is_ok());
    }

    #[test]
    fn utc_clock_is_a_valid_fat_date() {
        let now = UtcClock::now();
        assert!((2024..=2107).contains(&now.date.year));
        assert!((1..=12).contains(&now.date.month) && (1..=31).contains(&now.date.day));
        assert!(now.time.hour < 24 && now.time.min < 60 && now.time.sec < 60);
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
