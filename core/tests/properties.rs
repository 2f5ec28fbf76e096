//! Properties of the wire format: round trips, truncations, bit flips, torn slots.

mod common;

use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::slots::{read_status, slot_offset, STATUS_FILE_LEN};
use nlxtp_core::wire::field;
use nlxtp_core::{DecodeError, StatusReader, StatusRecord, StatusWriter};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

fn encoded(rec: &StatusRecord) -> Vec<u8> {
    let mut slot = vec![0u8; STATUS_SLOT_LEN];
    rec.encode(&mut slot).unwrap();
    slot
}

/// End of the bytes the checksum covers, plus the checksum itself.
fn covered_len(slot: &[u8]) -> usize {
    field::PAYLOAD + u16::from_le_bytes([slot[6], slot[7]]) as usize + field::CRC_LEN
}

/// Two records of one run, `old` then `new`, that belong in the same slot.
fn old_and_new() -> impl Strategy<Value = (StatusRecord, StatusRecord)> {
    (common::record(), common::record(), 1..u64::MAX / 4).prop_map(|(mut old, mut new, seq)| {
        old.sequence = seq * 2;
        new.sequence = seq * 2 + 2;
        new.run_id = old.run_id;
        (old, new)
    })
}

fn splice(first: &[u8], second: &[u8], cut: usize) -> Vec<u8> {
    let mut out = first[..cut].to_vec();
    out.extend_from_slice(&second[cut..]);
    out
}

