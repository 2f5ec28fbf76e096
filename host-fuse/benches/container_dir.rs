//! The container directory backend, side by side with naive `std::fs` code doing the same
//! job in the same run (which follows every link a guest plants, and flushes nothing):
//!
//! - `status`: [`SharedArea::read_status_file`] (openat2 `O_PATH`, fstat, procfs reopen,
//!   read) against `std::fs::read` of the path;
//! - `walk`: reading every byte of 1,000 files of 200 bytes in 10 directories through
//!   [`SharedArea::walk`] against a recursive `std::fs::read_dir` + `std::fs::read`;
//! - `upload`: [`SharedArea::replace`] of those 1,000 files and a start script over the
//!   same content (remove, write, syncfs, script renamed in) against
//!   `std::fs::remove_dir_all` of each entry and `std::fs::write` of each file.
//!
//! `cargo bench -p nlxtp-host --bench container_dir`. A plain timing loop: the median of
//! several batches, each timed whole. The filesystem is whatever holds the temp dir.

use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use nlxtp_host::area::dir::ContainerDir;
use nlxtp_host::area::{SharedArea, StatusRead, UploadFile, WalkLimits};

fn median_per_op(batches: usize, batch: u32, mut op: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..batches)
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

fn upload() -> Vec<UploadFile> {
    let mut files = vec![UploadFile::bytes("auto_exec.sh", b"true\n".to_vec()).unwrap()];
    for i in 0..1000 {
        let path = format!("d{}/f{i}", i % 10);
        files.push(UploadFile::bytes(&path, vec![b'x'; 200]).unwrap());
    }
    files.push(UploadFile::bytes("nlxtp/status.bin", vec![0u8; 8192]).unwrap());
    files
}

fn naive_read_all(dir: &Path, total: &mut usize) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            naive_read_all(&path, total);
        } else {
            *total += fs::read(&path).unwrap().len();
        }
    }
}

fn naive_replace(dir: &Path, files: Vec<UploadFile>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap();
        }
    }
    for file in files {
        let path = dir.join(file.path.as_str());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let nlxtp_host::area::UploadData::Bytes(bytes) = file.data else {
            unreachable!("only bytes here")
        };
        fs::write(path, bytes).unwrap();
    }
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let (mine, naive) = (tmp.path().join("mine"), tmp.path().join("naive"));
    fs::create_dir(&mine).unwrap();
    fs::create_dir(&naive).unwrap();
    let area = ContainerDir::open(&mine).unwrap();
    area.replace(upload()).unwrap();
    naive_replace(&naive, upload());

    let us = |d: Duration| format!("{:.1} us", d.as_secs_f64() * 1e6);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    println!("{:<8} {:>12} {:>12}", "", "ContainerDir", "naive std");

    let mut buf = Vec::new();
    let status = median_per_op(15, 10_000, || {
        area.read_status_file(StatusRead::Cached, &mut buf).unwrap();
        black_box(&buf);
    });
    assert_eq!(buf.len(), 8192);
    let status_path = naive.join("nlxtp/status.bin");
    let status_naive = median_per_op(15, 10_000, || {
        black_box(fs::read(&status_path).unwrap());
    });
    println!(
        "{:<8} {:>12} {:>12}",
        "status",
        us(status),
        us(status_naive)
    );

    let walk = median_per_op(9, 5, || {
        let mut total = 0;
        area.walk(&WalkLimits::default(), &mut |_, reader| {
            if let Some(reader) = reader {
                total += std::io::copy(reader, &mut std::io::sink())?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(total, 1000 * 200 + 8192 + 5);
    });
    let walk_naive = median_per_op(9, 5, || {
        let mut total = 0;
        naive_read_all(&naive, &mut total);
        assert_eq!(total, 1000 * 200 + 8192 + 5);
    });
    println!("{:<8} {:>12} {:>12}", "walk", ms(walk), ms(walk_naive));

    let replace = median_per_op(5, 1, || area.replace(upload()).unwrap());
    let replace_naive = median_per_op(5, 1, || naive_replace(&naive, upload()));
    println!(
        "{:<8} {:>12} {:>12}",
        "upload",
        ms(replace),
        ms(replace_naive)
    );
}
