//! Properties of the custom status file (`nlxtp/custom.bin`): round trips, truncations,
//! bit flips, torn slots, and the file-level rules it shares with the status file.

mod common;

use nlxtp_core::custom::{
    custom_text, read_custom, status_prefix, CustomText, CustomWriter, CUSTOM_FILE_LEN,
    CUSTOM_SLOT_LEN, CUSTOM_TEXT_MAX,
};
use nlxtp_core::record::CUSTOM_STATUS_MAX;
use nlxtp_core::wire::{field, EncodeError};
use nlxtp_core::{DecodeError, RunId, StatusRecord};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// An owned text with its run and sequence number, as a test generates it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    sequence: u64,
    run_id: RunId,
    text: String,
}

impl Owned {
    fn view(&self) -> CustomText<'_> {
        CustomText {
            sequence: self.sequence,
            run_id: self.run_id,
            text: &self.text,
        }
    }

    fn is(&self, got: &CustomText<'_>) -> bool {
        self.view() == *got
    }
}

fn encoded(custom: &Owned) -> Vec<u8> {
    let mut slot = vec![0u8; CUSTOM_SLOT_LEN];
    custom.view().encode(&mut slot).unwrap();
    slot
}

/// End of the bytes the checksum covers, plus the checksum itself (short or long frame).
fn covered_len(slot: &[u8]) -> usize {
    let short = u16::from_le_bytes([slot[6], slot[7]]);
    if short == u16::MAX {
        let long = u32::from_le_bytes(slot[field::LONG_LENGTH].try_into().unwrap());
        field::LONG_PAYLOAD + long as usize + field::CRC_LEN
    } else {
        field::PAYLOAD + short as usize + field::CRC_LEN
    }
}

/// A text of about `len` bytes (never more, never beyond the cap) from a mixed alphabet
/// of one- to four-byte characters, so cuts can fall inside a character.
fn text_of(len: usize, seed: u64) -> String {
    const ALPHABET: [&str; 8] = ["a", "b", " ", "\n", "é", "€", "𝄞", "z"];
    let len = len.min(CUSTOM_TEXT_MAX);
    let mut out = String::with_capacity(len);
    let mut x = seed | 1;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let piece = ALPHABET[(x % 8) as usize];
        if out.len() + piece.len() > len {
            break;
        }
        out.push_str(piece);
    }
    while out.len() < len {
        out.push('.');
    }
    out
}

/// Lengths that matter: short, around the record's cap, around the switch from short to
/// long frames (a payload of 65535 bytes: 19 bytes of run id and length, then text),
/// and up to the cap.
fn text() -> impl Strategy<Value = String> {
    let boundary = u16::MAX as usize - 19;
    prop_oneof![
        2 => (0usize..64, any::<u64>()),
        1 => (CUSTOM_STATUS_MAX - 8..CUSTOM_STATUS_MAX + 8, any::<u64>()),
        1 => (boundary - 4..boundary + 4, any::<u64>()),
        1 => (0..=CUSTOM_TEXT_MAX, any::<u64>()),
        1 => (CUSTOM_TEXT_MAX - 4..=CUSTOM_TEXT_MAX, any::<u64>()),
    ]
    .prop_map(|(len, seed)| text_of(len, seed))
}

fn custom() -> impl Strategy<Value = Owned> {
    (any::<u64>(), any::<[u8; 16]>(), text()).prop_map(|(sequence, run, text)| Owned {
        sequence,
        run_id: RunId(run),
        text,
    })
}

/// Two texts, `old` then `new`, that belong in the same slot.
fn old_and_new() -> impl Strategy<Value = (Owned, Owned)> {
    (custom(), custom(), 1..u64::MAX / 4, any::<bool>()).prop_map(
        |(mut old, mut new, seq, same_run)| {
            old.sequence = seq * 2;
            new.sequence = seq * 2 + 2;
            if same_run {
                new.run_id = old.run_id;
            }
            (old, new)
        },
    )
}

fn splice(first: &[u8], second: &[u8], cut: usize) -> Vec<u8> {
    let mut out = first[..cut].to_vec();
    out.extend_from_slice(&second[cut..]);
    out
}

