//! The tear-proof status file: two fixed slots written alternately.
//!
//! The file is always [`STATUS_FILE_LEN`] bytes: slot 0 at offset 0, slot 1 at offset
//! [`STATUS_SLOT_LEN`]. A record with sequence number `s` is written, whole, into slot
//! `s % 2`, so a write in progress only ever touches the slot that holds the record
//! before the previous one; the other slot keeps the latest complete record. The file
//! never changes size or place once created, so on vFAT only its data sectors change
//! while a guest runs and a host can locate the slots once.
//!
//! A reader decodes both slots and takes the valid one with the higher sequence number
//! ([`read_status`]); a [`StatusReader`] also refuses to go back to an older record of
//! the same run. The writer side ([`StatusWriter`]) hands out sequence numbers and says
//! where each slot goes, so a guest has nothing to invent.

use crate::record::{RunId, StatusRecord, STATUS_SLOT_LEN};
use crate::wire::{CorruptKind, DecodeError, EncodeError};

/// Size of the whole status file: two slots.
pub const STATUS_FILE_LEN: usize = 2 * STATUS_SLOT_LEN;

/// The slot (0 or 1) a record with this sequence number is written to.
pub const fn slot_index(sequence: u64) -> usize {
    (sequence % 2) as usize
}

/// The byte offset in the status file of the slot for this sequence number.
pub const fn slot_offset(sequence: u64) -> usize {
    slot_index(sequence) * STATUS_SLOT_LEN
}

/// Reads the valid slot with the higher sequence number from the bytes of a whole
/// two-slot file of `slot_len`-byte slots: the rules the status file and the custom
/// status file share (`docs/wire-format.md`, section 4).
///
/// A file shorter than two slots is a file being created (`Torn`), an empty one
/// `NotThereYet`, a longer one corrupt. A valid slot whose sequence number selects the
/// other slot is corrupt. When neither slot is valid, the error says what to do:
/// `NotThereYet` if both are empty, `Torn` if either may be a write in progress,
/// otherwise the first slot's error.
pub(crate) fn read_two_slots<'a, T>(
    file: &'a [u8],
    slot_len: usize,
    decode: impl Fn(&'a [u8]) -> Result<T, DecodeError>,
    sequence: impl Fn(&T) -> u64,
) -> Result<T, DecodeError> {
    match file.len() {
        0 => return Err(DecodeError::NotThereYet),
        len if len < 2 * slot_len => return Err(DecodeError::Torn),
        len if len == 2 * slot_len => {}
        _ => return Err(DecodeError::Corrupt(CorruptKind::FileSize)),
    }
    let slot = |index: usize| {
        let at = index * slot_len;
        let value = decode(&file[at..at + slot_len])?;
        if slot_index(sequence(&value)) != index {
            return Err(DecodeError::Corrupt(CorruptKind::WrongSlot));
        }
        Ok(value)
    };
    match (slot(0), slot(1)) {
        (Ok(a), Ok(b)) => Ok(if sequence(&a) > sequence(&b) { a } else { b }),
        (Ok(one), Err(_)) | (Err(_), Ok(one)) => Ok(one),
        (Err(a), Err(b)) => Err(match (a, b) {
            (DecodeError::NotThereYet, DecodeError::NotThereYet) => DecodeError::NotThereYet,
            (DecodeError::Torn, _) | (_, DecodeError::Torn) => DecodeError::Torn,
            (DecodeError::NotThereYet, other) => other,
            (first, _) => first,
        }),
    }
}

/// Reads the newest complete record from the bytes of a whole status file.
///
/// A file shorter than [`STATUS_FILE_LEN`] is a file being created (`Torn`), an empty one
/// `NotThereYet`, a longer one corrupt. When neither slot is valid, the error says what
/// to do: `NotThereYet` if both are empty, `Torn` if either may be a write in progress,
/// otherwise the first slot's error.
///
/// # Errors
/// See [`DecodeError`]; `Stale` is never returned here (see [`StatusReader`]).
pub fn read_status(file: &[u8]) -> Result<StatusRecord, DecodeError> {
    read_two_slots(file, STATUS_SLOT_LEN, StatusRecord::decode, |r| r.sequence)
}

/// A reader that never goes back in time: once it has returned a record, it refuses an
/// older record of the same run (a stale cache, or a replayed slot) with
/// [`DecodeError::Stale`].
#[derive(Debug, Clone, Default)]
pub struct StatusReader {
    newest: Option<(RunId, u64)>,
}

impl StatusReader {
    /// A reader that has seen nothing yet.
    pub const fn new() -> Self {
        StatusReader { newest: None }
    }

    /// Reads the status file's bytes, as [`read_status`], and checks the record is not
    /// older than one already returned for the same run. A record of another run (a new
    /// upload) starts afresh.
    ///
    /// # Errors
    /// Those of [`read_status`], and [`DecodeError::Stale`].
    pub fn read(&mut self, file: &[u8]) -> Result<StatusRecord, DecodeError> {
        let record = read_status(file)?;
        if let Some((run, seen)) = self.newest {
            if run == record.run_id && record.sequence < seen {
                return Err(DecodeError::Stale {
                    seen,
                    got: record.sequence,
                });
            }
        }
        self.newest = Some((record.run_id, record.sequence));
        Ok(record)
    }
}

/// The guest's side: hands out sequence numbers and lays out each slot write.
#[derive(Debug, Clone)]
pub struct StatusWriter {
    next: u64,
}

impl Default for StatusWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusWriter {
    /// A writer for a fresh, all-zero status file: the first record gets sequence 1.
    pub const fn new() -> Self {
        StatusWriter { next: 1 }
    }

    /// A writer that continues an existing status file (after a reboot, say): the next
    /// record gets the sequence number after the newest valid one, and so goes into the
    /// other slot, leaving the newest valid record readable while it is written. A slot
    /// whose write was cut off never validated, so reusing its number shows no reader a
    /// number twice. A file with no valid slot (or of the wrong size) counts as fresh.
    pub fn resume(file: &[u8]) -> Self {
        match read_status(file) {
            Ok(newest) => StatusWriter {
                next: newest.sequence.saturating_add(1),
            },
            Err(_) => Self::new(),
        }
    }

    /// The sequence number the next [`StatusWriter::encode`] will use.
    pub const fn next_sequence(&self) -> u64 {
        self.next
    }

    /// Gives `record` the next sequence number, encodes it into `slot`
    /// (`STATUS_SLOT_LEN` bytes) and returns the file offset to write `slot` at.
    /// Write the slot in one piece, then flush it to the disk, before the next call.
    ///
    /// # Errors
    /// [`EncodeError::SlotSize`] if `slot` is not one slot long; the sequence number is
    /// not used up then.
    pub fn encode(
        &mut self,
        record: &mut StatusRecord,
        slot: &mut [u8],
    ) -> Result<usize, EncodeError> {
        record.sequence = self.next;
        record.encode(slot)?;
        self.next = self.next.saturating_add(1);
        Ok(slot_offset(record.sequence))
    }
}
