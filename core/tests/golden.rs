//! Golden bytes of the wire format. A change here is a protocol change: bump the version.

mod common;

use std::fmt::Write;

use nlxtp_core::custom::{
    read_custom, CustomText, CustomWriter, CUSTOM_FILE_LEN, CUSTOM_SLOT_LEN, CUSTOM_TEXT_MAX,
};
use nlxtp_core::record::{MANIFEST_LEN, STATUS_SLOT_LEN};
use nlxtp_core::slots::STATUS_FILE_LEN;
use nlxtp_core::wire::FRAME_OVERHEAD;
use nlxtp_core::{
    AbortReason, BootId, Manifest, OutputInfo, RunId, RunState, StatusRecord, StatusWriter,
};

/// Hex dump of the used bytes, with runs of zero lines folded, as `xxd` would show.
fn dump(bytes: &[u8]) -> String {
    dump_from(bytes, 0)
}

/// [`dump`] of bytes that start at offset `base` of their slot.
fn dump_from(bytes: &[u8], base: usize) -> String {
    let mut out = String::new();
    let mut folded = false;
    for (n, line) in bytes.chunks(16).enumerate() {
        if line.iter().all(|&b| b == 0) && n > 0 && (n + 1) * 16 < bytes.len() {
            if !folded {
                out.push_str("*\n");
                folded = true;
            }
            continue;
        }
        folded = false;
        write!(out, "{:04x}:", base + n * 16).unwrap();
        for b in line {
            write!(out, " {b:02x}").unwrap();
        }
        out.push('\n');
    }
    out
}

fn example_record() -> StatusRecord {
    let mut rec = StatusRecord {
        sequence: 5,
        run_id: RunId::from_hex("0123456789abcdef0123456789abcdef").unwrap(),
        boot_id: BootId::from_hex("c0ffee00-0000-4000-8000-00000000beef").unwrap(),
        state: RunState::Exited(3),
        heartbeat: 12,
        heartbeat_interval_ms: 2_000,
        stdout: OutputInfo {
            bytes: 300,
            truncated: false,
        },
        stderr: OutputInfo {
            bytes: 0,
            truncated: true,
        },
        started_unix: Some(1_700_000_000),
        updated_unix: 1_700_000_024,
        finished_unix: Some(1_700_000_024),
        ..Default::default()
    };
    rec.custom.push_str("step 2/3: ok").unwrap();
    rec
}

#[test]
fn status_slot_bytes() {
    let mut slot = [0xa5u8; STATUS_SLOT_LEN];
    example_record().encode(&mut slot).unwrap();
    assert!(!slot.contains(&0xa5), "every byte of the slot is written");
    insta::assert_snapshot!(dump(&slot));
    assert_eq!(StatusRecord::decode(&slot), Ok(example_record()));
}

#[test]
fn manifest_bytes() {
    let manifest = Manifest {
        run_id: RunId::from_hex("0123456789abcdef0123456789abcdef").unwrap(),
        created_unix: 1_700_000_000,
        timeout_secs: Some(600),
        heartbeat_interval_ms: None,
        output_cap_bytes: Some(16 << 20),
    };
    let mut file = [0xa5u8; MANIFEST_LEN];
    manifest.encode(&mut file).unwrap();
    assert!(!file.contains(&0xa5));
    insta::assert_snapshot!(dump(&file));
    assert_eq!(Manifest::decode(&file), Ok(manifest));
}

#[test]
fn writer_places_records_alternately() {
    let mut file = vec![0u8; STATUS_FILE_LEN];
    let mut writer = StatusWriter::new();
    let mut slot = [0u8; STATUS_SLOT_LEN];
    let mut rec = example_record();
    for expected_seq in 1..=4u64 {
        let at = writer.encode(&mut rec, &mut slot).unwrap();
        assert_eq!(rec.sequence, expected_seq);
        assert_eq!(at, (expected_seq as usize % 2) * STATUS_SLOT_LEN);
        file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
        assert_eq!(
            nlxtp_core::slots::read_status(&file).unwrap().sequence,
            expected_seq
        );
    }
    assert_eq!(StatusWriter::resume(&file).next_sequence(), 5);
}

