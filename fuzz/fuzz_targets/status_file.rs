//! The file-level reader given two arbitrary slots: no panic, and the record it returns
//! is one of the two slots' own decodes, the one with the higher sequence number.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::slots::{read_status, STATUS_FILE_LEN};
use nlxtp_core::{StatusRecord, StatusWriter};

fuzz_target!(|data: &[u8]| {
    let _ = read_status(data);
    let mut file = [0u8; STATUS_FILE_LEN];
    let n = data.len().min(STATUS_FILE_LEN);
    file[..n].copy_from_slice(&data[..n]);
    let slots = [
        StatusRecord::decode(&file[..STATUS_SLOT_LEN]).ok(),
        StatusRecord::decode(&file[STATUS_SLOT_LEN..]).ok(),
    ];
    if let Ok(record) = read_status(&file) {
        assert!(slots.iter().flatten().any(|slot| *slot == record));
        assert!(slots
            .iter()
            .flatten()
            .all(|slot| slot.sequence <= record.sequence));
        assert!(
            StatusWriter::resume(&file).next_sequence() > record.sequence
                || record.sequence == u64::MAX
        );
    }
});
