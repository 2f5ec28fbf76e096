use core::fmt;

/// Why a frame, a slot or the status file did not yield a record.
///
/// The variants separate what a reader should do next: wait ([`NotThereYet`]), read
/// again shortly ([`Torn`]), or give up and report ([`Corrupt`], [`UnsupportedVersion`],
/// [`Stale`]).
///
/// [`NotThereYet`]: DecodeError::NotThereYet
/// [`Torn`]: DecodeError::Torn
/// [`Corrupt`]: DecodeError::Corrupt
/// [`UnsupportedVersion`]: DecodeError::UnsupportedVersion
/// [`Stale`]: DecodeError::Stale
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// No record has been written yet (an empty file, or slots that are all zero).
    NotThereYet,
    /// The bytes look like a write in progress: a checksum mismatch, the header and tail
    /// sequence numbers disagree, or the file is shorter than its fixed size. Read again
    /// after a short pause; if it persists over many reads, treat it as corrupt.
    Torn,
    /// The bytes can never become a valid record.
    Corrupt(CorruptKind),
    /// The frame was written by a newer (or unknown) version of the protocol.
    UnsupportedVersion(u8),
    /// A valid record, but older than one this reader has already returned.
    Stale {
        /// The newest sequence number already returned.
        seen: u64,
        /// The sequence number just read.
        got: u64,
    },
}

impl DecodeError {
    /// Whether reading the same place again a moment later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DecodeError::NotThereYet | DecodeError::Torn | DecodeError::Stale { .. }
        )
    }
}

/// What exactly is wrong with a corrupt frame or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The slot or buffer does not have the size the format fixes.
    SlotSize,
    /// The file is longer than the format allows.
    FileSize,
    /// The magic bytes are neither zero nor the expected ones.
    Magic,
    /// The reserved flags byte is not zero.
    Flags,
    /// The declared payload length does not fit in the slot, or a long frame carries a
    /// payload short enough for a short frame (no writer makes one).
    Length,
    /// The checksum matched but the payload is not a valid record.
    Payload,
    /// The payload decoded but left bytes unconsumed.
    TrailingBytes,
    /// A record sits in the slot its sequence number does not select.
    WrongSlot,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotThereYet => f.write_str("no record has been written yet"),
            DecodeError::Torn => f.write_str("record is being written (torn read); read again"),
            DecodeError::Corrupt(kind) => write!(f, "record is corrupt: {kind}"),
            DecodeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "record has format version {v}, this build reads version {}",
                    super::VERSION
                )
            }
            DecodeError::Stale { seen, got } => {
                write!(f, "record {got} is older than record {seen} already read")
            }
        }
    }
}

impl fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CorruptKind::SlotSize => "slot has the wrong size",
            CorruptKind::FileSize => "file is larger than the format allows",
            CorruptKind::Magic => "bad magic bytes",
            CorruptKind::Flags => "reserved flags are set",
            CorruptKind::Length => "payload length is out of range",
            CorruptKind::Payload => "payload is not a valid record",
            CorruptKind::TrailingBytes => "payload has trailing bytes",
            CorruptKind::WrongSlot => "record is in the wrong slot for its sequence number",
        })
    }
}

impl core::error::Error for DecodeError {}

/// Why a record could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is not exactly one slot long.
    SlotSize,
    /// The encoded payload does not fit in the slot.
    TooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::SlotSize => "output buffer is not one slot long",
            EncodeError::TooLarge => "record does not fit in one slot",
        })
    }
}

impl core::error::Error for EncodeError {}
