//! A whole vFAT image from a hostile guest, read the way `nlxtp status`, `nlxtp download`
//! and the FUSE view read it: the status fast path, a walk reading every file, reads by
//! name, the live ring, a download packed into nothing. No panic, no hang, bounded memory,
//! and every file reader yields exactly the size the walk announced.
//!
//! The input is the image, padded with zeros up to the size its boot sector claims, or
//! for a partitioned image the end of its last MBR entry (at most 40 MiB, room for the
//! smallest FAT32), so seeds can stop after their last non-zero byte.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nlxtp_core::live::LIVE_FILE_LEN;
use nlxtp_core::slots::STATUS_FILE_LEN;
use nlxtp_core::{layout, StatusReader};
use nlxtp_host::area::vfat::VfatImage;
use nlxtp_host::area::{
    read_status, AreaPath, EntryKind, Patience, SharedArea, StatusRead, WalkLimits,
};
use nlxtp_host::ops::archive::{write_download, Compression};
use nlxtp_host::ops::logs::{Follower, Streams};

/// The largest image the padding makes.
const MAX_IMAGE: u64 = 40 << 20;

/// Files read again by name, at most: each read checks the whole FAT again, and the
/// walk has already read every file once.
const MAX_READS: usize = 2;

fn image_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| scratch::dir("vfat_image").join("fuzz.img"))
}

/// The image length the boot sector claims, if it is plausible and larger than `data`.
fn claimed_len(data: &[u8]) -> Option<u64> {
    let u16_at = |at: usize| {
        Some(u64::from(u16::from_le_bytes([
            *data.get(at)?,
            *data.get(at + 1)?,
        ])))
    };
    let sector = u16_at(11)?;
    let total = match u16_at(19)? {
        0 => u64::from(u32::from_le_bytes(data.get(32..36)?.try_into().ok()?)),
        n => n,
    };
    let len = match sector.checked_mul(total)? {
        0 => partitioned_len(data)?,
        len => len,
    };
    (len > data.len() as u64 && len <= MAX_IMAGE).then_some(len)
}

/// The end of the furthest MBR entry (a GPT's protective entry covers the disk).
fn partitioned_len(data: &[u8]) -> Option<u64> {
    if data.get(510..512)? != [0x55, 0xAA] {
        return None;
    }
    (0..4)
        .filter_map(|i| {
            let entry = data.get(446 + 16 * i..462 + 16 * i)?;
            let start = u64::from(u32::from_le_bytes(entry[8..12].try_into().ok()?));
            let sectors = u64::from(u32::from_le_bytes(entry[12..16].try_into().ok()?));
            Some((start + sectors + 1) * 512)
        })
        .max()
}

fn write_image(path: &Path, data: &[u8]) {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("the fuzz image opens");
    file.write_all(data).expect("the fuzz image is written");
    if let Some(len) = claimed_len(data) {
        file.set_len(len).expect("the fuzz image is padded");
    }
}

fuzz_target!(|data: &[u8]| {
    let path = image_path();
    write_image(path, data);
    let area = VfatImage::new(path);

    // The status fast path, both ways, and the whole status read without waiting.
    let mut buf = Vec::new();
    for how in [StatusRead::Cached, StatusRead::Cached, StatusRead::Relocate] {
        if area.read_status_file(how, &mut buf).is_ok() {
            assert!(
                buf.len() <= STATUS_FILE_LEN + 1,
                "status read of {} bytes",
                buf.len()
            );
        }
    }
    let no_wait = Patience {
        pause: Duration::ZERO,
        give_up_after: Duration::ZERO,
    };
    let _ = read_status(&area, &mut StatusReader::new(), no_wait);

    // A walk that reads every file, as a download or a FUSE `read` of each file does.
    let limits = WalkLimits {
        max_entries: 10_000,
        max_depth: 32,
        max_total_bytes: 64 << 20,
    };
    let mut files = Vec::new();
    let _ = area.walk(&limits, &mut |entry, reader| {
        match (entry.kind, reader) {
            (EntryKind::File, Some(reader)) => {
                let got = io::copy(&mut reader.take(entry.size + 1), &mut io::sink())?;
                assert_eq!(got, entry.size, "{} yields its size", entry.path);
                files.push(entry.path.clone());
            }
            (EntryKind::File, None) => panic!("{} came without a reader", entry.path),
            (EntryKind::Dir, _) => {}
        }
        Ok(())
    });
    // Reads by name, as the FUSE view and `status` do: each opens and checks the whole
    // volume again, the bulk of the time per input, so only a few.
    for path in files.iter().take(MAX_READS) {
        if let Ok(bytes) = area.read_file(path, 1 << 20) {
            assert!(bytes.len() <= 1 << 20);
        }
    }
    for name in [layout::START_SCRIPT, "NLXTP/STATUS.BIN"] {
        let path = AreaPath::new(name).expect("a valid area path");
        if let Ok(bytes) = area.read_file(&path, 1 << 16) {
            assert!(bytes.len() <= 1 << 16);
        }
    }

    // The live ring, as `nlxtp logs -f` reads it.
    let live = AreaPath::new(layout::LIVE_FILE).expect("a valid area path");
    if let Ok(ring) = area.read_file(&live, LIVE_FILE_LEN as u64) {
        let mut follower = Follower::new(Streams::Both);
        follower.take(&ring, &mut |_, bytes| assert!(!bytes.is_empty()));
    }

    // A download, packed into nothing.
    let _ = write_download(&area, io::sink(), Compression::None, &limits, &mut |_| {});
});
