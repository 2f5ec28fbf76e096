//! Status read speed on a 64 MiB image, side by side in one run:
//!
//! - `cached`: [`SharedArea::read_status_file`] on the remembered clusters (the fast path:
//!   one stat, one 32-byte pread of the directory entry, one 8 KiB pread);
//! - `decoded`: the same plus decoding, through [`read_status`];
//! - `relocate`: looking the file up again every time (boot sector, whole FAT check,
//!   two directories), the baseline the cache avoids;
//! - `fatfs`: mounting the image with fatfs and reading the file, what a library-based
//!   reader would do per read (on this trusted image only).
//!
//! `cargo bench -p nlxtp-host --bench status_read`. A plain timing loop: median of 15
//! batches, each timed whole.

use std::hint::black_box;
use std::io::Read;
use std::time::{Duration, Instant};

use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::slots::{StatusWriter, STATUS_FILE_LEN};
use nlxtp_core::{RunState, StatusReader, StatusRecord};
use nlxtp_host::area::vfat::{create_image, VfatImage};
use nlxtp_host::area::{read_status, Patience, SharedArea, StatusRead, UploadFile};

fn median_per_op(batch: u32, mut op: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..15)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                op();
            }
            start.elapsed() / batch
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn status_bytes() -> Vec<u8> {
    let mut rec = StatusRecord {
        state: RunState::Running,
        heartbeat_interval_ms: 1000,
        ..Default::default()
    };
    rec.custom.push_str("benchmark").unwrap();
    let mut file = vec![0u8; STATUS_FILE_LEN];
    let mut slot = [0u8; STATUS_SLOT_LEN];
    let at = StatusWriter::new().encode(&mut rec, &mut slot).unwrap();
    file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
    file
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10}",
        "FAT", "cached", "decoded", "relocate", "fatfs"
    );
    for bits in [16u8, 32] {
        let img = dir.path().join(format!("fat{bits}.img"));
        create_image(&img, 64 << 20, Some(bits), None).unwrap();
        let area = VfatImage::new(&img);
        let mut files: Vec<UploadFile> = (0..200)
            .map(|i| UploadFile::bytes(&format!("out/file {i}.txt"), vec![b'x'; 1000 + i]).unwrap())
            .collect();
        files.push(UploadFile::bytes("nlxtp/status.bin", status_bytes()).unwrap());
        area.replace(files).unwrap();

        let mut buf = Vec::new();
        let cached = median_per_op(20_000, || {
            area.read_status_file(StatusRead::Cached, &mut buf).unwrap();
            black_box(&buf);
        });
        let mut reader = StatusReader::new();
        let decoded = median_per_op(20_000, || {
            black_box(read_status(&area, &mut reader, Patience::default()).unwrap());
        });
        let relocate = median_per_op(200, || {
            area.read_status_file(StatusRead::Relocate, &mut buf)
                .unwrap();
            black_box(&buf);
        });
        let fatfs = median_per_op(200, || {
            let file = std::fs::File::open(&img).unwrap();
            let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
            let mut out = Vec::new();
            fs.root_dir()
                .open_file("nlxtp/status.bin")
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            black_box(out);
        });
        assert_eq!(buf.len(), STATUS_FILE_LEN);
        let us = |d: Duration| format!("{:.1} us", d.as_secs_f64() * 1e6);
        println!(
            "FAT{bits:<5} {:>10} {:>10} {:>10} {:>10}",
            us(cached),
            us(decoded),
            us(relocate),
            us(fatfs)
        );
    }
}
