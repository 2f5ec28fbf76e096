//! The vFAT backend against real tools: images made by mkfs.vfat and mformat (FAT12, 16,
//! 32), filled by mcopy and read by the backend; filled by the backend and read by mtype,
//! mdir, mlabel, and checked by fsck.vfat.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use common::*;
use nlxtp_core::{RunState, StatusReader};
use nlxtp_host::area::vfat::{
    create_image, qemu_holds_image, CreateError, ImageWriteGuard, VfatImage,
};
use nlxtp_host::area::{
    read_status, AreaError, AreaPath, Durability, EntryKind, Patience, SharedArea, UploadData,
    UploadFile, WalkLimits,
};

/// Bytes that differ at every offset, so a misplaced cluster shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// Everything in the area: path -> Some(bytes) for files, None for directories.
fn contents(area: &VfatImage) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    area.walk(&WalkLimits::default(), &mut |entry, reader| {
        let bytes = match reader {
            Some(r) => {
                let mut b = Vec::new();
                r.read_to_end(&mut b)?;
                assert_eq!(b.len() as u64, entry.size, "{}", entry.path);
                assert_eq!(entry.kind, EntryKind::File);
                Some(b)
            }
            None => None,
        };
        out.insert(entry.path.to_string(), bytes);
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn reads_what_mtools_wrote_on_every_fat_type() {
    let dir = tempfile::tempdir().unwrap();
    for maker in ALL_MAKERS {
        let img = make_image(dir.path(), maker);
        let big = pattern(300 * 1024, 7);
        let status = status_file(3, &record(9, RunState::Running, "half way"));
        mmd(&img, "nlxtp");
        mmd(&img, "Deep");
        mmd(&img, "Deep/er");
        mcopy(&img, "nlxtp/status.bin", &status);
        mcopy(&img, "auto_exec.sh", b"#!/bin/sh\necho hi\n");
        mcopy(&img, "A long name, with spaces.txt", b"long");
        mcopy(&img, "Deep/er/\u{fc}ber-gr\u{f6}\u{df}e.bin", &big);
        mcopy(&img, "empty", b"");
        mcopy(&img, "README", b"mixed case 8.3? no: upper");
        mcopy(&img, "lower.txt", b"lower 8.3");

        let area = VfatImage::new(&img);
        let got = contents(&area);
        let expect: BTreeMap<String, Option<Vec<u8>>> = [
            ("A long name, with spaces.txt", Some(b"long".to_vec())),
            ("Deep", None),
            ("Deep/er", None),
            ("Deep/er/\u{fc}ber-gr\u{f6}\u{df}e.bin", Some(big.clone())),
            ("README", Some(b"mixed case 8.3? no: upper".to_vec())),
            ("auto_exec.sh", Some(b"#!/bin/sh\necho hi\n".to_vec())),
            ("empty", Some(Vec::new())),
            ("lower.txt", Some(b"lower 8.3".to_vec())),
            ("nlxtp", None),
            ("nlxtp/status.bin", Some(status.clone())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, expect, "{maker:?}");

        let listed = area.list(&WalkLimits::default()).unwrap();
        let paths: Vec<&str> = listed.iter().map(|e| e.path.as_str()).collect();
        let deep = paths.iter().position(|p| *p == "Deep").unwrap();
        let deeper = paths.iter().position(|p| *p == "Deep/er").unwrap();
        assert!(deep < deeper, "parents come first: {paths:?}");

        let path = |p: &str| AreaPath::new(p).unwrap();
        assert_eq!(
            area.read_file(&path("deep/ER/\u{dc}BER-gr\u{f6}\u{df}e.bin"), 1 << 20)
                .unwrap(),
            big
        );
        assert_eq!(
            area.read_file(&path("LOWER.TXT"), 100).unwrap(),
            b"lower 8.3"
        );
        assert!(matches!(
            area.read_file(&path("nope"), 100),
            Err(AreaError::NotFound { .. })
        ));
        assert!(matches!(
            area.read_file(&path("Deep"), 100),
            Err(AreaError::NotAFile { .. })
        ));
        assert!(matches!(
            area.read_file(&path("empty/x"), 100),
            Err(AreaError::NotFound { .. })
        ));
        let too_large = area.read_file(&path("Deep/er/\u{fc}ber-gr\u{f6}\u{df}e.bin"), 1000);
        assert!(
            matches!(too_large, Err(AreaError::TooLarge { limit: 1000, .. })),
            "{too_large:?}"
        );
        let few = WalkLimits {
            max_entries: 3,
            ..WalkLimits::default()
        };
        assert!(matches!(area.list(&few), Err(AreaError::TooLarge { .. })));
        let shallow = WalkLimits {
            max_depth: 1,
            ..WalkLimits::default()
        };
        assert!(matches!(
            area.list(&shallow),
            Err(AreaError::TooLarge { .. })
        ));

        let mut reader = StatusReader::new();
        let rec = read_status(&area, &mut reader, Patience::default())
            .unwrap()
            .unwrap();
        assert_eq!(rec.sequence, 3);
        assert_eq!(rec.custom.as_str(), "half way");
        assert!(!area.is_busy().unwrap());
    }
}

fn upload() -> Vec<UploadFile> {
    let big = pattern(200 * 1024 + 17, 3);
    vec![
        // The start script first in the list: it must still be written last.
        UploadFile::bytes("auto_exec.sh", b"#!/bin/sh\nexit 0\n".to_vec()).unwrap(),
        UploadFile::bytes("nlxtp/manifest.bin", vec![0x4e; 512]).unwrap(),
        UploadFile::bytes("A long name, with spaces.txt", b"long".to_vec()).unwrap(),
        UploadFile {
            path: AreaPath::new("data/sub/\u{fc}ber.bin").unwrap(),
            data: UploadData::Reader {
                reader: Box::new(std::io::Cursor::new(big)),
                len: 200 * 1024 + 17,
            },
            mode: 0o600,
        },
        UploadFile {
            path: AreaPath::new("empty dir").unwrap(),
            data: UploadData::Dir,
            mode: 0o755,
        },
        UploadFile::bytes("zero", Vec::new()).unwrap(),
    ]
}

#[test]
fn writes_what_mtools_reads_and_fsck_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for maker in ALL_MAKERS {
        let img = make_image(dir.path(), maker);
        mcopy(&img, "old.txt", b"the guest's old file");
        mmd(&img, "olddir");
        let before = std::fs::metadata(&img).unwrap();
        let area = VfatImage::new(&img);
        area.replace(upload()).unwrap();
        let after = std::fs::metadata(&img).unwrap();

        assert_eq!(after.len(), before.len(), "{maker:?}: same size");
        assert_ne!(
            after.ino(),
            before.ino(),
            "{maker:?}: a new file renamed over the old"
        );
        assert_eq!(after.mode(), before.mode());
        assert_fsck_clean(&img);
        assert_eq!(
            mlabel(&img),
            "Volume label is NLXTP",
            "{maker:?}: label kept"
        );
        assert_eq!(mtype(&img, "auto_exec.sh"), b"#!/bin/sh\nexit 0\n");
        assert_eq!(mtype(&img, "nlxtp/manifest.bin"), vec![0x4e; 512]);
        assert_eq!(mtype(&img, "A long name, with spaces.txt"), b"long");
        assert_eq!(
            mtype(&img, "data/sub/\u{fc}ber.bin"),
            pattern(200 * 1024 + 17, 3)
        );
        assert_eq!(mtype(&img, "zero"), b"");
        let root = mdir_names(&img, "");
        assert_eq!(
            root.last().map(String::as_str),
            Some("auto_exec.sh"),
            "{maker:?}: script last: {root:?}"
        );
        assert!(
            !root.iter().any(|n| n.starts_with("old")),
            "{maker:?}: old content gone: {root:?}"
        );
        assert!(root.contains(&"empty dir".to_owned()));

        // The backend reads back what it wrote.
        let got = contents(&area);
        assert_eq!(
            got["data/sub/\u{fc}ber.bin"].as_deref(),
            Some(&pattern(200 * 1024 + 17, 3)[..])
        );
        assert_eq!(got["empty dir"], None);
        assert_eq!(got.len(), 9, "{got:?}");
        // A second upload onto the backend's own image, not waiting for the disk: the
        // same image, only without the fsync.
        area.replace_with(
            vec![UploadFile::bytes("auto_exec.sh", b"second".to_vec()).unwrap()],
            Durability::Unsynced,
        )
        .unwrap();
        assert_eq!(mtype(&img, "auto_exec.sh"), b"second");
        assert_fsck_clean(&img);
        assert_eq!(mdir_names(&img, ""), ["auto_exec.sh"]);
    }
}

/// Names that exercise short-name generation: exact 8.3 names in either case (one entry,
/// case flags), case-only long names, and a literal `FOOBAR~1` that a generated name
/// must not take.
const TRICKY_NAMES: [&str; 10] = [
    "notes.txt",
    "README",
    "Makefile",
    "FOOBAR~1",
    "foo bar",
    // A generated short name for the first would be the second's (mixed case) 8.3 name.
    "foo bar.txt",
    "FooBar~1.txt",
    "foo-bar.tar.gz",
    ".hidden",
    "\u{e4}rger.md",
];

#[test]
fn large_directories_and_tricky_names_read_back_through_every_tool() {
    let dir = tempfile::tempdir().unwrap();
    for maker in ALL_MAKERS {
        let img = make_image(dir.path(), maker);
        let area = VfatImage::new(&img);
        let layout = Layout::read(&img);
        let cluster = layout.cluster_size as usize;
        // Similar long names in one directory (three entries each, short names ~1 to
        // ~1200: four-digit tails), sizes around the cluster size, some empty files.
        let n = if layout.fat_bits == 12 { 600 } else { 1200 };
        let mut files: Vec<UploadFile> = (0..n)
            .map(|i| {
                let len = [0, 1, cluster - 1, cluster, cluster + 1][i % 5];
                UploadFile::bytes(
                    &format!("many/long file name {i}.dat"),
                    pattern(len, i as u8),
                )
                .unwrap()
            })
            .collect();
        for (i, name) in TRICKY_NAMES.iter().enumerate() {
            files.push(UploadFile::bytes(&format!("many/{name}"), vec![i as u8; 3]).unwrap());
            files.push(UploadFile::bytes(name, vec![i as u8; 5]).unwrap());
        }
        files.push(UploadFile::bytes("auto_exec.sh", b"exit 0\n".to_vec()).unwrap());
        area.replace(files).unwrap();
        assert_fsck_clean(&img);

        let mut many = mdir_names(&img, "many");
        many.sort();
        let mut want: Vec<String> = (0..n)
            .map(|i| format!("long file name {i}.dat"))
            .chain(TRICKY_NAMES.iter().map(|n| n.to_string()))
            .collect();
        want.sort();
        assert_eq!(many, want, "{maker:?}");
        let mut root = mdir_names(&img, "");
        root.sort();
        let mut want_root: Vec<String> = TRICKY_NAMES
            .iter()
            .map(|n| n.to_string())
            .chain(["auto_exec.sh".into(), "many".into()])
            .collect();
        want_root.sort();
        assert_eq!(root, want_root, "{maker:?}");
        let last = n - 1;
        assert_eq!(
            mtype(&img, &format!("many/long file name {last}.dat")),
            pattern(
                [0, 1, cluster - 1, cluster, cluster + 1][last % 5],
                last as u8
            )
        );
        assert_eq!(mtype(&img, "many/FOOBAR~1"), vec![3u8; 3]);
        assert_eq!(mtype(&img, "foo bar"), vec![4u8; 5]);
        // mtype prints every file whose long or short name matches.
        assert_eq!(mtype(&img, "FooBar~1.txt"), vec![6u8; 5]);
        assert_eq!(mtype(&img, "foo bar.txt"), vec![5u8; 5]);

        let got = contents(&area);
        assert_eq!(got.len(), n + 2 * TRICKY_NAMES.len() + 2, "{maker:?}");
        for i in [0usize, 3, 4, 577, n - 1] {
            let len = [0, 1, cluster - 1, cluster, cluster + 1][i % 5];
            assert_eq!(
                got[&format!("many/long file name {i}.dat")].as_deref(),
                Some(&pattern(len, i as u8)[..]),
                "{maker:?} {i}"
            );
        }
        assert_eq!(got["Makefile"].as_deref(), Some(&[2u8; 5][..]));
        assert_eq!(got["many/notes.txt"].as_deref(), Some(&[0u8; 3][..]));
    }
}

#[test]
fn a_top_level_larger_than_a_fat16_root_is_refused_and_fits_fat32() {
    let dir = tempfile::tempdir().unwrap();
    let files = || {
        (0..600)
            .map(|i| UploadFile::bytes(&format!("top level name {i}"), vec![1]).unwrap())
            .collect::<Vec<_>>()
    };
    let img = make_image(dir.path(), Maker::Mkfs(16));
    let before = std::fs::read(&img).unwrap();
    let err = VfatImage::new(&img)
        .replace(files())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("top level") && err.contains("root directory holds"),
        "{err}"
    );
    assert!(std::fs::read(&img).unwrap() == before);

    // FAT32's root is a cluster chain: it grows past its first cluster.
    let img = make_image(dir.path(), Maker::Mkfs(32));
    VfatImage::new(&img).replace(files()).unwrap();
    assert_fsck_clean(&img);
    assert_eq!(mdir_names(&img, "").len(), 600);
    assert_eq!(mtype(&img, "top level name 599"), [1]);
}

#[test]
fn an_upload_removes_stale_temporary_images_of_killed_uploads_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), Maker::Mkfs(12));
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let leftover = |name: &str, age| {
        let path = dir.path().join(name);
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(4096).unwrap();
        file.set_modified(age).unwrap();
        path
    };
    let stale = leftover(".nlxtp-upload-killed.img", old);
    let fresh = leftover(".nlxtp-upload-justmade.img", std::time::SystemTime::now());
    // Old but still held: an upload that is stopped, not dead.
    let held = leftover(".nlxtp-upload-stopped.img", old);
    let guard = ImageWriteGuard::acquire(&held).unwrap();
    let other = leftover("notes.img", old);

    VfatImage::new(&img).replace(upload()).unwrap();
    assert!(
        !stale.exists(),
        "a stale, unlocked temporary image is removed"
    );
    assert!(
        fresh.exists(),
        "a fresh one may be an upload about to lock it"
    );
    assert!(held.exists(), "a locked one belongs to a live upload");
    assert!(other.exists(), "other files are never touched");
    drop(guard);
}

