//! One status slot from a hostile guest: decode must not panic, and whatever decodes
//! must encode back to a slot that decodes to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::StatusRecord;

fuzz_target!(|data: &[u8]| {
    // Give the decoder whole slots most of the time; the raw input covers other sizes.
    let _ = StatusRecord::decode(data);
    let mut slot = [0u8; STATUS_SLOT_LEN];
    let n = data.len().min(STATUS_SLOT_LEN);
    slot[..n].copy_from_slice(&data[..n]);
    if let Ok(record) = StatusRecord::decode(&slot) {
        let mut again = [0u8; STATUS_SLOT_LEN];
        record
            .encode(&mut again)
            .expect("a decoded record always fits its slot");
        assert_eq!(StatusRecord::decode(&again), Ok(record));
    }
});