#[test]
fn largest_record_fits_with_room_to_spare() {
    let rec = common::largest_record();
    assert!(
        rec.custom.len() >= 3_000,
        "the brief asks for at least 3000 bytes of custom text"
    );
    let mut slot = [0u8; STATUS_SLOT_LEN];
    rec.encode(&mut slot).unwrap();
    assert_eq!(StatusRecord::decode(&slot), Ok(rec.clone()));
    let used = u16::from_le_bytes([slot[6], slot[7]]) as usize;
    let room = STATUS_SLOT_LEN - FRAME_OVERHEAD - used;
    insta::assert_snapshot!(format!("payload {used} bytes, {room} bytes spare"));
}

#[test]
fn custom_slot_bytes() {
    let custom = CustomText {
        sequence: 5,
        run_id: RunId::from_hex("0123456789abcdef0123456789abcdef").unwrap(),
        text: "step 2/3: ok",
    };
    let mut slot = vec![0xa5u8; CUSTOM_SLOT_LEN];
    custom.encode(&mut slot).unwrap();
    assert!(!slot.contains(&0xa5), "every byte of the slot is written");
    insta::assert_snapshot!(dump(&slot));
    assert_eq!(CustomText::decode(&slot), Ok(custom));
}

/// The longest text: a long frame (length field 0xffff, the real length at 16..20). The
/// snapshot shows the header, the end of the payload with the CRC, and the tail.
#[test]
fn custom_long_slot_bytes() {
    let text = "x".repeat(CUSTOM_TEXT_MAX);
    let custom = CustomText {
        sequence: 6,
        run_id: RunId::from_hex("0123456789abcdef0123456789abcdef").unwrap(),
        text: &text,
    };
    let mut slot = vec![0xa5u8; CUSTOM_SLOT_LEN];
    custom.encode(&mut slot).unwrap();
    assert!(!slot.contains(&0xa5), "every byte of the slot is written");
    let payload = 16 + 3 + CUSTOM_TEXT_MAX;
    let crc_at = 20 + payload;
    let shown = format!(
        "header\n{}payload {payload} bytes; end of payload, crc, padding\n{}tail\n{}",
        dump(&slot[..48]),
        dump_from(&slot[crc_at - 16..crc_at + 16], crc_at - 16),
        dump_from(&slot[CUSTOM_SLOT_LEN - 16..], CUSTOM_SLOT_LEN - 16),
    );
    insta::assert_snapshot!(shown);
    assert!(slot[crc_at + 4..CUSTOM_SLOT_LEN - 8]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(CustomText::decode(&slot), Ok(custom));
}

#[test]
fn custom_writer_places_texts_alternately() {
    let mut file = vec![0u8; CUSTOM_FILE_LEN];
    let mut writer = CustomWriter::new();
    let mut slot = vec![0u8; CUSTOM_SLOT_LEN];
    let run = RunId([1; 16]);
    for (expected_seq, text) in (1..=4u64).zip(["", "one", "two", "three"]) {
        assert_eq!(writer.next_sequence(), expected_seq);
        let at = writer.encode(run, text, &mut slot).unwrap();
        assert_eq!(at, (expected_seq as usize % 2) * CUSTOM_SLOT_LEN);
        file[at..at + CUSTOM_SLOT_LEN].copy_from_slice(&slot);
        let newest = read_custom(&file).unwrap();
        assert_eq!((newest.sequence, newest.text), (expected_seq, text));
    }
    assert_eq!(CustomWriter::resume(&file).next_sequence(), 5);
    assert_eq!((CUSTOM_SLOT_LEN, CUSTOM_FILE_LEN), (69_632, 139_264));
}

/// "Stopped by the system" is kind 5 (aborted) with detail 256 + the signal: a reader that
/// predates it still decodes the record and sees a run that has ended.
#[test]
fn stopped_by_the_system_is_aborted_with_detail_256_plus_signal() {
    let stopped = StatusRecord {
        state: RunState::Aborted(AbortReason::StoppedBySystem(15)),
        ..example_record()
    };
    let as_written = StatusRecord {
        state: RunState::Unknown {
            kind: 5,
            terminal: true,
            detail: 256 + 15,
        },
        ..example_record()
    };
    let (mut a, mut b) = ([0xa5u8; STATUS_SLOT_LEN], [0xa5u8; STATUS_SLOT_LEN]);
    stopped.encode(&mut a).unwrap();
    as_written.encode(&mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(StatusRecord::decode(&a).unwrap().state, stopped.state);
    assert_eq!(
        stopped.state.to_string(),
        "aborted: stopped by the system (signal 15)"
    );
    assert!(stopped.state.is_terminal());
}
