//! The custom status file: the whole text a script set, up to 64 KiB, in two fixed slots.
//!
//! The status record carries at most [`CUSTOM_STATUS_MAX`] bytes of custom text, and its
//! encoding cannot grow without breaking every host that decodes it strictly. The full
//! text lives in [`layout::CUSTOM_FILE`](crate::layout::CUSTOM_FILE), a file of
//! [`CUSTOM_FILE_LEN`] bytes made like the status file: slot 0 at offset 0, slot 1 at
//! [`CUSTOM_SLOT_LEN`], each holding one frame (magic `NLXC`; see [`crate::wire`]) whose
//! payload is the run id and the text. A text with sequence number `s` goes, whole, into
//! slot `s % 2`, so a reader always finds the previous text intact while the next is
//! being written; [`read_custom`] takes the valid slot with the higher sequence number,
//! exactly as [`read_status`](crate::slots::read_status) does.
//!
//! The status record's own `custom` field keeps the text's first [`CUSTOM_STATUS_MAX`]
//! bytes, cut at a character boundary ([`status_prefix`]), so a host that knows nothing
//! of this file still shows the start of the text. A host that does know it reads the
//! status file first, then this file, and shows [`custom_text`]: the full text when it
//! belongs to the record's run.
//!
//! ```
//! use nlxtp_core::custom::{custom_text, read_custom, CustomWriter, CUSTOM_FILE_LEN, CUSTOM_SLOT_LEN};
//! use nlxtp_core::{RunId, StatusRecord};
//! let run = RunId([7; 16]);
//! let mut file = vec![0u8; CUSTOM_FILE_LEN];
//! let mut writer = CustomWriter::new();
//! let long = "x".repeat(9_400);
//! for text in ["", "half way", long.as_str()] {
//!     let at = writer.next_offset();
//!     writer.encode(run, text, &mut file[at..at + CUSTOM_SLOT_LEN]).unwrap();
//! }
//! assert_eq!(read_custom(&file).unwrap().text.len(), 9_400);
//! let record = StatusRecord { run_id: run, ..Default::default() };
//! assert_eq!(custom_text(&record, &file), Ok(long.as_str()));
//! ```

use serde::{Deserialize, Serialize};

use crate::record::{postcard_exact, postcard_into, RunId, StatusRecord, CUSTOM_STATUS_MAX};
use crate::slots::{read_two_slots, slot_index};
use crate::wire::{decode_frame, encode_frame, CorruptKind, DecodeError, EncodeError, Magic};

/// The most bytes of custom status text (UTF-8): 64 KiB.
pub const CUSTOM_TEXT_MAX: usize = 64 * 1024;

/// Size of one slot of the custom status file: 17 pages of 4 KiB, room for the longest
/// text, its run id and the frame around them.
pub const CUSTOM_SLOT_LEN: usize = 17 * 4096;

/// Size of the whole custom status file: two slots.
pub const CUSTOM_FILE_LEN: usize = 2 * CUSTOM_SLOT_LEN;

/// The byte offset in the custom status file of the slot for this sequence number.
pub const fn custom_slot_offset(sequence: u64) -> usize {
    slot_index(sequence) * CUSTOM_SLOT_LEN
}

/// One custom status text, as one slot holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomText<'a> {
    /// Grows by one with every write of the custom status file (in its frame header).
    pub sequence: u64,
    /// The run that set the text: a text of another run is not this run's status.
    pub run_id: RunId,
    /// The text, at most [`CUSTOM_TEXT_MAX`] bytes.
    pub text: &'a str,
}

/// The payload's wire shape, in order: the run id, then the text as a postcard string.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    run_id: RunId,
    text: &'a str,
}

impl<'a> CustomText<'a> {
    /// Writes this text as one whole slot ([`CUSTOM_SLOT_LEN`] bytes).
    ///
    /// # Errors
    /// [`EncodeError::SlotSize`] if `slot` is not one slot long; [`EncodeError::TooLarge`]
    /// if the text is longer than [`CUSTOM_TEXT_MAX`] bytes.
    pub fn encode(&self, slot: &mut [u8]) -> Result<(), EncodeError> {
        if slot.len() != CUSTOM_SLOT_LEN {
            return Err(EncodeError::SlotSize);
        }
        if self.text.len() > CUSTOM_TEXT_MAX {
            return Err(EncodeError::TooLarge);
        }
        let wire = Wire {
            run_id: self.run_id,
            text: self.text,
        };
        encode_frame(Magic::CUSTOM, self.sequence, slot, |area| {
            postcard_into(&wire, area)
        })
    }