fn assert_old_new_or_error(
    got: Result<StatusRecord, DecodeError>,
    old: &StatusRecord,
    new: &StatusRecord,
) {
    if let Ok(rec) = got {
        assert!(
            rec == *old || rec == *new,
            "a torn slot decoded to a third record: {rec:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(rec in common::record()) {
        prop_assert_eq!(StatusRecord::decode(&encoded(&rec)), Ok(rec));
    }

    #[test]
    fn every_truncation_is_rejected(rec in common::record(), cut in 0..STATUS_SLOT_LEN) {
        let slot = encoded(&rec);
        // As given to decode: a short slot.
        prop_assert!(StatusRecord::decode(&slot[..cut]).is_err());
        // As a first write cut off over zeroed space: the rest of the slot never arrived.
        let mut partial = vec![0u8; STATUS_SLOT_LEN];
        partial[..cut].copy_from_slice(&slot[..cut]);
        // Unless everything after the cut was zero anyway: then the write was complete.
        if partial != slot {
            prop_assert!(StatusRecord::decode(&partial).is_err());
        }
        // As a status file cut short while it was being created.
        let mut file = vec![0u8; STATUS_FILE_LEN];
        file[..STATUS_SLOT_LEN].copy_from_slice(&slot);
        prop_assert!(read_status(&file[..cut]).is_err());
    }

    /// CRC-32C over at most 4084 covered bytes has Hamming distance 4: every error of 1, 2
    /// or 3 bits is caught, and so is every odd number of bits (the polynomial has x+1 as
    /// a factor) and every burst of up to 32 bits.
    #[test]
    fn guaranteed_bit_errors_are_rejected(
        rec in common::record(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..=3),
    ) {
        let slot = encoded(&rec);
        let bits = covered_len(&slot) * 8;
        let mut positions: Vec<usize> = picks.iter().map(|p| p.index(bits)).collect();
        positions.sort_unstable();
        positions.dedup();
        let mut bad = slot.clone();
        for bit in positions {
            bad[bit / 8] ^= 1 << (bit % 8);
        }
        prop_assert!(StatusRecord::decode(&bad).is_err());
    }

    #[test]
    fn odd_weight_errors_are_rejected(rec in common::record(), seed in any::<u64>(), weight in (0usize..20).prop_map(|w| 2 * w + 1)) {
        let slot = encoded(&rec);
        let bits = covered_len(&slot) * 8;
        let mut chosen = std::collections::BTreeSet::new();
        let mut x = seed | 1;
        while chosen.len() < weight.min(bits) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17; // xorshift
            chosen.insert((x % bits as u64) as usize);
        }
        let mut bad = slot.clone();
        for bit in chosen {
            bad[bit / 8] ^= 1 << (bit % 8);
        }
        prop_assert!(StatusRecord::decode(&bad).is_err());
    }

    #[test]
    fn bursts_up_to_32_bits_are_rejected(rec in common::record(), start in any::<prop::sample::Index>(), pattern in 1u32..) {
        let slot = encoded(&rec);
        let bits = covered_len(&slot) * 8;
        // A burst starts and ends with a flipped bit; `pattern | 1` starts it at `first`.
        let span = 32 - (pattern | 1).leading_zeros() as usize;
        let first = start.index(bits - span + 1);
        let mut bad = slot.clone();
        for i in 0..span {
            if (pattern | 1) >> i & 1 == 1 {
                let bit = first + i;
                bad[bit / 8] ^= 1 << (bit % 8);
            }
        }
        prop_assert!(StatusRecord::decode(&bad).is_err());
    }

    #[test]
    fn tail_or_padding_damage_never_changes_the_record(rec in common::record(), at in any::<prop::sample::Index>(), flip in 1u8..) {
        let slot = encoded(&rec);
        let mut bad = slot.clone();
        let i = covered_len(&slot) + at.index(STATUS_SLOT_LEN - covered_len(&slot));
        bad[i] ^= flip;
        match StatusRecord::decode(&bad) {
            Ok(got) => prop_assert_eq!(got, rec),
            Err(e) => prop_assert_eq!(e, DecodeError::Torn),
        }
    }

    #[test]
    fn a_slot_torn_at_any_byte_is_old_new_or_error((old, new) in old_and_new(), cut in 0..=STATUS_SLOT_LEN) {
        let (a, b) = (encoded(&old), encoded(&new));
        assert_old_new_or_error(StatusRecord::decode(&splice(&b, &a, cut)), &old, &new);
        assert_old_new_or_error(StatusRecord::decode(&splice(&a, &b, cut)), &old, &new);
    }

    /// Disk writes tear at sector boundaries, in any order of sectors: every mix of the
    /// eight 512-byte sectors of the old and the new slot.
    #[test]
    fn a_slot_torn_at_sectors_in_any_order_is_old_new_or_error((old, new) in old_and_new(), mask in 0u8..=255) {
        let (a, b) = (encoded(&old), encoded(&new));
        let mixed: Vec<u8> = (0..8)
            .flat_map(|s| if mask >> s & 1 == 1 { &b[s * 512..][..512] } else { &a[s * 512..][..512] })
            .copied()
            .collect();
        let got = StatusRecord::decode(&mixed);
        assert_old_new_or_error(got.clone(), &old, &new);
        if mask != 0 && mask != 255 && (mask & 1) != (mask >> 7 & 1) {
            // Header sector and tail sector from different writes: caught without the CRC.
            prop_assert_eq!(got, Err(DecodeError::Torn));
        }
    }

    /// The file-level reader with one slot torn (as a crash or a concurrent read leaves
    /// it) and the other intact returns the intact record.
    #[test]
    fn file_reader_returns_the_intact_slot((old, new) in old_and_new(), cut in 1..STATUS_SLOT_LEN, junk in any::<u8>()) {
        let mut writer = StatusWriter::new();
        let mut file = vec![0u8; STATUS_FILE_LEN];
        let mut slot = vec![0u8; STATUS_SLOT_LEN];
        // The last complete record, in its slot.
        let mut prev = old.clone();
        let at = writer.encode(&mut prev, &mut slot).unwrap();
        file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
        // The next write, cut off: the slot holds a prefix of it and junk behind.
        let mut next = new.clone();
        let at_next = writer.encode(&mut next, &mut slot).unwrap();
        prop_assert_ne!(at, at_next);
        let torn = &mut file[at_next..at_next + STATUS_SLOT_LEN];
        torn[..cut].copy_from_slice(&slot[..cut]);
        torn[cut..].fill(junk);
        // Junk that happens to equal the rest of the slot completes the write.
        let complete = file[at_next..at_next + STATUS_SLOT_LEN] == slot[..];
        prop_assert_eq!(read_status(&file), Ok(if complete { next } else { prev }));
    }

    /// A writer that crashes at any point of any write, resumed after the "reboot":
    /// readers only ever see complete records, and never one older than one seen.
    #[test]
    fn writer_crashes_and_resumes(recs in prop::collection::vec(common::record(), 2..6), crash_at in any::<prop::sample::Index>(), cut in 0..STATUS_SLOT_LEN) {
        let mut file = vec![0u8; STATUS_FILE_LEN];
        let mut writer = StatusWriter::new();
        let mut reader = StatusReader::new();
        let mut slot = vec![0u8; STATUS_SLOT_LEN];
        let crash = crash_at.index(recs.len());
        let mut written = Vec::new();
        for (i, rec) in recs.iter().enumerate() {
            let mut rec = rec.clone();
            rec.run_id = recs[0].run_id;
            let at = writer.encode(&mut rec, &mut slot).unwrap();
            if i == crash {
                file[at..at + cut].copy_from_slice(&slot[..cut]);
                writer = StatusWriter::resume(&file);
                // A cut after the last byte that differs from what the slot already held
                // (the tail's zero high bytes, say) left the write complete after all.
                if file[at..at + STATUS_SLOT_LEN] == slot[..] {
                    written.push(rec.clone());
                    prop_assert_eq!(reader.read(&file), Ok(rec));
                }
                continue;
            }
            file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
            written.push(rec.clone());
            prop_assert_eq!(reader.read(&file), Ok(rec));
        }
        let newest = read_status(&file).ok();
        prop_assert_eq!(newest.as_ref(), written.last());
    }
}