fn assert_old_new_or_error(got: Result<CustomText<'_>, DecodeError>, old: &Owned, new: &Owned) {
    if let Ok(got) = got {
        assert!(
            old.is(&got) || new.is(&got),
            "a torn slot decoded to a third text (sequence {}, {} bytes)",
            got.sequence,
            got.text.len()
        );
    }
}

fn flip(slot: &[u8], bits: impl IntoIterator<Item = usize>) -> Vec<u8> {
    let mut bad = slot.to_vec();
    for bit in bits {
        bad[bit / 8] ^= 1 << (bit % 8);
    }
    bad
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(custom in custom()) {
        let slot = encoded(&custom);
        let got = CustomText::decode(&slot).unwrap();
        prop_assert!(custom.is(&got));
    }

    #[test]
    fn every_truncation_is_rejected(custom in custom(), cut in any::<prop::sample::Index>()) {
        let slot = encoded(&custom);
        // Cuts spread over the slot, and cuts inside the covered bytes.
        for cut in [cut.index(CUSTOM_SLOT_LEN), cut.index(covered_len(&slot))] {
            prop_assert!(CustomText::decode(&slot[..cut]).is_err());
            let mut partial = vec![0u8; CUSTOM_SLOT_LEN];
            partial[..cut].copy_from_slice(&slot[..cut]);
            if partial != slot {
                prop_assert!(CustomText::decode(&partial).is_err());
            }
            let mut file = vec![0u8; CUSTOM_FILE_LEN];
            file[..CUSTOM_SLOT_LEN].copy_from_slice(&slot);
            prop_assert!(read_custom(&file[..cut]).is_err());
        }
    }

    /// CRC-32C has Hamming distance 4 up to 2^31 bits: every error of 1, 2 or 3 bits in
    /// the covered bytes is caught, also in a 64 KiB long frame.
    #[test]
    fn guaranteed_bit_errors_are_rejected(
        custom in custom(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..=3),
    ) {
        let slot = encoded(&custom);
        let bits = covered_len(&slot) * 8;
        let mut positions: Vec<usize> = picks.iter().map(|p| p.index(bits)).collect();
        positions.sort_unstable();
        positions.dedup();
        prop_assert!(CustomText::decode(&flip(&slot, positions)).is_err());
    }

    #[test]
    fn odd_weight_errors_are_rejected(custom in custom(), seed in any::<u64>(), weight in (0usize..20).prop_map(|w| 2 * w + 1)) {
        let slot = encoded(&custom);
        let bits = covered_len(&slot) * 8;
        let mut chosen = std::collections::BTreeSet::new();
        let mut x = seed | 1;
        while chosen.len() < weight.min(bits) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            chosen.insert((x % bits as u64) as usize);
        }
        prop_assert!(CustomText::decode(&flip(&slot, chosen)).is_err());
    }

    #[test]
    fn bursts_up_to_32_bits_are_rejected(custom in custom(), start in any::<prop::sample::Index>(), pattern in 1u32..) {
        let slot = encoded(&custom);
        let bits = covered_len(&slot) * 8;
        let span = 32 - (pattern | 1).leading_zeros() as usize;
        let first = start.index(bits - span + 1);
        let burst = (0..span).filter(|i| (pattern | 1) >> i & 1 == 1).map(|i| first + i);
        prop_assert!(CustomText::decode(&flip(&slot, burst)).is_err());
    }

    #[test]
    fn tail_or_padding_damage_never_changes_the_text(custom in custom(), at in any::<prop::sample::Index>(), flip in 1u8..) {
        let slot = encoded(&custom);
        let mut bad = slot.clone();
        let i = covered_len(&slot) + at.index(CUSTOM_SLOT_LEN - covered_len(&slot));
        bad[i] ^= flip;
        match CustomText::decode(&bad) {
            Ok(got) => prop_assert!(custom.is(&got)),
            Err(e) => prop_assert_eq!(e, DecodeError::Torn),
        }
    }

    #[test]
    fn a_slot_torn_at_any_byte_is_old_new_or_error((old, new) in old_and_new(), cut in any::<prop::sample::Index>()) {
        let (a, b) = (encoded(&old), encoded(&new));
        // Any cut, and cuts where the two differ most: inside the covered bytes.
        let longest = covered_len(&a).max(covered_len(&b));
        for cut in [cut.index(CUSTOM_SLOT_LEN + 1), cut.index(longest + 1)] {
            assert_old_new_or_error(CustomText::decode(&splice(&b, &a, cut)), &old, &new);
            assert_old_new_or_error(CustomText::decode(&splice(&a, &b, cut)), &old, &new);
        }
    }

    /// Disk writes tear at sector boundaries, in any order: every mix of the 136
    /// 512-byte sectors of an old and a new slot is the old text, the new one, or an
    /// error; and header and tail sectors from different writes are caught as torn.
    #[test]
    fn a_slot_torn_at_sectors_in_any_order_is_old_new_or_error((old, new) in old_and_new(), mask in prop::collection::vec(any::<bool>(), CUSTOM_SLOT_LEN / 512)) {
        let (a, b) = (encoded(&old), encoded(&new));
        let mixed: Vec<u8> = mask
            .iter()
            .enumerate()
            .flat_map(|(s, &new_sector)| if new_sector { &b[s * 512..][..512] } else { &a[s * 512..][..512] })
            .copied()
            .collect();
        let got = CustomText::decode(&mixed);
        assert_old_new_or_error(got, &old, &new);
        if mask[0] != mask[mask.len() - 1] {
            prop_assert_eq!(got, Err(DecodeError::Torn));
        }
    }

    /// A write cut off at any byte leaves the file reader on the previous text.
    #[test]
    fn file_reader_returns_the_intact_slot((old, new) in old_and_new(), cut in 1..CUSTOM_SLOT_LEN, junk in any::<u8>()) {
        let mut writer = CustomWriter::new();
        let mut file = vec![0u8; CUSTOM_FILE_LEN];
        let mut slot = vec![0u8; CUSTOM_SLOT_LEN];
        let at = writer.encode(old.run_id, &old.text, &mut slot).unwrap();
        file[at..at + CUSTOM_SLOT_LEN].copy_from_slice(&slot);
        let at_next = writer.encode(new.run_id, &new.text, &mut slot).unwrap();
        prop_assert_ne!(at, at_next);
        let torn = &mut file[at_next..at_next + CUSTOM_SLOT_LEN];
        torn[..cut].copy_from_slice(&slot[..cut]);
        torn[cut..].fill(junk);
        let complete = file[at_next..at_next + CUSTOM_SLOT_LEN] == slot[..];
        let got = read_custom(&file).unwrap();
        let want = if complete { (2, &new) } else { (1, &old) };
        prop_assert_eq!((got.sequence, got.run_id, got.text), (want.0, want.1.run_id, want.1.text.as_str()));
    }

    /// Helpers that die at any point of any write, each next one resuming from the file:
    /// the reader only ever sees whole texts, and the newest complete one at the end.
    #[test]
    fn writers_die_and_resume(texts in prop::collection::vec(text(), 2..5), crash_at in any::<prop::sample::Index>(), cut in 0..CUSTOM_SLOT_LEN) {
        let run = RunId([3; 16]);
        let mut file = vec![0u8; CUSTOM_FILE_LEN];
        let crash = crash_at.index(texts.len());
        let mut written: Vec<&str> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let mut writer = CustomWriter::resume(&file);
            let at = writer.next_offset();
            let mut slot = vec![0u8; CUSTOM_SLOT_LEN];
            prop_assert_eq!(writer.encode(run, text, &mut slot), Ok(at));
            let n = if i == crash { cut } else { CUSTOM_SLOT_LEN };
            file[at..at + n].copy_from_slice(&slot[..n]);
            if file[at..at + CUSTOM_SLOT_LEN] == slot[..] {
                written.push(text);
            }
            match read_custom(&file) {
                Ok(got) => prop_assert_eq!(Some(&got.text), written.last()),
                Err(e) => prop_assert!(written.is_empty(), "{:?}", e),
            }
        }
    }
}

