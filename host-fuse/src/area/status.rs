//! Reading the status record through a backend, retrying torn reads for a bounded time.

use std::thread;
use std::time::{Duration, Instant};

use nlxtp_core::{DecodeError, StatusReader, StatusRecord};

use super::{SharedArea, StatusError};

/// How [`SharedArea::read_status_file`] finds the status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRead {
    /// From where it was found last time, if the backend remembers that (the fast path).
    Cached,
    /// Look it up again: the last read did not decode, and the guest may have recreated it.
    Relocate,
}

/// How long [`read_status`] keeps retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Pause between reads that failed with a retryable error.
    pub pause: Duration,
    /// Give up after this long.
    pub give_up_after: Duration,
}

impl Default for Patience {
    /// 20 ms pauses, up to one second (docs/wire-format.md section 2).
    fn default() -> Self {
        Patience {
            pause: Duration::from_millis(20),
            give_up_after: Duration::from_secs(1),
        }
    }
}

/// Reads the newest status record of `area`: `None` if there is none yet.
///
/// A read that does not decode is tried once more after looking the file up again (the
/// guest may have recreated it); torn and stale reads are retried after
/// [`Patience::pause`] until [`Patience::give_up_after`]. `reader` remembers the newest
/// record returned, so the status never goes back in time.
///
/// # Errors
/// [`StatusError::Corrupt`] and [`StatusError::UnsupportedVersion`] are final for these
/// bytes; [`StatusError::Unsettled`] when retrying did not help in time;
/// [`StatusError::Area`] when the area cannot be read.
pub fn read_status(
    area: &(impl SharedArea + ?Sized),
    reader: &mut StatusReader,
    patience: Patience,
) -> Result<Option<StatusRecord>, StatusError> {
    let mut buf = Vec::with_capacity(nlxtp_core::slots::STATUS_FILE_LEN + 1);
    area.read_status_file(StatusRead::Cached, &mut buf)?;
    settle(area, reader, patience, buf, StatusRead::Cached)
}

/// [`read_status`] starting from `first`: the status file's bytes just read after a
/// fresh lookup (as [`StatusRead::Relocate`] reads them, say by
/// [`SharedArea::snapshot`]). If they decode, nothing more is read.
///
/// # Errors
/// As [`read_status`].
pub fn read_status_from(
    area: &(impl SharedArea + ?Sized),
    reader: &mut StatusReader,
    patience: Patience,
    first: Vec<u8>,
) -> Result<Option<StatusRecord>, StatusError> {
    settle(area, reader, patience, first, StatusRead::Relocate)
}

/// Decodes `buf`, read as `how` says, and reads again until a record, a final error or
/// the end of `patience`.
fn settle(
    area: &(impl SharedArea + ?Sized),
    reader: &mut StatusReader,
    patience: Patience,
    mut buf: Vec<u8>,
    mut how: StatusRead,
) -> Result<Option<StatusRecord>, StatusError> {
    let started = Instant::now();
    loop {
        let failed = match reader.read(&buf) {
            Ok(record) => return Ok(Some(record)),
            Err(e) => e,
        };
        if how == StatusRead::Cached {
            how = StatusRead::Relocate;
            area.read_status_file(how, &mut buf)?;
            continue;
        }
        match failed {
            DecodeError::NotThereYet => return Ok(None),
            DecodeError::Corrupt(kind) => return Err(StatusError::Corrupt { kind }),
            DecodeError::UnsupportedVersion(version) => {
                return Err(StatusError::UnsupportedVersion { version })
            }
            last => {
                let waited = started.elapsed();
                if waited >= patience.give_up_after {
                    return Err(StatusError::Unsettled { last, waited });
                }
                thread::sleep(patience.pause.min(patience.give_up_after - waited));
                // The next try reads the cached place again: a torn slot is usually a
                // write in progress, not a moved file.
                how = StatusRead::Cached;
                area.read_status_file(how, &mut buf)?;
            }
        }
    }
}