#[test]
fn every_byte_cut_of_one_pair() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (old, new) = old_and_new().new_tree(&mut runner).unwrap().current();
    let (a, b) = (encoded(&old), encoded(&new));
    let mut outcomes = [0usize; 3];
    for cut in 0..=STATUS_SLOT_LEN {
        for mixed in [splice(&b, &a, cut), splice(&a, &b, cut)] {
            match StatusRecord::decode(&mixed) {
                Ok(rec) if rec == old => outcomes[0] += 1,
                Ok(rec) if rec == new => outcomes[1] += 1,
                Ok(rec) => panic!("cut at {cut} gave a third record {rec:?}"),
                Err(_) => outcomes[2] += 1,
            }
        }
    }
    assert!(
        outcomes.iter().all(|&n| n > 0),
        "old, new and error all occur: {outcomes:?}"
    );
}

#[test]
fn stale_records_are_refused() {
    let mut writer = StatusWriter::new();
    let mut file = vec![0u8; STATUS_FILE_LEN];
    let mut slot = vec![0u8; STATUS_SLOT_LEN];
    let mut rec = common::largest_record();
    let mut snapshots = Vec::new();
    for _ in 0..3 {
        let at = writer.encode(&mut rec, &mut slot).unwrap();
        file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
        snapshots.push(file.clone());
    }
    let mut reader = StatusReader::new();
    assert_eq!(reader.read(&snapshots[2]).unwrap().sequence, 3);
    assert_eq!(
        reader.read(&snapshots[0]),
        Err(DecodeError::Stale { seen: 3, got: 1 })
    );
    assert_eq!(reader.read(&snapshots[2]).unwrap().sequence, 3);
    assert_eq!(slot_offset(3), STATUS_SLOT_LEN);
}

#[test]
fn file_sizes_and_empty_slots() {
    assert_eq!(read_status(&[]), Err(DecodeError::NotThereYet));
    assert_eq!(
        read_status(&vec![0; STATUS_FILE_LEN]),
        Err(DecodeError::NotThereYet)
    );
    assert_eq!(read_status(&[0; 100]), Err(DecodeError::Torn));
    assert!(matches!(
        read_status(&vec![0; STATUS_FILE_LEN + 1]),
        Err(DecodeError::Corrupt(_))
    ));
    // A valid record in the wrong slot for its sequence number.
    let mut rec = common::largest_record();
    rec.sequence = 2;
    let mut file = vec![0u8; STATUS_FILE_LEN];
    rec.encode(&mut file[STATUS_SLOT_LEN..]).unwrap();
    assert!(matches!(read_status(&file), Err(DecodeError::Corrupt(_))));
}
