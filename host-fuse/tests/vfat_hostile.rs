//! Hostile images: each broken on purpose, each must end in a clear error, fast, without
//! a panic or a hang; and random damage to a real image must never panic or hang.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nlxtp_core::{RunState, StatusReader};
use nlxtp_host::area::vfat::VfatImage;
use nlxtp_host::area::{
    read_status, AreaError, AreaPath, Patience, SharedArea, StatusError, UploadFile, WalkLimits,
};

const FAST: Duration = Duration::from_millis(500);

/// A FAT16 or FAT32 image with a 3-cluster file THREE.BIN, a directory tree A/B, and a
/// status file.
fn populated(dir: &Path, bits: u8) -> std::path::PathBuf {
    let img = make_image(dir, Maker::Mkfs(bits));
    let cluster = Layout::read(&img).cluster_size as usize;
    mcopy(&img, "THREE.BIN", &vec![7u8; 2 * cluster + 100]);
    mmd(&img, "A");
    mmd(&img, "A/B");
    mcopy(&img, "A/B/IN.TXT", b"inside");
    mmd(&img, "nlxtp");
    mcopy(
        &img,
        "nlxtp/status.bin",
        &status_file(1, &record(1, RunState::Running, "x")),
    );
    img
}

/// Every read operation fails with Corrupt mentioning `needle`, each within FAST.
fn all_reads_corrupt(img: &Path, needle: &str, file: &str) {
    let area = VfatImage::new(img);
    let check = |what: &str, err: AreaError| {
        let text = err.to_string();
        assert!(matches!(err, AreaError::Corrupt { .. }), "{what}: {text}");
        assert!(
            text.contains(needle),
            "{what}: {text:?} should mention {needle:?}"
        );
    };
    let listed = within(FAST, "list", || area.list(&WalkLimits::default()));
    check("list", listed.unwrap_err());
    let read = within(FAST, "read_file", || {
        area.read_file(&AreaPath::new(file).unwrap(), 1 << 30)
    });
    check("read_file", read.unwrap_err());
}

#[test]
fn a_looped_file_chain_is_corrupt_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [16, 32] {
        let img = populated(dir.path(), bits);
        let layout = Layout::read(&img);
        let first = entry_first_cluster(&img, find_entry(&img, b"THREE   BIN"));
        let second = layout.fat(&img, first);
        let third = layout.fat(&img, second);
        layout.set_fat(&img, third, first);
        all_reads_corrupt(&img, "loops", "THREE.BIN");
    }
}

#[test]
fn a_looped_directory_chain_is_corrupt_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [16, 32] {
        let img = populated(dir.path(), bits);
        let layout = Layout::read(&img);
        let a = entry_first_cluster(&img, find_entry(&img, b"A          "));
        layout.set_fat(&img, a, a);
        all_reads_corrupt(&img, "loops", "A/B/IN.TXT");
    }
    // FAT32: the root directory's own chain loops.
    let img = populated(dir.path(), 32);
    let layout = Layout::read(&img);
    layout.set_fat(&img, layout.root_cluster, layout.root_cluster);
    all_reads_corrupt(&img, "loops", "THREE.BIN");
}

#[test]
fn a_directory_that_contains_its_parent_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [16, 32] {
        let img = populated(dir.path(), bits);
        let a = entry_first_cluster(&img, find_entry(&img, b"A          "));
        let b = find_entry(&img, b"B          ");
        patch(&img, b + 20, &((a >> 16) as u16).to_le_bytes());
        patch(&img, b + 26, &(a as u16).to_le_bytes());
        let area = VfatImage::new(&img);
        let err = within(FAST, "list", || area.list(&WalkLimits::default())).unwrap_err();
        assert!(err.to_string().contains("reached twice"), "{err}");
    }
}

#[test]
fn a_fat_entry_of_one_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [16, 32] {
        let img = populated(dir.path(), bits);
        let layout = Layout::read(&img);
        let first = entry_first_cluster(&img, find_entry(&img, b"THREE   BIN"));
        layout.set_fat(&img, first, 1);
        all_reads_corrupt(&img, "links to 1", "THREE.BIN");
    }
}

