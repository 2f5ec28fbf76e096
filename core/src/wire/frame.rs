use super::error::{CorruptKind, DecodeError, EncodeError};
use super::field;

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;

/// Bytes of a slot that are not payload: header, CRC and the tail sequence copy.
pub const FRAME_OVERHEAD: usize = field::HEADER_LEN + field::CRC_LEN + field::TAIL_LEN;

/// Bytes of a slot that are not payload in a long frame: [`FRAME_OVERHEAD`] and the
/// 32-bit payload length after the header.
pub const LONG_FRAME_OVERHEAD: usize = FRAME_OVERHEAD + field::LONG_LENGTH_LEN;

/// The largest slot a frame may fill (1 MiB): a bound on what a reader checksums.
pub const MAX_SLOT_LEN: usize = 1 << 20;

/// The `len` value that announces a long frame: the payload length is the `u32` at
/// [`field::LONG_LENGTH`] and the payload starts at [`field::LONG_PAYLOAD`].
const LONG: u16 = u16::MAX;

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
    /// A custom status text (`nlxtp/custom.bin`).
    pub const CUSTOM: Magic = Magic(*b"NLXC");
}

/// Whether a slot of `slot_len` bytes can hold a long frame: one whose payload of at
/// least `u16::MAX` bytes fits behind the longer header. Smaller slots only ever hold
/// short frames, so for them a `len` of `u16::MAX` is out of range as it always was.
const fn long_capable(slot_len: usize) -> bool {
    slot_len >= LONG as usize + LONG_FRAME_OVERHEAD
}

/// The largest payload a slot of `slot_len` bytes holds (0 if the slot is too small).
///
/// A short frame's `len` goes up to `u16::MAX - 1`; a slot large enough for a longer
/// payload holds it in a long frame.
pub const fn max_payload_len(slot_len: usize) -> usize {
    if long_capable(slot_len) {
        return slot_len - LONG_FRAME_OVERHEAD;
    }
    let room = slot_len.saturating_sub(FRAME_OVERHEAD);
    if room >= LONG as usize {
        LONG as usize - 1
    } else {
        room
    }
}

