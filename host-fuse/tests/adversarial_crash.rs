//! Uploads killed at random moments: `nlxtp upload` (the real binary) on a large
//! archive, SIGKILLed after a random delay, many times.
//!
//! A vFAT image must afterwards hold the old content byte for byte or the complete new
//! upload, and pass `fsck.vfat -n`. A container directory must hold no `auto_exec.sh`,
//! or the new one with every file of the upload complete beside it (its upload is in
//! place; see area/dir.rs). What a killed upload leaves besides (a stray temporary
//! image or script) is counted and must not be mistaken for content.

mod hostile;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostile::Rng;
use nlxtp_core::layout;
use nlxtp_host::area::vfat::{create_image, VfatImage};
use nlxtp_host::area::{EntryKind, SharedArea, WalkLimits};
use nlxtp_host::ops::{self, UploadOptions};

const NLXTP: &str = env!("CARGO_BIN_EXE_nlxtp");

/// Rounds per backend, at least 20 (`NLXTP_CRASH_ROUNDS` for more).
fn rounds() -> u64 {
    std::env::var("NLXTP_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

/// Rounds at most while the kills have not yet hit both sides (the window was timed
/// once, on a host whose speed varies).
const MAX_ROUNDS: u64 = 200;

/// Whether to go on after `round` rounds: the rounds asked for, then more (up to
/// [`MAX_ROUNDS`]) until both sides were hit.
fn more_rounds(round: u64, both_sides: bool) -> bool {
    round < rounds() || (!both_sides && round < MAX_ROUNDS)
}

/// The kill window (µs) for the next extra round, from the counts so far of kills that
/// left the old content (`before`) and the new one (`after`): wider (up to `widest`)
/// while every kill came before the switch (uploads take longer now than the timed
/// one), narrower while every upload got past it (they are faster now).
fn next_window(window: u64, widest: u64, before: usize, after: usize) -> u64 {
    if after == 0 {
        (window * 3 / 2).min(widest)
    } else if before == 0 {
        (window * 2 / 3).max(1_000)
    } else {
        window
    }
}

/// The new upload: 160 files of 96 KiB (15 MB), each with its own bytes, and a script.
fn new_files() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..160u32 {
        let bytes: Vec<u8> = (0..96 * 1024u32)
            .map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(2_654_435_761)) as u8)
            .collect();
        files.insert(format!("data/d{:02}/file{i:03}.bin", i % 10), bytes);
    }
    files.insert(
        layout::START_SCRIPT.into(),
        b"#!/bin/sh\necho new\n".to_vec(),
    );
    files
}

fn archive(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut tar = hostile::Tar::new();
    // The start script last in the archive too: nothing about order is left to luck.
    for (path, bytes) in files.iter().filter(|(p, _)| *p != layout::START_SCRIPT) {
        tar = tar.file(path, bytes);
    }
    tar.file(layout::START_SCRIPT, &files[layout::START_SCRIPT])
        .finish()
}

/// Every file of an area except the manifest (fresh in each upload).
fn files_of(area: &dyn SharedArea) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    area.walk(&WalkLimits::default(), &mut |entry, reader| {
        if let (EntryKind::File, Some(reader)) = (entry.kind, reader) {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            if entry.path.as_str() != layout::MANIFEST_FILE {
                out.insert(entry.path.to_string(), bytes);
            }
        }
        Ok(())
    })
    .expect("the area reads");
    out
}

/// `nlxtp upload --force TARGET ARCHIVE`, started.
fn spawn_upload(target: &Path, archive: &Path) -> Child {
    Command::new(NLXTP)
        .arg("upload")
        .arg("--force")
        .arg(target)
        .arg(archive)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `nlxtp upload TARGET ARCHIVE` and kills it after `delay` (if still running).
/// Returns whether it had finished by itself.
fn upload_killed_after(target: &Path, archive: &Path, delay: Duration) -> bool {
    let mut child = spawn_upload(target, archive);
    let started = Instant::now();
    while started.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    status.success()
}

/// How long one whole upload takes here.
fn full_upload(target: &Path, archive: &Path) -> Duration {
    let started = Instant::now();
    let status = spawn_upload(target, archive).wait().unwrap();
    assert!(status.success());
    started.elapsed()
}

/// Stray files a killed upload left beside the image: counted, then removed.
fn strays(dir: &Path, keep: &[&Path]) -> usize {
    let mut n = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if keep.iter().any(|k| *k == path) {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".nlxtp-upload-"), "unexpected {name}");
        fs::remove_file(&path).unwrap();
        n += 1;
    }
    n
}

