//! The frame every protocol file is made of, and the errors of decoding one.
//!
//! A frame fills a fixed-size slot (4096 bytes for a status slot, 512 for the manifest,
//! 69632 for a custom status slot):
//!
//! ```text
//! offset        size  field
//! 0             4     magic: b"NLXS" (status), b"NLXM" (manifest), b"NLXC" (custom status)
//! 4             1     version: 1
//! 5             1     flags: 0 (reserved)
//! 6             2     length of the payload, little endian
//! 8             8     sequence number, little endian
//! 16            len   payload (postcard)
//! 16+len        4     CRC-32C of bytes 0 .. 16+len, little endian
//! ...                 zero padding
//! slot-8        8     copy of the sequence number, little endian
//! ```
//!
//! A payload of 65535 bytes or more (only a slot larger than 64 KiB holds one) makes a
//! **long frame**: the length field holds `0xffff`, the real length follows as a `u32` at
//! offset 16 and the payload starts at 20; everything else is the same. Shorter payloads
//! are always written as short frames, so each payload has one encoding.
//!
//! The tail copy of the sequence sits in the slot's last sector while the header sits in
//! its first, so a slot torn between two writes at any single point (a new prefix and an
//! old suffix, or the reverse) is caught by comparing the two, independently of the CRC.
//!
//! Contract: [`decode_frame`] checks the slot's length first; after that no access
//! panics, whatever the bytes. A frame that decodes is one that a writer wrote whole.

mod error;
mod frame;

pub use error::{CorruptKind, DecodeError, EncodeError};
pub use frame::{
    decode_frame, encode_frame, max_payload_len, Magic, FRAME_OVERHEAD, LONG_FRAME_OVERHEAD,
    MAX_SLOT_LEN, VERSION,
};

/// Byte offsets inside a frame.
pub mod field {
    use core::ops::Range;

    /// Magic bytes that name the kind of frame.
    pub const MAGIC: Range<usize> = 0..4;
    /// Format version.
    pub const VERSION: usize = 4;
    /// Reserved flags; must be zero.
    pub const FLAGS: usize = 5;
    /// Payload length, `u16` little endian.
    pub const LENGTH: Range<usize> = 6..8;
    /// Sequence number, `u64` little endian.
    pub const SEQUENCE: Range<usize> = 8..16;
    /// Start of the payload.
    pub const PAYLOAD: usize = 16;
    /// Size of the header before the payload.
    pub const HEADER_LEN: usize = PAYLOAD;
    /// Size of the CRC after the payload.
    pub const CRC_LEN: usize = 4;
    /// Size of the sequence copy at the end of the slot.
    pub const TAIL_LEN: usize = 8;
    /// In a long frame (`LENGTH` = `u16::MAX`): the payload length, `u32` little endian.
    pub const LONG_LENGTH: Range<usize> = 16..20;
    /// Size of a long frame's payload length.
    pub const LONG_LENGTH_LEN: usize = 4;
    /// Start of a long frame's payload.
    pub const LONG_PAYLOAD: usize = 20;
}