    /// Reads a text from one slot; the text borrows from `slot`.
    ///
    /// # Errors
    /// See [`DecodeError`]; a slot of the wrong size is `Corrupt(SlotSize)`, a text longer
    /// than [`CUSTOM_TEXT_MAX`] `Corrupt(Payload)`.
    pub fn decode(slot: &'a [u8]) -> Result<Self, DecodeError> {
        if slot.len() != CUSTOM_SLOT_LEN {
            return Err(DecodeError::Corrupt(CorruptKind::SlotSize));
        }
        let frame = decode_frame(Magic::CUSTOM, slot)?;
        let wire: Wire<'a> = postcard_exact(frame.payload)?;
        if wire.text.len() > CUSTOM_TEXT_MAX {
            return Err(DecodeError::Corrupt(CorruptKind::Payload));
        }
        Ok(CustomText {
            sequence: frame.sequence,
            run_id: wire.run_id,
            text: wire.text,
        })
    }
}

/// Reads the newest complete text from the bytes of a whole custom status file.
///
/// The rules are the status file's: empty is `NotThereYet`, short `Torn`, long corrupt;
/// the valid slot with the higher sequence number wins; a slot whose sequence number
/// selects the other slot is corrupt.
///
/// # Errors
/// See [`DecodeError`]; `Stale` is never returned.
pub fn read_custom(file: &[u8]) -> Result<CustomText<'_>, DecodeError> {
    read_two_slots(file, CUSTOM_SLOT_LEN, CustomText::decode, |c| c.sequence)
}

/// The custom status a host shows for `record`, given the bytes of the custom status
/// file read **after** the status file (`&[]` when there is none).
///
/// - The newest text in the file belongs to the record's run: that text, whole. It is
///   the one whose start the record carries, or a newer one.
/// - No file, an empty one, or a text of another run (an older guest, a file left from
///   an earlier upload): the record's own `custom`.
///
/// # Errors
/// `Torn` when the file is being written or created: read both files again after a short
/// pause (and after about a second of `Torn`, treat it as corrupt). `Corrupt` and
/// `UnsupportedVersion` are final for these bytes: show the record's own `custom`, and
/// say that the full text could not be read.
pub fn custom_text<'a>(
    record: &'a StatusRecord,
    custom_file: &'a [u8],
) -> Result<&'a str, DecodeError> {
    match read_custom(custom_file) {
        Ok(custom) if custom.run_id == record.run_id => Ok(custom.text),
        Ok(_) | Err(DecodeError::NotThereYet) => Ok(record.custom.as_str()),
        Err(e) => Err(e),
    }
}

/// The start of `text` that a status record carries: at most [`CUSTOM_STATUS_MAX`]
/// bytes, cut at a character boundary.
pub fn status_prefix(text: &str) -> &str {
    let mut end = text.len().min(CUSTOM_STATUS_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The guest's side: hands out sequence numbers and says where each slot goes.
#[derive(Debug, Clone)]
pub struct CustomWriter {
    next: u64,
}

impl Default for CustomWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CustomWriter {
    /// A writer for a fresh, all-zero file: the first text gets sequence 1.
    pub const fn new() -> Self {
        CustomWriter { next: 1 }
    }

    /// A writer that continues an existing file: the next text gets the sequence number
    /// after the newest valid one, so it goes into the other slot and leaves the newest
    /// text readable while it is written. A file with no valid slot counts as fresh.
    pub fn resume(file: &[u8]) -> Self {
        match read_custom(file) {
            Ok(newest) => CustomWriter {
                next: newest.sequence.saturating_add(1),
            },
            Err(_) => Self::new(),
        }
    }

    /// The sequence number the next [`CustomWriter::encode`] will use.
    pub const fn next_sequence(&self) -> u64 {
        self.next
    }

    /// The file offset of the slot the next [`CustomWriter::encode`] writes.
    pub const fn next_offset(&self) -> usize {
        custom_slot_offset(self.next)
    }

    /// Encodes `text` of run `run_id` with the next sequence number into `slot`
    /// ([`CUSTOM_SLOT_LEN`] bytes) and returns the file offset to write `slot` at. Write
    /// the slot in one piece and flush it to the disk before the next call.
    ///
    /// # Errors
    /// Those of [`CustomText::encode`]; the sequence number is not used up then.
    pub fn encode(
        &mut self,
        run_id: RunId,
        text: &str,
        slot: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let custom = CustomText {
            sequence: self.next,
            run_id,
            text,
        };
        custom.encode(slot)?;
        self.next = self.next.saturating_add(1);
        Ok(custom_slot_offset(custom.sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_cuts_at_a_character_boundary() {
        assert_eq!(status_prefix("short"), "short");
        let mut text = heapless::String::<{ CUSTOM_STATUS_MAX + 8 }>::new();
        while text.len() < CUSTOM_STATUS_MAX - 1 {
            text.push('x').unwrap();
        }
        text.push('€').unwrap(); // 3 bytes across the cap
        let cut = status_prefix(&text);
        assert_eq!(cut.len(), CUSTOM_STATUS_MAX - 1);
        assert!(cut.bytes().all(|b| b == b'x'));
    }

    #[test]
    fn the_longest_text_fits() {
        assert!(CUSTOM_TEXT_MAX + 16 + 3 <= crate::wire::max_payload_len(CUSTOM_SLOT_LEN));
    }
}
