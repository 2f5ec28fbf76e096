//! `nlxtp status` in one look: one open of the image, one `fstat`, the boot sector, the
//! FAT pages the few chains need, the root directory once, `nlxtp/` and the status
//! file's bytes, the original implementation's `exec_status/` only when there is no
//! status file, and QEMU's lock bytes probed on the same descriptor.
//!
//! What it reports is what [`snapshot_by_parts`](crate::area::snapshot_by_parts) reports
//! for the same image: the same lookups (the status file by its short names, the start
//! script and the legacy files by name, ignoring case), the same checks of each chain
//! followed, the same limits. The one difference is deliberate: the FAT is not checked
//! whole (as the status fast path never did), so damage in chains that none of these
//! files uses goes unnoticed here and is reported by a walk or a read of that file.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nlxtp_core::layout;

use super::block::{BlockSource, ImageFile};
use super::lock;
use super::partition;
use super::status::{self, StatusCache};
use super::volume::{Dirs, FoundFile, Volume};
use crate::area::{AreaError, AreaPath, AreaSnapshot, LegacyFiles, LEGACY_FILE_MAX, START_SCRIPT};

/// One look at the image at `path` (see the module docs); remembers where the status
/// file is in `cache`.
///
/// # Errors
/// [`AreaError::NoImage`], [`AreaError::Corrupt`] for a bad boot sector or a broken
/// chain or directory on the way, [`AreaError::Io`].
pub fn snapshot(path: &Path, cache: &StatusCache) -> Result<AreaSnapshot, AreaError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => AreaError::NoImage { path: path.into() },
        _ => AreaError::io("open", path, source),
    })?;
    let meta = file
        .metadata()
        .map_err(|source| AreaError::io("inspect", path, source))?;
    let disk = partition::volume_in(ImageFile::with_len(file, meta.len(), path))?;
    let volume = Volume::new_unchecked(disk)?;
    let mut dirs = Dirs::default();
    let located = status::locate_in(&volume, &mut dirs)?;
    let mut status_file = Vec::new();
    if let Some(found) = &located {
        volume.read_located(found, &mut status_file)?;
    }
    let legacy = if status_file.is_empty() {
        legacy(&volume, &mut dirs)?
    } else {
        None
    };
    let busy = lock::holds(volume.source.inner().file(), path)?;
    let script_present = exists(&volume, &mut dirs, START_SCRIPT)?;
    let inode = (meta.dev(), meta.ino());
    cache.remember(located.map(|found| status::place(volume.source, inode, found)));
    Ok(AreaSnapshot {
        status_file,
        busy,
        script_present,
        legacy,
    })
}

fn protocol_path(path: &str) -> AreaPath {
    AreaPath::new(path).expect("protocol paths are valid")
}

/// Whether anything is at `path`, as `snapshot_by_parts` asks: a file (its chain
/// checked) or a directory.
fn exists<S: BlockSource>(
    volume: &Volume<S>,
    dirs: &mut Dirs,
    path: &str,
) -> Result<bool, AreaError> {
    match volume.find_file(dirs, &protocol_path(path), 0) {
        Ok(_) | Err(AreaError::TooLarge { .. }) | Err(AreaError::NotAFile { .. }) => Ok(true),
        Err(AreaError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A legacy file that can be read: there, a file, and at most [`LEGACY_FILE_MAX`] bytes.
fn legacy_file<S: BlockSource>(
    volume: &Volume<S>,
    dirs: &mut Dirs,
    path: &str,
) -> Result<Option<FoundFile>, AreaError> {
    match volume.find_file(dirs, &protocol_path(path), LEGACY_FILE_MAX) {
        Ok(found) => Ok(Some(found)),
        Err(
            AreaError::NotFound { .. } | AreaError::NotAFile { .. } | AreaError::TooLarge { .. },
        ) => Ok(None),
        Err(e) => Err(e),
    }
}

fn legacy<S: BlockSource>(
    volume: &Volume<S>,
    dirs: &mut Dirs,
) -> Result<Option<LegacyFiles>, AreaError> {
    let read = |dirs: &mut Dirs, path: &str| -> Result<Option<Vec<u8>>, AreaError> {
        legacy_file(volume, dirs, path)?
            .map(|found| volume.read_found(&found))
            .transpose()
    };
    let running = read(dirs, layout::legacy::RUNNING)?;
    // Only whether it is there, and for `out` its size: their bytes are not needed.
    let done = legacy_file(volume, dirs, layout::legacy::DONE)?.is_some();
    let custom = read(dirs, layout::legacy::CUSTOM)?;
    if running.is_none() && !done && custom.is_none() {
        return Ok(None);
    }
    let out_len = legacy_file(volume, dirs, layout::legacy::OUT)?.map(|found| found.size);
    Ok(Some(LegacyFiles {
        running,
        done,
        custom,
        out_len,
    }))
}