#[test]
fn a_first_cluster_of_one_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let img = populated(dir.path(), 16);
    let entry = find_entry(&img, b"THREE   BIN");
    patch(&img, entry + 26, &1u16.to_le_bytes());
    let area = VfatImage::new(&img);
    let err = within(FAST, "read", || {
        area.read_file(&AreaPath::new("THREE.BIN").unwrap(), 1 << 20)
    })
    .unwrap_err();
    assert!(err.to_string().contains("holds no data"), "{err}");
}

#[test]
fn a_long_name_that_escapes_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let img = populated(dir.path(), 16);
    mcopy(&img, "abcdefghij.txt", b"x");
    // The long name's first part (just before the short entry) becomes "..", NUL-ended.
    let short = find_entry(&img, b"ABCDEF~1TXT");
    patch(
        &img,
        short - 32 + 1,
        &[b'.', 0, b'.', 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF],
    );
    let area = VfatImage::new(&img);
    let err = within(FAST, "list", || area.list(&WalkLimits::default())).unwrap_err();
    assert!(matches!(err, AreaError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("the name \"..\""), "{err}");
}

#[test]
fn sizes_beyond_the_image_or_the_chain_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let img = populated(dir.path(), 16);
    let entry = find_entry(&img, b"THREE   BIN");
    patch(&img, entry + 28, &0xFFFF_FFF0u32.to_le_bytes());
    all_reads_corrupt(&img, "more than the whole image", "THREE.BIN");

    // Longer than its clusters: what a bad FAT entry that cuts a chain short looks like.
    let img = populated(dir.path(), 32);
    let layout = Layout::read(&img);
    let first = entry_first_cluster(&img, find_entry(&img, b"THREE   BIN"));
    layout.set_fat(&img, first, 0x0FFF_FFFF);
    all_reads_corrupt(&img, "clusters hold only", "THREE.BIN");
}

#[test]
fn broken_boot_sectors_are_corrupt_and_block_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, u64, &[u8]); 5] = [
        ("55 AA", 510, &[0, 0]),
        ("bytes per sector", 11, &[0, 0x80]),
        ("sectors per cluster", 13, &[3]),
        ("in an image of", 19, &[0xFF, 0xFF]),
        ("FATs", 16, &[9]),
    ];
    for (needle, offset, bytes) in cases {
        let img = populated(dir.path(), 16);
        patch(&img, offset, bytes);
        all_reads_corrupt(&img, needle, "THREE.BIN");
        let area = VfatImage::new(&img);
        let status = within(FAST, "status", || {
            read_status(&area, &mut StatusReader::new(), Patience::default())
        });
        assert!(
            matches!(status, Err(StatusError::Area(AreaError::Corrupt { .. }))),
            "{status:?}"
        );
        // An upload cannot take over a broken layout: refused, image unchanged.
        let before = std::fs::read(&img).unwrap();
        let err = area
            .replace(vec![
                UploadFile::bytes("auto_exec.sh", b"x".to_vec()).unwrap()
            ])
            .unwrap_err();
        assert!(matches!(err, AreaError::Corrupt { .. }), "{err}");
        assert!(std::fs::read(&img).unwrap() == before);
    }
    // An image cut short of what its boot sector claims.
    let img = populated(dir.path(), 16);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    all_reads_corrupt(&img, "in an image of", "THREE.BIN");
    // Too short for a boot sector at all.
    std::fs::write(&img, b"tiny").unwrap();
    all_reads_corrupt(&img, "too short", "THREE.BIN");
}

