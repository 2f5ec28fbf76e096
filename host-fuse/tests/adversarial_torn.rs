//! Torn reads of the status file, through the real backends' read path.
//!
//! **Stress**: a writer *process* (this test binary, run again as `torn_writer_child`)
//! rewrites the status file as fast as it can, each slot in two `pwrite`s of 2048 bytes
//! (so a reader can see half a slot; one 4096-byte `pwrite` is rarely seen half done,
//! see docs/security.md), into a container directory's `nlxtp/status.bin` or straight
//! into a vFAT image at the status file's data offset, as a guest's disk writes land.
//! The test polls through `ContainerDir` / `VfatImage` for `NLXTP_TORN_SECS` seconds
//! per backend (default 5, one after the other): no record returned is torn (each record's
//! content is a function of its sequence number and is checked), and tears were
//! detected and retried (counted; the test fails if there were none).
//!
//! **Crash points**: a slot update cut at every byte, and every combination of its
//! eight 512-byte sectors, in both backends: each read returns the previous record or
//! the new one, never an older one or anything else.

mod common;
mod hostile;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::slots::{slot_offset, STATUS_FILE_LEN};
use nlxtp_core::{layout, DecodeError, RunId, RunState, StatusReader, StatusRecord, StatusWriter};
use nlxtp_host::area::dir::ContainerDir;
use nlxtp_host::area::vfat::VfatImage;
use nlxtp_host::area::{read_status, Patience, SharedArea, StatusRead};

/// The record with sequence number `seq`: its content follows from `seq`, so a record
/// stitched from two writes cannot pass as either (the CRC aside).
fn record_for(seq: u64) -> StatusRecord {
    let mut rec = StatusRecord {
        sequence: seq,
        run_id: RunId([0x5A; 16]),
        state: RunState::Running,
        heartbeat: seq.wrapping_mul(3),
        heartbeat_interval_ms: 1000,
        updated_unix: seq ^ 0xDEAD_BEEF,
        ..StatusRecord::default()
    };
    // Lengths from 10 to about 3,000 bytes: the payload ends in different sectors.
    let filler = char::from(b'a' + (seq % 26) as u8);
    let text = format!(
        "seq {seq} {}",
        String::from(filler).repeat((seq % 3000) as usize)
    );
    rec.custom.push_str(&text).unwrap();
    rec
}

fn check_record(rec: &StatusRecord) {
    let want = record_for(rec.sequence);
    assert!(
        *rec == want,
        "a torn or foreign record was returned: seq {}",
        rec.sequence
    );
}

/// Where the writer writes: a file and the offset of the status file in it.
fn target_from_env() -> Option<(PathBuf, u64, bool)> {
    let spec = std::env::var("NLXTP_TORN_WRITER").ok()?;
    let mut parts = spec.splitn(3, ':');
    let offset = parts.next()?.parse().ok()?;
    let halves = parts.next()? == "halves";
    Some((PathBuf::from(parts.next()?), offset, halves))
}

/// The writer process: rewrites the status file until killed (or for 10 minutes at
/// most, should its parent vanish). Prints `ready` after its first record.
#[test]
#[ignore = "the writer process of the stress tests, run by them"]
fn torn_writer_child() {
    let (path, base, halves) = target_from_env().expect("NLXTP_TORN_WRITER=offset:mode:path");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let mut writer = StatusWriter::new();
    let mut slot = [0u8; STATUS_SLOT_LEN];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(600) {
        let mut rec = record_for(writer.next_sequence());
        let at = base + writer.encode(&mut rec, &mut slot).unwrap() as u64;
        if halves {
            let half = STATUS_SLOT_LEN / 2;
            file.write_all_at(&slot[..half], at).unwrap();
            file.write_all_at(&slot[half..], at + half as u64).unwrap();
        } else {
            file.write_all_at(&slot, at).unwrap();
        }
        n += 1;
        if n == 1 {
            println!("ready");
        }
    }
}

/// What one stress run saw.
#[derive(Debug, Default)]
struct Seen {
    reads: u64,
    records: u64,
    /// Both slots torn at once: the whole read was retried.
    torn_reads: u64,
    /// One slot torn: the reader fell back to the other slot's (older) record.
    torn_slots: u64,
    /// A record older than one already returned: refused and retried.
    stale: u64,
    library_reads: u64,
    newest: u64,
}

fn spawn_writer(path: &Path, offset: u64, halves: bool) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "torn_writer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "NLXTP_TORN_WRITER",
            format!(
                "{offset}:{}:{}",
                if halves { "halves" } else { "whole" },
                path.display()
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The test harness prints its own words first, on the same line too.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let ready = stdout
        .lines()
        .map_while(Result::ok)
        .take(10)
        .any(|line| line.ends_with("ready"));
    assert!(ready, "the writer process did not start");
    child
}

