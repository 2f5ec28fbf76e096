//! The live-output ring: the newest output of a running script, readable by a host while
//! the guest runs, without trusting a growing file's FAT metadata.
//!
//! `nlxtp/live.bin` is created at the start of a run with a fixed size of
//! [`LIVE_FILE_LEN`] bytes and never changes size or place, like the status file. It
//! holds [`LIVE_BLOCKS`] blocks of [`LIVE_BLOCK_LEN`] bytes (one disk sector each). The
//! monitor writes each piece of captured output as a block with a global sequence
//! number, its stream and its byte offset in that stream's capture file; block `s` goes
//! to slot `s % LIVE_BLOCKS`, so the ring always holds the newest blocks. Each block
//! carries a CRC-32C over everything else in it, so a torn or stale block is never taken
//! for data.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "NLXL"
//! 4       1     version 1
//! 5       1     stream: 1 stdout, 2 stderr
//! 6       2     len: payload bytes (at most 480), little endian
//! 8       8     sequence number, little endian (first block: 1)
//! 16      8     offset of the payload in its stream, little endian
//! 24      480   payload (len bytes, then zero)
//! 504     4     reserved, zero
//! 508     4     CRC-32C of bytes 0..508, little endian
//! ```
//!
//! A reader concatenates, per stream, the payloads in offset order; a block that is
//! missing or torn is waited for, a block that was overwritten (the slot holds a newer
//! sequence) is gone, and the reader takes those bytes from the capture file once the
//! run has ended.

use crate::wire::{CorruptKind, DecodeError, VERSION};

/// Size of one block: one disk sector.
pub const LIVE_BLOCK_LEN: usize = 512;
/// Blocks in the ring.
pub const LIVE_BLOCKS: usize = 256;
/// Size of the whole live file.
pub const LIVE_FILE_LEN: usize = LIVE_BLOCK_LEN * LIVE_BLOCKS;
/// Payload bytes a block holds at most.
pub const LIVE_PAYLOAD_MAX: usize = 480;

const MAGIC: [u8; 4] = *b"NLXL";
const PAYLOAD_AT: usize = 24;
const CRC_AT: usize = 508;
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Which captured stream a block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn code(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

/// A valid block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveBlock<'a> {
    /// Global sequence number (both streams).
    pub sequence: u64,
    /// The stream.
    pub stream: Stream,
    /// Byte offset of `payload` in the stream's capture file.
    pub offset: u64,
    /// The output bytes.
    pub payload: &'a [u8],
}

/// The slot of the ring a block with this sequence number goes to.
pub const fn live_slot(sequence: u64) -> usize {
    (sequence % LIVE_BLOCKS as u64) as usize
}

/// Writes one block. `payload` longer than [`LIVE_PAYLOAD_MAX`] is cut to it; the
/// return value is how many payload bytes the block took.
pub fn encode_block(
    block: &mut [u8; LIVE_BLOCK_LEN],
    sequence: u64,
    stream: Stream,
    offset: u64,
    payload: &[u8],
) -> usize {
    let len = payload.len().min(LIVE_PAYLOAD_MAX);
    block.fill(0);
    block[..4].copy_from_slice(&MAGIC);
    block[4] = VERSION;
    block[5] = stream.code();
    block[6..8].copy_from_slice(&(len as u16).to_le_bytes());
    block[8..16].copy_from_slice(&sequence.to_le_bytes());
    block[16..24].copy_from_slice(&offset.to_le_bytes());
    block[PAYLOAD_AT..PAYLOAD_AT + len].copy_from_slice(&payload[..len]);
    let crc = CRC32C.checksum(&block[..CRC_AT]);
    block[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    len
}

/// Reads one block. An all-zero block is `NotThereYet`; a checksum mismatch `Torn`.
///
/// # Errors
/// See [`DecodeError`].
pub fn decode_block(block: &[u8; LIVE_BLOCK_LEN]) -> Result<LiveBlock<'_>, DecodeError> {
    if block.iter().all(|&b| b == 0) {
        return Err(DecodeError::NotThereYet);
    }
    let crc = u32::from_le_bytes([
        block[CRC_AT],
        block[CRC_AT + 1],
        block[CRC_AT + 2],
        block[CRC_AT + 3],
    ]);
    if CRC32C.checksum(&block[..CRC_AT]) != crc {
        return Err(DecodeError::Torn);
    }
    if block[..4] != MAGIC {
        return Err(DecodeError::Corrupt(CorruptKind::Magic));
    }
    if block[4] != VERSION {
        return Err(DecodeError::UnsupportedVersion(block[4]));
    }
    let stream = match block[5] {
        1 => Stream::Stdout,
        2 => Stream::Stderr,
        _ => return Err(DecodeError::Corrupt(CorruptKind::Payload)),
    };
    let len = usize::from(u16::from_le_bytes([block[6], block[7]]));
    if len > LIVE_PAYLOAD_MAX {
        return Err(DecodeError::Corrupt(CorruptKind::Length));
    }
    let word = |at: usize| {
        let mut le = [0u8; 8];
        le.copy_from_slice(&block[at..at + 8]);
        u64::from_le_bytes(le)
    };
    let sequence = word(8);
    if sequence == 0 {
        return Err(DecodeError::Corrupt(CorruptKind::Payload));
    }
    Ok(LiveBlock {
        sequence,
        stream,
        offset: word(16),
        payload: &block[PAYLOAD_AT..PAYLOAD_AT + len],
    })
}