#[test]
fn replace_held_keeps_the_image_guarded_across_the_swap() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), Maker::Mkfs(16));
    let area = VfatImage::new(&img);
    assert!(area.capabilities().holdable);
    let mut hold = area.hold().unwrap();
    assert!(hold.is_held());
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    let before = ino(&img);

    // Refused: the hold still holds the unchanged image.
    let bad = vec![UploadFile::bytes("what?", b"x".to_vec()).unwrap()];
    let err = area
        .replace_held(&mut hold, bad, Durability::Synced)
        .unwrap_err();
    assert!(err.to_string().contains("'?'"), "{err}");
    assert_eq!(ino(&img), before);
    assert!(qemu_holds_image(&img).unwrap());

    // Done: the hold now holds the new image (another inode).
    area.replace_held(&mut hold, upload(), Durability::Synced)
        .unwrap();
    assert_ne!(ino(&img), before);
    assert!(qemu_holds_image(&img).unwrap(), "the new image is guarded");
    assert!(matches!(
        ImageWriteGuard::acquire(&img),
        Err(AreaError::Busy { .. })
    ));
    drop(hold);
    // A child process another test thread is starting may share the lock's file for the
    // moment between its fork and its exec (OFD locks live as long as any copy of the
    // descriptor): the lock goes once that moment has passed.
    let dropped = std::time::Instant::now();
    while qemu_holds_image(&img).unwrap() {
        assert!(
            dropped.elapsed() < std::time::Duration::from_secs(2),
            "the image stays locked after the hold is dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_fsck_clean(&img);
}

#[test]
fn replace_never_touches_the_live_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), Maker::Mkfs(16));
    mcopy(&img, "keep.txt", b"old content");
    let snapshot = std::fs::read(&img).unwrap();
    let old = std::fs::File::open(&img).unwrap();
    VfatImage::new(&img).replace(upload()).unwrap();
    let mut through_old = Vec::new();
    (&old).read_to_end(&mut through_old).unwrap();
    assert!(through_old == snapshot, "the old inode is unchanged");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".nlxtp-upload-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn rejected_uploads_leave_the_image_alone() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), Maker::Mkfs(12));
    mcopy(&img, "keep.txt", b"old content");
    let snapshot = std::fs::read(&img).unwrap();
    let area = VfatImage::new(&img);
    let cases: Vec<(Vec<UploadFile>, &str)> = vec![
        (
            vec![
                UploadFile::bytes("a.txt", b"1".to_vec()).unwrap(),
                UploadFile::bytes("A.TXT", b"2".to_vec()).unwrap(),
            ],
            "ignores case",
        ),
        (
            vec![UploadFile::bytes("what?.txt", b"1".to_vec()).unwrap()],
            "'?'",
        ),
        (
            vec![UploadFile::bytes("big", vec![1u8; 3 << 20]).unwrap()],
            "has room for",
        ),
        (
            vec![UploadFile {
                path: AreaPath::new("short").unwrap(),
                data: UploadData::Reader {
                    reader: Box::new(std::io::Cursor::new(vec![1u8; 10])),
                    len: 11,
                },
                mode: 0o644,
            }],
            "ended after 10 of 11 bytes",
        ),
    ];
    // Files go in as they come: one that does not fit stops the writing, and the
    // files after it still count towards what the message says is needed.
    let err = area
        .replace(vec![
            UploadFile::bytes("big", vec![1u8; 3 << 20]).unwrap(),
            UploadFile::bytes("more", vec![2u8; 1 << 20]).unwrap(),
        ])
        .unwrap_err();
    assert!(
        matches!(err, AreaError::NoSpace { needed, available } if needed >= 4 << 20 && available < 3 << 20),
        "{err:?}"
    );
    assert!(std::fs::read(&img).unwrap() == snapshot);
    for (files, needle) in cases {
        let err = area.replace(files).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
        assert!(
            std::fs::read(&img).unwrap() == snapshot,
            "image unchanged after: {err}"
        );
        let entries = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, 1, "no temporary image left behind after: {err}");
    }
}