fn check_slot_len(len: usize) -> bool {
    len > FRAME_OVERHEAD && len <= MAX_SLOT_LEN
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
/// bytes it used. A payload of `u16::MAX` bytes or more (possible only in a slot of
/// more than 64 KiB) is written as a long frame; any shorter one as a short frame, so
/// every payload has exactly one encoding.
///
/// # Errors
/// [`EncodeError::SlotSize`] if `slot` is too small for a frame or larger than
/// [`MAX_SLOT_LEN`]; [`EncodeError::TooLarge`] if `payload` says so or reports a length
/// beyond the area.
pub fn encode_frame(
    magic: Magic,
    sequence: u64,
    slot: &mut [u8],
    payload: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), EncodeError> {
    let len = slot.len();
    if !check_slot_len(len) {
        return Err(EncodeError::SlotSize);
    }
    let max = max_payload_len(len);
    // A slot that may need the long form gets its payload produced where a long frame
    // keeps it; a short one is moved down by the length word afterwards.
    let start = if long_capable(len) {
        field::LONG_PAYLOAD
    } else {
        field::PAYLOAD
    };
    let used = payload(&mut slot[start..start + max])?;
    if used > max {
        return Err(EncodeError::TooLarge);
    }
    let short = used < LONG as usize;
    if short && start != field::PAYLOAD {
        slot.copy_within(start..start + used, field::PAYLOAD);
    }
    slot[field::MAGIC].copy_from_slice(&magic.0);
    slot[field::VERSION] = VERSION;
    slot[field::FLAGS] = 0;
    slot[field::SEQUENCE].copy_from_slice(&sequence.to_le_bytes());
    let crc_at = if short {
        // `used < u16::MAX` here.
        slot[field::LENGTH].copy_from_slice(&(used as u16).to_le_bytes());
        field::PAYLOAD + used
    } else {
        slot[field::LENGTH].copy_from_slice(&LONG.to_le_bytes());
        // `used <= max < MAX_SLOT_LEN`, far below `u32::MAX`.
        slot[field::LONG_LENGTH].copy_from_slice(&(used as u32).to_le_bytes());
        field::LONG_PAYLOAD + used
    };
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
    if !check_slot_len(len) {
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
    let short = u16::from_le_bytes([slot[field::LENGTH.start], slot[field::LENGTH.start + 1]]);
    let (start, used) = if short == LONG && long_capable(len) {
        let word = &slot[field::LONG_LENGTH];
        let used = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        (
            field::LONG_PAYLOAD,
            usize::try_from(used).unwrap_or(usize::MAX),
        )
    } else {
        (field::PAYLOAD, usize::from(short))
    };
    if used > max_payload_len(len) {
        return Err(DecodeError::Torn);
    }
    let crc_at = start + used;
    let stored = u32::from_le_bytes([
        slot[crc_at],
        slot[crc_at + 1],
        slot[crc_at + 2],
        slot[crc_at + 3],
    ]);
    if CRC32C.checksum(&slot[..crc_at]) != stored {
        return Err(DecodeError::Torn);
    }
    if start == field::LONG_PAYLOAD && used < usize::from(LONG) {
        // A long frame for a payload a short one holds: no writer makes it.
        return Err(DecodeError::Corrupt(CorruptKind::Length));
    }
    Ok(Frame {
        sequence,
        payload: &slot[start..crc_at],
    })
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

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

    #[test]
    fn long_frames_hold_payloads_beyond_u16() {
        let slot_len = 70_000;
        let mut slot = vec![0xa5u8; slot_len];
        let big: Vec<u8> = (0..=u16::MAX as usize).map(|i| (i % 100) as u8).collect();
        encode_frame(Magic::CUSTOM, 9, &mut slot, |area| {
            area[..big.len()].copy_from_slice(&big);
            Ok(big.len())
        })
        .unwrap();
        let padding = &slot[field::LONG_PAYLOAD + big.len() + field::CRC_LEN..slot_len - 8];
        assert!(padding.iter().all(|&b| b == 0), "padding written");
        assert_eq!(slot[field::LENGTH], [0xff, 0xff]);
        assert_eq!(slot[field::LONG_LENGTH], 65_536u32.to_le_bytes());
        let frame = decode_frame(Magic::CUSTOM, &slot).unwrap();
        assert_eq!((frame.sequence, frame.payload), (9, &big[..]));

        // In the same slot, a payload a short frame holds gets a short frame.
        for n in [0, 1, u16::MAX as usize - 1] {
            let mut slot = vec![0xa5u8; slot_len];
            encode_frame(Magic::CUSTOM, 3, &mut slot, |area| {
                area[..n].copy_from_slice(&big[..n]);
                Ok(n)
            })
            .unwrap();
            assert_eq!(slot[field::LENGTH], (n as u16).to_le_bytes());
            assert_eq!(&slot[field::PAYLOAD..field::PAYLOAD + n], &big[..n]);
            assert!(!slot.contains(&0xa5), "every byte written");
            assert_eq!(
                decode_frame(Magic::CUSTOM, &slot).unwrap().payload,
                &big[..n]
            );
        }

        // A long frame for a short payload, checksummed as a writer would: corrupt.
        let mut odd = vec![0u8; slot_len];
        odd[..4].copy_from_slice(b"NLXC");
        odd[field::VERSION] = VERSION;
        odd[field::LENGTH].copy_from_slice(&[0xff, 0xff]);
        odd[field::SEQUENCE].copy_from_slice(&1u64.to_le_bytes());
        odd[field::LONG_LENGTH].copy_from_slice(&2u32.to_le_bytes());
        odd[20..22].copy_from_slice(b"hi");
        let crc = CRC32C.checksum(&odd[..22]).to_le_bytes();
        odd[22..26].copy_from_slice(&crc);
        odd[slot_len - 8..].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(
            decode_frame(Magic::CUSTOM, &odd),
            Err(DecodeError::Corrupt(CorruptKind::Length))
        );
        // A long length beyond the slot: a tear (or garbage) to read again.
        odd[field::LONG_LENGTH].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_frame(Magic::CUSTOM, &odd), Err(DecodeError::Torn));
    }

    #[test]
    fn small_slots_never_read_a_long_length() {
        // `len` = 0xffff in a 4 KiB slot stays out of range (torn), as it always was.
        let mut slot = [0u8; 4096];
        frame(5, b"abc", &mut slot);
        slot[field::LENGTH].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(decode_frame(Magic::STATUS, &slot), Err(DecodeError::Torn));
        assert_eq!(max_payload_len(4096), 4096 - FRAME_OVERHEAD);
        assert_eq!(max_payload_len(65_566), u16::MAX as usize - 1);
        assert_eq!(max_payload_len(65_567), u16::MAX as usize);
        let mut too_big = vec![0u8; MAX_SLOT_LEN + 1];
        assert_eq!(
            encode_frame(Magic::CUSTOM, 1, &mut too_big, |_| Ok(0)),
            Err(EncodeError::SlotSize)
        );
        assert_eq!(
            decode_frame(Magic::CUSTOM, &too_big),
            Err(DecodeError::Corrupt(CorruptKind::SlotSize))
        );
    }
}
