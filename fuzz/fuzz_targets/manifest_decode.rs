//! The upload manifest, as a guest daemon reads it: no panic, and a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nlxtp_core::record::MANIFEST_LEN;
use nlxtp_core::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::decode(data) {
        let mut again = [0u8; MANIFEST_LEN];
        manifest
            .encode(&mut again)
            .expect("a decoded manifest always fits");
        assert_eq!(Manifest::decode(&again), Ok(manifest));
    }
});