#[test]
fn every_byte_cut_of_one_long_pair() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut old, mut new) = old_and_new().new_tree(&mut runner).unwrap().current();
    old.text = text_of(CUSTOM_TEXT_MAX, 1);
    new.text = text_of(60_000, 2);
    let (a, b) = (encoded(&old), encoded(&new));
    let mut outcomes = [0usize; 3];
    // Every cut in the covered bytes and the first and last sectors; the rest is padding.
    let cuts = (0..=covered_len(&a) + 8).chain(CUSTOM_SLOT_LEN - 600..=CUSTOM_SLOT_LEN);
    for cut in cuts {
        for mixed in [splice(&b, &a, cut), splice(&a, &b, cut)] {
            match CustomText::decode(&mixed) {
                Ok(got) if old.is(&got) => outcomes[0] += 1,
                Ok(got) if new.is(&got) => outcomes[1] += 1,
                Ok(got) => panic!("cut at {cut} gave a third text {}", got.sequence),
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
fn text_over_the_cap_is_refused() {
    let mut slot = vec![0u8; CUSTOM_SLOT_LEN];
    let long = "x".repeat(CUSTOM_TEXT_MAX + 1);
    let mut writer = CustomWriter::new();
    assert_eq!(
        writer.encode(RunId::default(), &long, &mut slot),
        Err(EncodeError::TooLarge)
    );
    assert_eq!(
        writer.next_sequence(),
        1,
        "the sequence number is not used up"
    );
    assert_eq!(
        writer.encode(RunId::default(), "", &mut slot[1..]),
        Err(EncodeError::SlotSize)
    );
    let full = "x".repeat(CUSTOM_TEXT_MAX);
    assert_eq!(
        writer.encode(RunId::default(), &full, &mut slot),
        Ok(CUSTOM_SLOT_LEN)
    );
}

#[test]
fn file_sizes_empty_slots_and_wrong_slots() {
    assert_eq!(
        read_custom(&[]).map(|c| c.sequence),
        Err(DecodeError::NotThereYet)
    );
    assert_eq!(
        read_custom(&vec![0; CUSTOM_FILE_LEN]).map(|c| c.sequence),
        Err(DecodeError::NotThereYet)
    );
    assert_eq!(
        read_custom(&[0; 100]).map(|c| c.sequence),
        Err(DecodeError::Torn)
    );
    assert!(matches!(
        read_custom(&vec![0; CUSTOM_FILE_LEN + 1]),
        Err(DecodeError::Corrupt(_))
    ));
    let mut file = vec![0u8; CUSTOM_FILE_LEN];
    let text = CustomText {
        sequence: 2,
        run_id: RunId([1; 16]),
        text: "in the wrong slot",
    };
    text.encode(&mut file[CUSTOM_SLOT_LEN..]).unwrap();
    assert!(matches!(read_custom(&file), Err(DecodeError::Corrupt(_))));
}

#[test]
fn a_host_shows_the_full_text_of_the_records_run_only() {
    let run = RunId([9; 16]);
    let full = text_of(9_400, 7);
    let mut record = StatusRecord {
        run_id: run,
        ..Default::default()
    };
    record.custom.push_str(status_prefix(&full)).unwrap();
    assert!(record.custom.len() <= CUSTOM_STATUS_MAX && full.starts_with(record.custom.as_str()));

    let mut file = vec![0u8; CUSTOM_FILE_LEN];
    // No file, or nothing written yet: the record's own text.
    assert_eq!(custom_text(&record, &[]), Ok(record.custom.as_str()));
    assert_eq!(custom_text(&record, &file), Ok(record.custom.as_str()));

    let mut writer = CustomWriter::new();
    let at = writer.next_offset();
    writer
        .encode(run, &full, &mut file[at..at + CUSTOM_SLOT_LEN])
        .unwrap();
    assert_eq!(custom_text(&record, &file), Ok(full.as_str()));

    // A file of another run (an upload by an older host kept it): not this run's text.
    let other = StatusRecord {
        run_id: RunId([1; 16]),
        ..record.clone()
    };
    assert_eq!(custom_text(&other, &file), Ok(other.custom.as_str()));

    // Being created, or torn in both slots: read again.
    assert_eq!(custom_text(&record, &file[..1000]), Err(DecodeError::Torn));
    let mut torn = file.clone();
    torn[at + 100] ^= 1;
    assert_eq!(custom_text(&record, &torn), Err(DecodeError::Torn));
    // An unknown later version: final for these bytes; the host falls back itself.
    let mut newer = file.clone();
    newer[at + field::VERSION] = 2;
    assert_eq!(
        custom_text(&record, &newer),
        Err(DecodeError::UnsupportedVersion(2))
    );
}
