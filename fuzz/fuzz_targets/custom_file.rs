//! The custom status file (`nlxtp/custom.bin`) from a hostile guest, as the host reads
//! it for a long custom status: picking the newest slot must not panic, and a text that
//! decodes must encode back to a slot that decodes to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nlxtp_core::custom::{custom_text, read_custom, CustomText, CUSTOM_FILE_LEN, CUSTOM_SLOT_LEN};
use nlxtp_core::StatusRecord;

fuzz_target!(|data: &[u8]| {
    // The raw input covers files of every size; a whole file, padded, covers the slots.
    let _ = read_custom(data);
    let mut file = vec![0u8; CUSTOM_FILE_LEN];
    let n = data.len().min(CUSTOM_FILE_LEN);
    file[..n].copy_from_slice(&data[..n]);
    let record = StatusRecord::default();
    let _ = custom_text(&record, &file);
    if let Ok(text) = read_custom(&file) {
        assert!(text.text.len() <= nlxtp_core::custom::CUSTOM_TEXT_MAX);
        let mut slot = vec![0u8; CUSTOM_SLOT_LEN];
        text.encode(&mut slot)
            .expect("a decoded text always fits its slot");
        assert_eq!(CustomText::decode(&slot), Ok(text));
    }
});