#[test]
fn an_upload_replaces_a_corrupt_area() {
    let dir = tempfile::tempdir().unwrap();
    let img = populated(dir.path(), 16);
    let layout = Layout::read(&img);
    let a = entry_first_cluster(&img, find_entry(&img, b"A          "));
    layout.set_fat(&img, a, a);
    let area = VfatImage::new(&img);
    within(Duration::from_secs(2), "replace", || {
        area.replace(vec![
            UploadFile::bytes("auto_exec.sh", b"fresh".to_vec()).unwrap()
        ])
        .unwrap()
    });
    assert_fsck_clean(&img);
    assert_eq!(mtype(&img, "auto_exec.sh"), b"fresh");
}

#[test]
fn a_status_file_that_stays_torn_gives_up_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let img = populated(dir.path(), 16);
    // Slot 1 holds a record whose tail copy of the sequence number disagrees: torn, for ever.
    let mut file = status_file(1, &record(1, RunState::Running, "x"));
    file[4096 + 4096 - 8] ^= 0xFF;
    mcopy(&img, "nlxtp/status.bin", &file);
    let area = VfatImage::new(&img);
    let patience = Patience {
        pause: Duration::from_millis(10),
        give_up_after: Duration::from_millis(200),
    };
    // Gives up after its 200 ms, not much later (the bound has room for a slow host).
    let err = within(Duration::from_secs(2), "status", || {
        read_status(&area, &mut StatusReader::new(), patience)
    })
    .unwrap_err();
    assert!(matches!(err, StatusError::Unsettled { .. }), "{err}");
    assert!(err.to_string().contains("stayed torn"), "{err}");

    // The status file's own chain loops: corrupt, at once.
    let img = populated(dir.path(), 16);
    let layout = Layout::read(&img);
    let first = entry_first_cluster(&img, find_entry(&img, b"STATUS  BIN"));
    layout.set_fat(&img, first, first);
    let area = VfatImage::new(&img);
    let err = within(FAST, "status", || {
        read_status(&area, &mut StatusReader::new(), patience)
    })
    .unwrap_err();
    assert!(err.to_string().contains("loops"), "{err}");
}

/// xorshift64*: reproducible damage without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_damage_never_panics_or_hangs() {
    let dir = tempfile::tempdir().unwrap();
    for (bits, rounds) in [(12u8, 400u64), (16, 300), (32, 150)] {
        let img = make_image(dir.path(), Maker::Mkfs(bits));
        for i in 0..6 {
            mmd(&img, &format!("D{i}"));
            mcopy(
                &img,
                &format!("D{i}/a long file name {i}.txt"),
                &vec![i as u8; 3000 * i],
            );
        }
        mmd(&img, "nlxtp");
        mcopy(
            &img,
            "nlxtp/status.bin",
            &status_file(2, &record(1, RunState::Exited(0), "done")),
        );
        let layout = Layout::read(&img);
        // The metadata: boot sector, FATs, root directory, and the first data clusters
        // (where the subdirectories and the status file are).
        let span = layout.data_offset + 16 * layout.cluster_size;
        let original = std::fs::read(&img).unwrap();
        let area = VfatImage::new(&img);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(bits));
        let (mut ok, mut failed) = (0, 0);
        for _ in 0..rounds {
            let mut touched = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(span);
                let len = 1 + rng.below(4);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                patch(&img, at, &bytes);
                touched.push((at, len as usize));
            }
            within(Duration::from_secs(1), "one round of reads", || {
                match area.walk(&WalkLimits::default(), &mut |_, reader| {
                    if let Some(r) = reader {
                        std::io::copy(r, &mut std::io::sink())?;
                    }
                    Ok(())
                }) {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
                let _ = area.read_file(
                    &AreaPath::new("D5/a long file name 5.txt").unwrap(),
                    1 << 20,
                );
                let quick = Patience {
                    pause: Duration::from_millis(1),
                    give_up_after: Duration::from_millis(20),
                };
                let _ = read_status(&area, &mut StatusReader::new(), quick);
            });
            for (at, len) in touched {
                patch(&img, at, &original[at as usize..at as usize + len]);
            }
        }
        assert!(
            ok > 0 && failed > 0,
            "FAT{bits}: damage both harmless and detected ({ok} ok, {failed} failed)"
        );
    }
}