#[test]
fn a_killed_image_upload_leaves_the_old_image_or_the_new_one() {
    let tmp = hostile::scratch();
    let dir = tmp.path().join("vm");
    fs::create_dir(&dir).unwrap();
    let img = dir.join("shared.img");
    let pristine = tmp.path().join("old.img");
    create_image(&pristine, 48 << 20, None, None).unwrap();
    let old_archive = hostile::Tar::new()
        .file("old/marker.txt", b"the old upload")
        .file(layout::START_SCRIPT, b"#!/bin/sh\necho old\n")
        .finish();
    let old_area = ops::open_target(&pristine).unwrap();
    ops::upload(
        old_area.as_ref(),
        &old_archive[..],
        &UploadOptions::default(),
    )
    .unwrap();
    let old_bytes = fs::read(&pristine).unwrap();
    let new = new_files();
    let archive_path = tmp.path().join("new.tar");
    fs::write(&archive_path, archive(&new)).unwrap();

    fs::copy(&pristine, &img).unwrap();
    let whole = full_upload(&img, &archive_path);
    assert_eq!(files_of(&VfatImage::new(&img)), new);

    let mut rng = Rng(0x00C0_FFEE_1234_5678);
    let (mut old, mut newer, mut finished, mut stray) = (0, 0, 0, 0);
    let mut window = whole.as_micros() as u64 * 12 / 10;
    let widest = window * 16;
    let mut round = 0;
    while more_rounds(round, old > 0 && newer > 0) {
        fs::copy(&pristine, &img).unwrap();
        let delay = Duration::from_micros(rng.next() % window.max(1));
        finished += usize::from(upload_killed_after(&img, &archive_path, delay));
        stray += strays(&dir, &[&img]);
        hostile::fsck(&img).unwrap_or_else(|e| panic!("round {round}, after {delay:?}: {e}"));
        if fs::read(&img).unwrap() == old_bytes {
            old += 1;
        } else {
            let got = files_of(&VfatImage::new(&img));
            assert!(
                got == new,
                "round {round}, after {delay:?}: neither old nor new"
            );
            newer += 1;
        }
        round += 1;
        if round >= rounds() {
            window = next_window(window, widest, old, newer);
        }
    }
    eprintln!(
        "{round} killed image uploads (a whole upload takes {whole:?}): {old} old, {newer} new \
         ({finished} had finished), {stray} stray temporary images removed; 0 broken"
    );
    assert!(old > 0 && newer > 0, "the kills all landed on one side");
}

#[test]
fn a_killed_directory_upload_leaves_no_script_or_a_complete_upload() {
    let tmp = hostile::scratch();
    let area = tmp.path().join("rootfs").join("nlxtp");
    fs::create_dir_all(&area).unwrap();
    let new = new_files();
    let archive_path = tmp.path().join("new.tar");
    fs::write(&archive_path, archive(&new)).unwrap();
    let whole = full_upload(&area, &archive_path);
    let opened = ops::open_target(&area).unwrap();
    assert_eq!(files_of(opened.as_ref()), new);

    let mut rng = Rng(0x0BAD_5EED_8765_4321);
    let (mut without, mut complete, mut finished) = (0, 0, 0);
    let mut window = whole.as_micros() as u64 * 12 / 10;
    let widest = window * 16;
    let mut round = 0;
    while more_rounds(round, without > 0 && complete > 0) {
        let delay = Duration::from_micros(rng.next() % window.max(1));
        finished += usize::from(upload_killed_after(&area, &archive_path, delay));
        let opened = ops::open_target(&area).unwrap();
        let got = files_of(opened.as_ref());
        if got.contains_key(layout::START_SCRIPT) {
            // The script is renamed in last: everything of the upload is there, whole.
            for (path, bytes) in &new {
                assert!(
                    got.get(path) == Some(bytes),
                    "round {round}: {path} incomplete"
                );
            }
            complete += 1;
        } else {
            without += 1;
        }
        // Nothing beside the area.
        let beside: Vec<PathBuf> = fs::read_dir(area.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(beside, std::slice::from_ref(&area));
        round += 1;
        if round >= rounds() {
            window = next_window(window, widest, without, complete);
        }
    }
    eprintln!(
        "{round} killed directory uploads (a whole upload takes {whole:?}): {without} without a \
         script, {complete} complete ({finished} had finished); 0 with a script and \
         missing files"
    );
    assert!(
        without > 0 && complete > 0,
        "the kills all landed on one side"
    );
}