/// Polls `area` while a writer process rewrites its status file.
fn stress(area: &dyn SharedArea, file: &Path, offset: u64, halves: bool, secs: u64) -> Seen {
    let mut writer = spawn_writer(file, offset, halves);
    let mut seen = Seen::default();
    let mut reader = StatusReader::new();
    let mut library = StatusReader::new();
    let mut buf = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        area.read_status_file(StatusRead::Cached, &mut buf).unwrap();
        seen.reads += 1;
        assert_eq!(buf.len(), STATUS_FILE_LEN);
        for half in buf.chunks_exact(STATUS_SLOT_LEN) {
            if StatusRecord::decode(half) == Err(DecodeError::Torn) {
                seen.torn_slots += 1;
            }
        }
        match reader.read(&buf) {
            Ok(rec) => {
                check_record(&rec);
                assert!(rec.sequence >= seen.newest, "the status went back in time");
                seen.newest = rec.sequence;
                seen.records += 1;
            }
            Err(DecodeError::Torn) => seen.torn_reads += 1,
            Err(DecodeError::Stale { .. }) => seen.stale += 1,
            Err(e) => panic!("read {}: {e:?}", seen.reads),
        }
        // Now and then the library's own read, retries and all.
        if seen.reads % 64 == 0 {
            let patience = Patience {
                pause: Duration::from_millis(1),
                give_up_after: Duration::from_secs(2),
            };
            let rec = read_status(area, &mut library, patience).unwrap().unwrap();
            check_record(&rec);
            seen.library_reads += 1;
        }
    }
    writer.kill().unwrap();
    writer.wait().unwrap();
    seen
}

