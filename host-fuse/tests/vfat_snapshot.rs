//! `VfatImage::snapshot` (one open, one pass) against `snapshot_by_parts` (the trait's
//! other calls, one read each): the same report on every image, errors where either
//! errs, never a panic or a hang. The one difference allowed: the one-pass snapshot
//! does not check the whole FAT, so damage only in chains none of its files uses is an
//! error by parts ("FAT: ...", the whole-FAT check) and not in one pass.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nlxtp_core::RunState;
use nlxtp_host::area::vfat::{ImageWriteGuard, VfatImage};
use nlxtp_host::area::{
    snapshot_by_parts, AreaError, AreaSnapshot, SharedArea, StatusRead, UploadFile,
};

const FAST: Duration = Duration::from_millis(500);

/// Both snapshots of `img`: equal when by parts succeeds; the one-pass one fails or
/// succeeds only as the module docs say. Returns the one-pass result.
fn compare(img: &Path) -> Result<AreaSnapshot, AreaError> {
    let one = within(FAST, "snapshot", || VfatImage::new(img).snapshot());
    let parts = within(FAST, "snapshot_by_parts", || {
        snapshot_by_parts(&VfatImage::new(img))
    });
    match (&one, &parts) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", img.display()),
        (Err(a), Err(b)) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "{a} / {b}"
        ),
        (Ok(_), Err(AreaError::Corrupt { what })) if what.starts_with("FAT: ") => {}
        (a, b) => panic!("one pass: {a:?}; by parts: {b:?}"),
    }
    one
}

fn upload(img: &Path, files: &[(&str, &[u8])]) {
    let files = files
        .iter()
        .map(|(p, b)| UploadFile::bytes(p, b.to_vec()).unwrap())
        .collect();
    VfatImage::new(img).replace(files).unwrap();
}

#[test]
fn the_same_report_on_ordinary_images() {
    let dir = tempfile::tempdir().unwrap();
    for maker in ALL_MAKERS {
        let img = make_image(dir.path(), maker);
        let empty = compare(&img).unwrap();
        assert_eq!(empty, AreaSnapshot::default(), "{maker:?}");

        // An upload the guest has not started: no record yet, the script there.
        mcopy(&img, "auto_exec.sh", b"echo hi\n");
        let waiting = compare(&img).unwrap();
        assert!(waiting.script_present && waiting.status_file.is_empty());
        assert!(waiting.legacy.is_none());

        // The guest's record.
        mmd(&img, "nlxtp");
        let status = status_file(3, &record(1, RunState::Running, "working"));
        mcopy(&img, "nlxtp/status.bin", &status);
        let running = compare(&img).unwrap();
        assert_eq!(running.status_file, status);

        // A VM holding the image.
        let guard = ImageWriteGuard::acquire(&img).unwrap();
        assert!(compare(&img).unwrap().busy);
        drop(guard);
    }
}

#[test]
fn the_same_report_on_legacy_areas() {
    let dir = tempfile::tempdir().unwrap();
    for maker in [Maker::Mkfs(16), Maker::Mkfs(32), Maker::Mformat(12)] {
        let img = make_image(dir.path(), maker);
        mcopy(&img, "auto_exec.sh", b"echo hi\n");
        mmd(&img, "exec_status");
        mcopy(&img, "exec_status/out", &vec![b'o'; 5000]);
        assert!(
            compare(&img).unwrap().legacy.is_none(),
            "out alone is no legacy status"
        );
        mcopy(&img, "exec_status/running", b"1700000000\n");
        let one = compare(&img).unwrap();
        let legacy = one.legacy.unwrap();
        assert_eq!(legacy.running.as_deref(), Some(&b"1700000000\n"[..]));
        assert_eq!(legacy.out_len, Some(5000));
        assert!(!legacy.done);
        mcopy(&img, "exec_status/done", b"");
        mcopy(&img, "exec_status/custom", b"step 2 of 3");
        let legacy = compare(&img).unwrap().legacy.unwrap();
        assert!(legacy.done);
        assert_eq!(legacy.custom.as_deref(), Some(&b"step 2 of 3"[..]));

        // An empty status file counts as none: the legacy files are still read.
        mmd(&img, "nlxtp");
        mcopy(&img, "nlxtp/status.bin", b"");
        assert!(compare(&img).unwrap().legacy.is_some());
        // A record hides them.
        let status = status_file(1, &record(1, RunState::Exited(0), ""));
        mcopy(&img, "nlxtp/status.bin", &status);
        assert!(compare(&img).unwrap().legacy.is_none());
    }
}