/// The block in slot `index` of a whole live file, if the file has that slot.
pub fn block_at(file: &[u8], index: usize) -> Option<&[u8; LIVE_BLOCK_LEN]> {
    file.get(index * LIVE_BLOCK_LEN..(index + 1) * LIVE_BLOCK_LEN)?
        .try_into()
        .ok()
}

/// Writes block `sequence` into its slot of a whole live file held in memory, as the
/// monitor writes it to disk; `None` if the file has no such slot. Returns how many
/// payload bytes the block took (see [`encode_block`]).
pub fn put_block(
    file: &mut [u8],
    sequence: u64,
    stream: Stream,
    offset: u64,
    payload: &[u8],
) -> Option<usize> {
    let at = live_slot(sequence) * LIVE_BLOCK_LEN;
    let block = file.get_mut(at..at + LIVE_BLOCK_LEN)?.try_into().ok()?;
    Some(encode_block(block, sequence, stream, offset, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut block = [0xa5u8; LIVE_BLOCK_LEN];
        let took = encode_block(&mut block, 7, Stream::Stderr, 1000, &[b'x'; 600]);
        assert_eq!(took, LIVE_PAYLOAD_MAX);
        let decoded = decode_block(&block).unwrap();
        assert_eq!(
            (
                decoded.sequence,
                decoded.stream,
                decoded.offset,
                decoded.payload.len()
            ),
            (7, Stream::Stderr, 1000, 480)
        );
        assert_eq!(live_slot(7), 7);
        assert_eq!(live_slot(LIVE_BLOCKS as u64 + 3), 3);
        let mut file = [0u8; LIVE_FILE_LEN];
        let wrapped = LIVE_BLOCKS as u64 + 7;
        assert_eq!(
            put_block(&mut file, wrapped, Stream::Stderr, 1000, &[b'x'; 600]),
            Some(480)
        );
        assert_eq!(
            decode_block(block_at(&file, 7).unwrap()).unwrap().sequence,
            wrapped
        );
        assert_eq!(
            put_block(&mut file[..LIVE_BLOCK_LEN], 1, Stream::Stdout, 0, b"x"),
            None
        );
        for byte in 0..LIVE_BLOCK_LEN {
            let mut bad = block;
            bad[byte] ^= 0x10;
            assert!(decode_block(&bad).is_err(), "flip at {byte}");
        }
        assert_eq!(
            decode_block(&[0; LIVE_BLOCK_LEN]),
            Err(DecodeError::NotThereYet)
        );
        // A block torn between two writes at any byte is rejected or is one of the two.
        let mut other = [0u8; LIVE_BLOCK_LEN];
        encode_block(
            &mut other,
            7 + LIVE_BLOCKS as u64,
            Stream::Stdout,
            5,
            b"newer",
        );
        for cut in 0..=LIVE_BLOCK_LEN {
            let mut torn = other;
            torn[cut..].copy_from_slice(&block[cut..]);
            if let Ok(got) = decode_block(&torn) {
                assert!(
                    got.sequence == 7 || got.sequence == 7 + LIVE_BLOCKS as u64,
                    "cut {cut}"
                );
            }
        }
    }
}