/// Seconds per backend: `NLXTP_TORN_SECS`, default 5 (10 s for both).
fn secs() -> u64 {
    std::env::var("NLXTP_TORN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// `NLXTP_TORN_WHOLE=1`: one 4096-byte write per slot (for the figures in
/// docs/security.md); the default splits each slot write in two, to force tearing.
fn halves() -> bool {
    std::env::var_os("NLXTP_TORN_WHOLE").is_none()
}

fn report(backend: &str, seen: &Seen) {
    eprintln!(
        "torn-read stress, {backend}, {} s, {} writes: {} reads, {} records returned \
         (newest seq {}), {} torn reads retried, {} torn slots passed over, {} stale \
         refused, {} library reads; 0 torn records returned",
        secs(),
        if halves() { "split" } else { "whole" },
        seen.reads,
        seen.records,
        seen.newest,
        seen.torn_reads,
        seen.torn_slots,
        seen.stale,
        seen.library_reads
    );
}

fn stress_directory_backend() {
    let tmp = hostile::scratch();
    let area_dir = tmp.path().join("area");
    std::fs::create_dir_all(area_dir.join("nlxtp")).unwrap();
    let status = area_dir.join(layout::STATUS_FILE);
    std::fs::write(&status, vec![0u8; STATUS_FILE_LEN]).unwrap();
    let area = ContainerDir::open(&area_dir).unwrap();
    let seen = stress(&area, &status, 0, halves(), secs());
    report("directory", &seen);
    assert!(seen.records > 0 && seen.library_reads > 0);
    if halves() {
        assert!(
            seen.torn_reads + seen.torn_slots > 0,
            "no tear seen: {seen:?}"
        );
    }
}

/// A FAT16 image with a zeroed status file; returns it and its data offset.
fn image_with_status(dir: &Path) -> (PathBuf, u64) {
    let img = common::make_image(dir, common::Maker::Mkfs(16));
    common::mmd(&img, "nlxtp");
    common::mcopy(&img, layout::STATUS_FILE, &vec![0u8; STATUS_FILE_LEN]);
    let layout = common::Layout::read(&img);
    let first = common::entry_first_cluster(&img, common::find_entry(&img, b"STATUS  BIN"));
    // mcopy into a fresh image lays the file out in consecutive clusters.
    let clusters = STATUS_FILE_LEN.div_ceil(layout.cluster_size as usize) as u32;
    let mut c = first;
    for _ in 1..clusters {
        let next = layout.fat(&img, c);
        assert_eq!(next, c + 1, "the status file is not contiguous");
        c = next;
    }
    (img, layout.cluster_offset(first))
}

fn stress_vfat_image() {
    let tmp = hostile::scratch();
    let (img, offset) = image_with_status(tmp.path());
    let area = VfatImage::new(&img);
    let seen = stress(&area, &img, offset, halves(), secs());
    report("vFAT image", &seen);
    assert!(seen.records > 0 && seen.library_reads > 0);
    if halves() {
        assert!(
            seen.torn_reads + seen.torn_slots > 0,
            "no tear seen: {seen:?}"
        );
    }
    common::assert_fsck_clean(&img);
}

/// One backend after the other, so the two writer processes do not share the cores.
#[test]
fn stress_both_backends() {
    stress_directory_backend();
    stress_vfat_image();
}

/// The slot bytes of record `seq`.
fn slot_of(seq: u64) -> [u8; STATUS_SLOT_LEN] {
    let mut slot = [0u8; STATUS_SLOT_LEN];
    record_for(seq).encode(&mut slot).unwrap();
    slot
}

/// Every way a write of `new` over `old` can be cut: each byte as the first not yet
/// written (front to back, and back to front), and each set of 512-byte sectors
/// written (a disk writes sectors in any order).
fn cuts(old: &[u8; STATUS_SLOT_LEN], new: &[u8; STATUS_SLOT_LEN]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for cut in 0..=STATUS_SLOT_LEN {
        let mut front = old.to_vec();
        front[..cut].copy_from_slice(&new[..cut]);
        out.push((format!("first {cut} bytes written"), front));
        let mut back = new.to_vec();
        back[..cut].copy_from_slice(&old[..cut]);
        out.push((
            format!("last {} bytes written", STATUS_SLOT_LEN - cut),
            back,
        ));
    }
    for mask in 0u32..256 {
        let mut mixed = old.to_vec();
        for sector in 0..8 {
            if mask & (1 << sector) != 0 {
                let r = sector * 512..(sector + 1) * 512;
                mixed[r.clone()].copy_from_slice(&new[r]);
            }
        }
        out.push((format!("sectors {mask:08b} written"), mixed));
    }
    out
}

/// Writes `bytes` at `at` in `file`, as a guest's write reaches the disk.
fn put(file: &File, at: u64, bytes: &[u8]) {
    file.write_all_at(bytes, at).unwrap();
}

/// Runs every crash point of a slot update through `area`, whose status file starts at
/// `base` in `file`. Returns how many reads were checked.
fn crash_points(area: &dyn SharedArea, file: &File, base: u64) -> u64 {
    let mut checked = 0;
    // (older record in the slot being written, or none; the other slot's record, or
    // none; the record being written)
    for (old, other, new) in [
        (Some(5u64), Some(6u64), 7u64),
        (Some(6), Some(7), 8),
        (None, None, 1),
        (None, Some(1), 2),
    ] {
        let empty = [0u8; STATUS_SLOT_LEN];
        let old_slot = old.map_or(empty, slot_of);
        let new_slot = slot_of(new);
        let at = base + slot_offset(new) as u64;
        let other_at = base + slot_offset(new + 1) as u64;
        put(file, other_at, &other.map_or(empty, slot_of));
        for (how, bytes) in cuts(&old_slot, &new_slot) {
            put(file, at, &bytes);
            let complete = bytes[..] == new_slot[..];
            let mut buf = Vec::new();
            area.read_status_file(StatusRead::Cached, &mut buf).unwrap();
            // A reader that has already returned the other slot's record, and a fresh one.
            let mut warm = StatusReader::new();
            if other.is_some() {
                warm.read(&buf).ok();
            }
            for reader in [&mut StatusReader::new(), &mut warm] {
                match reader.read(&buf) {
                    Ok(rec) => {
                        check_record(&rec);
                        let fine = if complete {
                            rec.sequence == new
                        } else {
                            Some(rec.sequence) == other
                        };
                        assert!(fine, "{how} of {new}: read {}", rec.sequence);
                    }
                    // Only with no complete record at all, or one not yet complete.
                    Err(DecodeError::Torn | DecodeError::NotThereYet) => {
                        assert!(other.is_none() && !complete, "{how} of {new}: no record");
                    }
                    Err(e) => panic!("{how} of {new}: {e:?}"),
                }
                checked += 1;
            }
        }
        // The whole update through the library's read: the new record.
        let rec = read_status(area, &mut StatusReader::new(), Patience::default())
            .unwrap()
            .unwrap();
        assert_eq!(rec.sequence, new);
    }
    checked
}

#[test]
fn a_slot_update_cut_anywhere_reads_as_old_or_new_in_both_backends() {
    let tmp = hostile::scratch();
    // The directory backend.
    let area_dir = tmp.path().join("area");
    std::fs::create_dir_all(area_dir.join("nlxtp")).unwrap();
    let status = area_dir.join(layout::STATUS_FILE);
    std::fs::write(&status, vec![0u8; STATUS_FILE_LEN]).unwrap();
    let file = OpenOptions::new().write(true).open(&status).unwrap();
    let dir_checked = crash_points(&ContainerDir::open(&area_dir).unwrap(), &file, 0);
    // A status file cut short while it is created: torn or not there, never a record.
    for len in (0..STATUS_FILE_LEN).step_by(512) {
        file.set_len(len as u64).unwrap();
        let mut buf = Vec::new();
        ContainerDir::open(&area_dir)
            .unwrap()
            .read_status_file(StatusRead::Cached, &mut buf)
            .unwrap();
        let got = StatusReader::new().read(&buf);
        assert!(
            matches!(got, Err(DecodeError::Torn | DecodeError::NotThereYet)),
            "{len} bytes: {got:?}"
        );
    }
    // The vFAT image: the bytes land in the image, the host reads them through its
    // status fast path (located once, then cached).
    let (img, offset) = image_with_status(tmp.path());
    let file = OpenOptions::new().write(true).open(&img).unwrap();
    let img_checked = crash_points(&VfatImage::new(&img), &file, offset);
    eprintln!("crash points: {dir_checked} reads in a directory, {img_checked} in an image, all old or new");
    common::assert_fsck_clean(&img);
}