#[test]
fn status_follows_in_place_writes_recreation_and_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), Maker::Mkfs(32));
    let area = VfatImage::new(&img);
    let mut reader = StatusReader::new();
    let quick = Patience {
        pause: std::time::Duration::from_millis(5),
        give_up_after: std::time::Duration::from_millis(100),
    };
    assert_eq!(
        read_status(&area, &mut reader, quick).unwrap(),
        None,
        "no status file yet"
    );

    mmd(&img, "nlxtp");
    mcopy(
        &img,
        "nlxtp/status.bin",
        &status_file(1, &record(1, RunState::Pending, "")),
    );
    let rec = read_status(&area, &mut reader, quick).unwrap().unwrap();
    assert_eq!((rec.sequence, rec.state), (1, RunState::Pending));

    // The guest writes slot after slot in place, as its monitor does.
    let entry = find_entry(&img, b"STATUS  BIN");
    let data = Layout::read(&img).cluster_offset(entry_first_cluster(&img, entry));
    for seq in 2..=6u64 {
        let file = status_file(seq, &record(1, RunState::Running, &format!("step {seq}")));
        let slot = (seq % 2) as usize * 4096;
        patch(&img, data + slot as u64, &file[slot..slot + 4096]);
        let rec = read_status(&area, &mut reader, quick).unwrap().unwrap();
        assert_eq!(rec.sequence, seq);
        assert_eq!(rec.custom.as_str(), format!("step {seq}"));
    }

    // Recreated elsewhere (deleted, a file put first so the clusters differ): found again.
    mdel(&img, "nlxtp/status.bin");
    mcopy(&img, "nlxtp/filler.bin", &vec![0u8; 64 * 1024]);
    mcopy(
        &img,
        "nlxtp/status.bin",
        &status_file(1, &record(2, RunState::Exited(3), "new run")),
    );
    let rec = read_status(&area, &mut reader, quick).unwrap().unwrap();
    assert_eq!((rec.run_id.0[0], rec.state), (2, RunState::Exited(3)));

    // A new image renamed over the old one (an upload): the old inode is not read.
    area.replace(vec![UploadFile::bytes(
        "nlxtp/status.bin",
        status_file(1, &record(3, RunState::Pending, "")),
    )
    .unwrap()])
        .unwrap();
    let rec = read_status(&area, &mut reader, quick).unwrap().unwrap();
    assert_eq!(rec.run_id.0[0], 3);

    // A file too long is corrupt, not retried for ever.
    mcopy(&img, "nlxtp/status.bin", &vec![0u8; 8193]);
    let err = read_status(&area, &mut reader, quick)
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn create_image_makes_clean_labelled_volumes() {
    let dir = tempfile::tempdir().unwrap();
    for (bits, size) in [
        (None, 64 << 20),
        (Some(12), 2 << 20),
        (Some(16), 16 << 20),
        (Some(32), 64 << 20),
    ] {
        let img = dir.path().join(format!("new-{bits:?}.img"));
        create_image(&img, size, bits, None).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
        assert_fsck_clean(&img);
        assert_eq!(mlabel(&img), "Volume label is NLXTP");
        let info = run("file", &[img.to_str().unwrap()]);
        let want = match bits {
            Some(12) => "FAT (12 bit)",
            Some(32) => "FAT (32 bit)",
            _ => "FAT (16 bit)",
        };
        assert!(info.contains(want), "{info}");
        let area = VfatImage::new(&img);
        assert_eq!(area.list(&WalkLimits::default()).unwrap(), []);
        area.replace(upload()).unwrap();
        assert_fsck_clean(&img);
        assert_eq!(mtype(&img, "A long name, with spaces.txt"), b"long");
    }
    let labelled = dir.path().join("label.img");
    create_image(&labelled, 4 << 20, None, Some("MY-DISK_1")).unwrap();
    assert_eq!(mlabel(&labelled), "Volume label is MY-DISK_1");

    let exists = create_image(&labelled, 4 << 20, None, None).unwrap_err();
    assert!(matches!(exists, CreateError::Exists { .. }), "{exists}");
    let bad = dir.path().join("bad.img");
    for (size, bits, label) in [
        (4 << 20, None, Some("lower")),
        (1000, None, None),
        (4 << 20, Some(13), None),
    ] {
        assert!(create_image(&bad, size, bits, label).is_err());
        assert!(!bad.exists());
    }
    let too_small = create_image(&bad, 8 << 20, Some(32), None).unwrap_err();
    assert!(
        matches!(too_small, CreateError::FatTypeDoesNotFit { bits: 32, .. }),
        "{too_small}"
    );
    assert!(!bad.exists(), "a failed create leaves nothing behind");
}
