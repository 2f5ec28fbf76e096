use super::error::{CorruptKind, DecodeError, EncodeError};
use super::field;

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;

/// Bytes of a slot that are not payload: header, CRC and the tail sequence copy.
pub const FRAME_OVERHEAD: usize = field::HEADER_LEN + field::CRC_LEN + field::TAIL_LEN;

/// CRC-32C (Castagnoli, the iSCSI polynomial): see `docs/wire-format.md` for why.
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The four bytes that open a frame and name what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Magic(pub [u8; 4]);

impl Magic {
    /// A status record.
    pub const STATUS: Magic = Magic(*b"NLXS");
    /// An upload manifest.
    pub const MANIFEST: Magic = Magic(*b"NLXM");
}

/// The largest payload a slot of `slot_len` bytes holds (0 if the slot is too small).
pub const fn max_payload_len(slot_len: usize) -> usize {
    let room = slot_len.saturating_sub(FRAME_OVERHEAD);
    if room > u16::MAX as usize {
        u16::MAX as usize
    } else {
        room
    }
}

/// A frame that passed every check: its sequence number and its payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The sequence number from the header (equal to the tail copy).
    pub sequence: u64,
    /// The payload, covered by the checksum.
    pub payload: &'a [u8],
}

/// Writes one whole slot: header, the payload produced by `payload`, CRC, zero padding
/// and the tail copy of the sequence. Every byte of `slot` is written.
///
/// `payload` gets the payload area (of [`max_payload_len`] bytes) and returns how many
/// bytes it used.
///
/// # Errors
/// [`EncodeError::SlotSize`] if `slot` is too small for a frame or larger than a frame's
/// length field can describe; [`EncodeError::TooLarge`] if `payload` says so or reports a
/// length beyond the area.
pub fn encode_frame(
    magic: Magic,
    sequence: u64,
    slot: &mut [u8],
    payload: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), EncodeError> {
    let len = slot.len();
    if len <= FRAME_OVERHEAD || len > u16::MAX as usize + FRAME_OVERHEAD {
        return Err(EncodeError::SlotSize);
    }
    let max = max_payload_len(len);
    let used = payload(&mut slot[field::PAYLOAD..field::PAYLOAD + max])?;
    if used > max {
        return Err(EncodeError::TooLarge);
    }
    slot[field::MAGIC].copy_from_slice(&magic.0);
    slot[field::VERSION] = VERSION;
    slot[field::FLAGS] = 0;
    // `used <= max <= u16::MAX` was checked above.
    slot[field::LENGTH].copy_from_slice(&(used as u16).to_le_bytes());
    slot[field::SEQUENCE].copy_from_slice(&sequence.to_le_bytes());
    let crc_at = field::PAYLOAD + used;
    let crc = CRC32C.checksum(&slot[..crc_at]);
    slot[crc_at..crc_at + field::CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let tail_at = len - field::TAIL_LEN;
    slot[crc_at + field::CRC_LEN..tail_at].fill(0);
    slot[tail_at..].copy_from_slice(&sequence.to_le_bytes());
    Ok(())
}

/// Checks one slot and returns its frame.
///
/// The checks run in an order that keeps a write in progress apart from garbage: a slot
/// whose header is all zero was never written; bytes that a tear between two writes can
/// produce (a partial magic, a zero version, header and tail sequence numbers that
/// differ, a length out of range, a checksum mismatch) are [`DecodeError::Torn`]; what
/// no tear can produce is [`DecodeError::Corrupt`].
///
/// # Errors
/// See [`DecodeError`]; `Stale` is never returned here.
pub fn decode_frame(magic: Magic, slot: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let len = slot.len();
    if len <= FRAME_OVERHEAD || len > u16::MAX as usize + FRAME_OVERHEAD {
        return Err(DecodeError::Corrupt(CorruptKind::SlotSize));
    }
    if slot[..field::HEADER_LEN].iter().all(|&b| b == 0) {
        return Err(DecodeError::NotThereYet);
    }
    let found = &slot[field::MAGIC];
    if found
        .iter()
        .zip(magic.0)
        .any(|(&b, want)| b != 0 && b != want)
    {
        return Err(DecodeError::Corrupt(CorruptKind::Magic));
    }
    if found != magic.0 {
        return Err(DecodeError::Torn);
    }
    match slot[field::VERSION] {
        0 => return Err(DecodeError::Torn),
        VERSION => {}
        other => return Err(DecodeError::UnsupportedVersion(other)),
    }
    if slot[field::FLAGS] != 0 {
        return Err(DecodeError::Corrupt(CorruptKind::Flags));
    }
    let sequence = read_u64(&slot[field::SEQUENCE]);
    if sequence != read_u64(&slot[len - field::TAIL_LEN..]) {
        return Err(DecodeError::Torn);
    }
    let used = usize::from(u16::from_le_bytes([
        slot[field::LENGTH.start],
        slot[field::LENGTH.start + 1],
    ]));
    if used > max_payload_len(len) {
        return Err(DecodeError::Torn);
    }
    let crc_at = field::PAYLOAD + used;
    let stored = u32::from_le_bytes([
        slot[crc_at],
        slot[crc_at + 1],
        slot[crc_at + 2],
        slot[crc_at + 3],
    ]);
    if CRC32C.checksum(&slot[..crc_at]) != stored {
        return Err(DecodeError::Torn);
    }
    Ok(Frame {
        sequence,
        payload: &slot[field::PAYLOAD..crc_at],
    })
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, payload: &[u8], slot: &mut [u8]) {
        encode_frame(Magic::STATUS, seq, slot, |area| {
            area[..payload.len()].copy_from_slice(payload);
            Ok(payload.len())
        })
        .unwrap();
    }

    #[test]
    fn golden_small_frame() {
        // Pre-filled with 0xa5 so that a byte the encoder forgot shows up.
        let mut slot = [0xa5u8; 48];
        frame(7, b"hi", &mut slot);
        let crc = CRC32C.checksum(&slot[..18]).to_le_bytes();
        let mut want = [0u8; 48];
        want[..18].copy_from_slice(b"NLXS\x01\x00\x02\x00\x07\x00\x00\x00\x00\x00\x00\x00hi");
        want[18..22].copy_from_slice(&crc);
        want[40..].copy_from_slice(&7u64.to_le_bytes());
        assert_eq!(slot, want);
        // The check value of CRC-32C ("123456789" -> 0xE3069283) pins the polynomial.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        assert_eq!(
            decode_frame(Magic::STATUS, &slot),
            Ok(Frame {
                sequence: 7,
                payload: b"hi"
            })
        );
    }

    #[test]
    fn classifies_what_a_tear_can_and_cannot_produce() {
        let mut slot = [0u8; 64];
        assert_eq!(
            decode_frame(Magic::STATUS, &slot),
            Err(DecodeError::NotThereYet)
        );
        frame(3, b"abc", &mut slot);

        let mut partial_magic = slot;
        partial_magic[2..4].fill(0);
        assert_eq!(
            decode_frame(Magic::STATUS, &partial_magic),
            Err(DecodeError::Torn)
        );

        let mut other_magic = slot;
        other_magic[..4].copy_from_slice(b"NLXM");
        assert_eq!(
            decode_frame(Magic::STATUS, &other_magic),
            Err(DecodeError::Corrupt(CorruptKind::Magic))
        );

        let mut newer = slot;
        newer[field::VERSION] = 2;
        assert_eq!(
            decode_frame(Magic::STATUS, &newer),
            Err(DecodeError::UnsupportedVersion(2))
        );

        let mut flags = slot;
        flags[field::FLAGS] = 1;
        assert_eq!(
            decode_frame(Magic::STATUS, &flags),
            Err(DecodeError::Corrupt(CorruptKind::Flags))
        );

        let mut tail = slot;
        tail[63] ^= 1;
        assert_eq!(decode_frame(Magic::STATUS, &tail), Err(DecodeError::Torn));

        let mut long = slot;
        long[field::LENGTH].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(decode_frame(Magic::STATUS, &long), Err(DecodeError::Torn));

        let mut flipped = slot;
        flipped[field::PAYLOAD] ^= 0x40;
        assert_eq!(
            decode_frame(Magic::STATUS, &flipped),
            Err(DecodeError::Torn)
        );

        assert_eq!(
            decode_frame(Magic::STATUS, &slot[..FRAME_OVERHEAD]),
            Err(DecodeError::Corrupt(CorruptKind::SlotSize))
        );
    }

    #[test]
    fn refuses_oversized_payload_and_bad_slots() {
        let mut slot = [0u8; 40];
        assert_eq!(
            encode_frame(Magic::STATUS, 1, &mut slot, |area| Ok(area.len() + 1)),
            Err(EncodeError::TooLarge)
        );
        assert_eq!(
            encode_frame(Magic::STATUS, 1, &mut slot[..FRAME_OVERHEAD], |_| Ok(0)),
            Err(EncodeError::SlotSize)
        );
    }
}
