//! One look at an area for a status report: the status file, whether the guest holds the
//! area, whether an upload is there, and the original implementation's status files.
//! A backend that can read all of it in one pass overrides
//! [`SharedArea::snapshot`](super::SharedArea::snapshot); [`snapshot_by_parts`] is the
//! general way, from the trait's other calls.

use nlxtp_core::layout;

use super::{AreaError, AreaPath, SharedArea, StatusRead, START_SCRIPT};

/// The most bytes read of one of the original implementation's small status files.
pub const LEGACY_FILE_MAX: u64 = 256 << 20;

/// What one look at an area found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AreaSnapshot {
    /// The status file, as [`SharedArea::read_status_file`] reads it after a fresh lookup
    /// ([`StatusRead::Relocate`]): empty when there is none.
    pub status_file: Vec<u8>,
    /// Whether the guest holds the area ([`SharedArea::is_busy`]).
    pub busy: bool,
    /// Whether [`START_SCRIPT`] is there (as a file or anything else by that name).
    pub script_present: bool,
    /// The original implementation's status files; read only when there is no status
    /// file (an area of the original implementation has none).
    pub legacy: Option<LegacyFiles>,
}

/// The original implementation's `exec_status/` files (no checksum; docs/wire-format.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyFiles {
    /// `exec_status/running`: the guest's Unix time as text.
    pub running: Option<Vec<u8>>,
    /// Whether `exec_status/done` exists.
    pub done: bool,
    /// `exec_status/custom`.
    pub custom: Option<Vec<u8>>,
    /// The size of `exec_status/out` (standard output and error together).
    pub out_len: Option<u64>,
}

/// [`SharedArea::snapshot`] from the area's other calls: one read each.
///
/// # Errors
/// Those of [`SharedArea::read_status_file`], [`SharedArea::is_busy`] and
/// [`SharedArea::read_file`].
pub fn snapshot_by_parts(area: &(impl SharedArea + ?Sized)) -> Result<AreaSnapshot, AreaError> {
    let mut status_file = Vec::new();
    // A fresh lookup, as the snapshot's contract says (read_status_from relies on it).
    area.read_status_file(StatusRead::Relocate, &mut status_file)?;
    let legacy = if status_file.is_empty() {
        read_legacy(area)?
    } else {
        None
    };
    Ok(AreaSnapshot {
        busy: area.is_busy()?,
        script_present: exists(area, START_SCRIPT)?,
        status_file,
        legacy,
    })
}

fn exists(area: &(impl SharedArea + ?Sized), path: &str) -> Result<bool, AreaError> {
    let path = AreaPath::new(path).expect("protocol paths are valid");
    match area.read_file(&path, 0) {
        Ok(_) | Err(AreaError::TooLarge { .. }) | Err(AreaError::NotAFile { .. }) => Ok(true),
        Err(AreaError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_legacy(area: &(impl SharedArea + ?Sized)) -> Result<Option<LegacyFiles>, AreaError> {
    let read = |path: &str| -> Result<Option<Vec<u8>>, AreaError> {
        let path = AreaPath::new(path).expect("legacy paths are valid");
        match area.read_file(&path, LEGACY_FILE_MAX) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(
                AreaError::NotFound { .. }
                | AreaError::NotAFile { .. }
                | AreaError::TooLarge { .. },
            ) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let running = read(layout::legacy::RUNNING)?;
    let done = read(layout::legacy::DONE)?;
    let custom = read(layout::legacy::CUSTOM)?;
    if running.is_none() && done.is_none() && custom.is_none() {
        return Ok(None);
    }
    let out_len = read(layout::legacy::OUT)?.map(|b| b.len() as u64);
    Ok(Some(LegacyFiles {
        running,
        done: done.is_some(),
        custom,
        out_len,
    }))
}