#[test]
fn the_same_report_on_odd_names() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), Maker::Mkfs(16));
    // Names in other cases, a directory where a file is expected and the other way.
    mmd(&img, "AUTO_EXEC.SH");
    mcopy(&img, "EXEC_STATUS", b"a file, not the directory");
    let one = compare(&img).unwrap();
    assert!(one.script_present);
    assert!(one.legacy.is_none());

    let img = make_image(dir.path(), Maker::Mkfs(32));
    mmd(&img, "Exec_Status");
    mmd(&img, "Exec_Status/Running");
    mcopy(&img, "Exec_Status/CUSTOM", b"upper case");
    let legacy = compare(&img).unwrap().legacy.unwrap();
    assert_eq!(legacy.running, None, "a directory is not the file");
    assert_eq!(legacy.custom.as_deref(), Some(&b"upper case"[..]));

    // A status file that is a directory is corrupt both ways.
    let img = make_image(dir.path(), Maker::Mformat(16));
    mmd(&img, "nlxtp");
    mmd(&img, "nlxtp/status.bin");
    assert!(matches!(compare(&img), Err(AreaError::Corrupt { .. })));
}

/// A populated image as the host uploads it, with a guest's record and legacy files.
fn populated(dir: &Path, bits: u8) -> std::path::PathBuf {
    let img = make_image(dir, Maker::Mkfs(bits));
    let mut files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("data/file {i}.bin"), vec![i as u8; 3000 + 100 * i]))
        .collect();
    files.push(("auto_exec.sh".into(), b"echo hi\n".to_vec()));
    let borrowed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    upload(&img, &borrowed);
    mmd(&img, "nlxtp");
    mcopy(
        &img,
        "nlxtp/status.bin",
        &status_file(2, &record(1, RunState::Running, "x")),
    );
    img
}

/// The offset of the directory entry (not the volume label) with this short name.
fn find_dir_entry(img: &Path, short: &[u8; 11]) -> u64 {
    let b = std::fs::read(img).unwrap();
    b.chunks_exact(32)
        .position(|e| &e[..11] == short && e[11] & 0x10 != 0 && e[11] != 0x0F)
        .expect("a directory entry") as u64
        * 32
}

#[test]
fn broken_chains_are_errors_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [16, 32] {
        let img = populated(dir.path(), bits);
        let layout = Layout::read(&img);
        // The status file's chain loops.
        let status = entry_first_cluster(&img, find_entry(&img, b"STATUS  BIN"));
        let next = layout.fat(&img, status);
        layout.set_fat(&img, next, status);
        assert!(matches!(compare(&img), Err(AreaError::Corrupt { .. })));

        // The nlxtp directory starts outside the volume.
        let img = populated(dir.path(), bits);
        let entry = find_dir_entry(&img, b"NLXTP      ");
        patch(&img, entry + 26, &0xFFF0u16.to_le_bytes());
        assert!(matches!(compare(&img), Err(AreaError::Corrupt { .. })));

        // The script claims more than its clusters hold.
        let img = populated(dir.path(), bits);
        mdel(&img, "nlxtp/status.bin");
        let entry = find_entry(&img, b"AUTO_E~1SH ");
        patch(&img, entry + 28, &(1u32 << 20).to_le_bytes());
        assert!(matches!(compare(&img), Err(AreaError::Corrupt { .. })));
    }
}

#[test]
fn damage_elsewhere_is_left_to_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let img = populated(dir.path(), 16);
    let before = compare(&img).unwrap();
    let layout = Layout::read(&img);
    // A data file's chain loops: no file of the snapshot uses it.
    let first = entry_first_cluster(&img, find_entry(&img, b"FILE1~1 BIN"));
    layout.set_fat(&img, first, first);
    assert_eq!(compare(&img).unwrap(), before);
    assert!(snapshot_by_parts(&VfatImage::new(&img)).is_err());
}

#[test]
fn hostile_images_end_in_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    assert!(matches!(compare(&missing), Err(AreaError::NoImage { .. })));
    let short = dir.path().join("short.img");
    std::fs::write(&short, b"not a disk").unwrap();
    assert!(matches!(compare(&short), Err(AreaError::Corrupt { .. })));

    // Random damage to the boot sector, the FAT and the root directory.
    for bits in [16, 32] {
        let pristine = std::fs::read(populated(dir.path(), bits)).unwrap();
        let layout = Layout::read(&dir.path().join(format!("mkfs{bits}.img")));
        let img = dir.path().join("damaged.img");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let regions = [
            (0, 512),
            (layout.fat_offset, 2048),
            (layout.root_offset, 1024),
            (layout.data_offset, 4 * layout.cluster_size),
        ];
        for round in 0..300 {
            let mut bytes = pristine.clone();
            for _ in 0..1 + round % 4 {
                let (at, len) = regions[(next() % regions.len() as u64) as usize];
                let i = (at + next() % len) as usize;
                bytes[i] ^= 1 << (next() % 8);
            }
            std::fs::write(&img, &bytes).unwrap();
            let _ = compare(&img);
        }
    }
}

#[test]
fn the_snapshot_fills_the_status_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    let img = populated(dir.path(), 32);
    let area = VfatImage::new(&img);
    let snap = area.snapshot().unwrap();
    let mut cached = Vec::new();
    area.read_status_file(StatusRead::Cached, &mut cached)
        .unwrap();
    assert_eq!(cached, snap.status_file);
    // The remembered place still notices a replaced image.
    upload(&img, &[("auto_exec.sh", b"echo again\n")]);
    area.read_status_file(StatusRead::Cached, &mut cached)
        .unwrap();
    assert!(cached.is_empty());
}
