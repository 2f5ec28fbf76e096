//! Partitioned shared disks, as the original testbed, installers and `virt-make-fs
//! --partition` make them: MBR and GPT tables written by `sfdisk` and `sgdisk`, FAT
//! made by `mkfs.vfat --offset`, and hostile tables. Every command works on the FAT
//! partition, and an upload rewrites only it: the table and everything outside the
//! partition stay byte for byte.

mod common;

#[path = "common/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cli::{job_tar, nlxtp, stderr};
use common::*;
use nlxtp_core::RunState;
use nlxtp_host::area::vfat::{create_disk, find_volume, DiskOptions, ImageFile, Scheme, VfatImage};
use nlxtp_host::area::{AreaError, SharedArea, WalkLimits};

const MIB: u64 = 1 << 20;

/// Runs `program` with `input` on its standard input; panics with its output on failure.
fn run_with_input(program: &str, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} starts (scripts/setup installs it): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 48 MiB disk: a FAT16 partition (20 MiB at 1 MiB, label `label`) and a Linux
/// partition after it, filled with random bytes that an upload must leave alone.
fn disk(dir: &Path, scheme: Scheme, label: &str) -> PathBuf {
    let img = dir.join(format!("{scheme:?}-{label}.img").to_lowercase());
    std::fs::File::create(&img)
        .unwrap()
        .set_len(48 * MIB)
        .unwrap();
    let p = img.to_str().unwrap();
    match scheme {
        Scheme::Mbr => run_with_input(
            "sfdisk",
            &["-q", p],
            "label: dos\nstart=2048, size=40960, type=e\nstart=43008, type=83\n",
        ),
        Scheme::Gpt => {
            run("sgdisk", &["-n", "1:2048:43007", "-t", "1:0700", p]);
            run("sgdisk", &["-n", "2:43008:0", "-t", "2:8300", p]);
        }
    }
    run(
        "mkfs.vfat",
        &["-F", "16", "--offset", "2048", "-n", label, p, "20480"],
    );
    let junk: Vec<u8> = (0..4 * MIB).map(|i| (i * 7919 % 251) as u8).collect();
    let file = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &junk, 43008 * 512).unwrap();
    img
}

/// The image's bytes outside the FAT partition (1 MiB to 21 MiB).
fn outside(img: &Path) -> (Vec<u8>, Vec<u8>) {
    let bytes = std::fs::read(img).unwrap();
    let (start, end) = (MIB as usize, 21 * MIB as usize);
    (bytes[..start].to_vec(), bytes[end..].to_vec())
}

/// The FAT partition as mtools names it.
fn mtools_image(img: &Path) -> String {
    format!("{}@@1M", img.display())
}

fn job(dir: &Path) -> PathBuf {
    job_tar(
        dir,
        &[
            ("auto_exec.sh", b"echo partitioned\n"),
            ("data/blob.bin", &[0x5a; 300_000]),
        ],
    )
}

#[test]
fn every_command_works_on_the_fat_partition_and_leaves_the_rest_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let job = job(dir.path());
    for scheme in [Scheme::Mbr, Scheme::Gpt] {
        let img = disk(dir.path(), scheme, "NLXTP");
        let target = img.to_str().unwrap();
        let place = find_volume(&ImageFile::open(&img).unwrap()).unwrap();
        assert_eq!((place.offset, place.len), (MIB, 20 * MIB), "{scheme:?}");
        assert_eq!(place.partition.as_ref().unwrap().number, 1);

        let status = nlxtp(&["status", "--json", target], &state);
        assert!(status.status.success(), "{scheme:?}: {}", stderr(&status));

        let before = outside(&img);
        let up = nlxtp(&["upload", target, job.to_str().unwrap()], &state);
        assert!(up.status.success(), "{scheme:?}: {}", stderr(&up));
        assert!(
            before == outside(&img),
            "{scheme:?}: bytes outside the partition changed"
        );
        if scheme == Scheme::Gpt {
            let verify = run("sgdisk", &["-v", target]);
            assert!(verify.contains("No problems found"), "{verify}");
        } else {
            let dump = run("sfdisk", &["-d", target]);
            assert!(
                dump.contains("start=        2048, size=       40960"),
                "{dump}"
            );
        }
        let m = mtools_image(&img);
        assert_eq!(
            run("mtype", &["-i", &m, "::auto_exec.sh"]),
            "echo partitioned\n"
        );
        assert_eq!(
            run("mlabel", &["-s", "-i", &m, "::"]).trim(),
            "Volume label is NLXTP"
        );
        let part = dir.path().join("part.img");
        run(
            "dd",
            &[
                &format!("if={target}"),
                &format!("of={}", part.display()),
                "bs=1M",
                "skip=1",
                "count=20",
                "status=none",
            ],
        );
        assert_fsck_clean(&part);

        // A guest-written record in the partition, read by status and wait.
        let rec = record(3, RunState::Exited(0), "done in a partition");
        let src = dir.path().join("status.bin");
        std::fs::write(&src, status_file(2, &rec)).unwrap();
        run(
            "mcopy",
            &["-o", "-i", &m, src.to_str().unwrap(), "::nlxtp/status.bin"],
        );
        let status = nlxtp(&["status", "--json", target], &state);
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(json["record"]["custom"], "done in a partition", "{json}");
        let wait = nlxtp(&["wait", "--quiet", target], &state);
        assert_eq!(wait.status.code(), Some(0), "{}", stderr(&wait));

        let down = dir.path().join("down.tar");
        let got = nlxtp(&["download", target, down.to_str().unwrap()], &state);
        assert!(got.status.success(), "{}", stderr(&got));
        let listing = run("tar", &["-tf", down.to_str().unwrap()]);
        assert!(listing.contains("data/blob.bin") && listing.contains("nlxtp/status.bin"));
        std::fs::remove_file(down).unwrap();
    }
}

#[test]
fn create_disk_makes_tables_the_tools_accept() {
    let dir = tempfile::tempdir().unwrap();
    for (scheme, flag) in [(Scheme::Mbr, "mbr"), (Scheme::Gpt, "gpt")] {
        let img = dir.path().join(format!("{flag}.img"));
        let out = nlxtp(
            &[
                "create-disk",
                img.to_str().unwrap(),
                "--size",
                "40M",
                "--partition",
                flag,
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let target = img.to_str().unwrap();
        match scheme {
            Scheme::Mbr => {
                let dump = run("sfdisk", &["-d", target]);
                assert!(
                    dump.contains("start=        2048") && dump.contains("type=e"),
                    "{dump}"
                );
            }
            Scheme::Gpt => {
                let verify = run("sgdisk", &["-v", target]);
                assert!(verify.contains("No problems found"), "{verify}");
                let print = run("sgdisk", &["-p", target]);
                assert!(print.contains("0700") && print.contains("NLXTP"), "{print}");
            }
        }
        let m = mtools_image(&img);
        assert_eq!(
            run("mlabel", &["-s", "-i", &m, "::"]).trim(),
            "Volume label is NLXTP"
        );
        let area = VfatImage::new(&img);
        assert!(area.list(&WalkLimits::default()).unwrap().is_empty());
    }
    // Another way in: the library, with a label of one's own.
    let img = dir.path().join("lib.img");
    let options = DiskOptions {
        size: 40 * MIB,
        label: Some("SHARED".into()),
        partition: Some(Scheme::Gpt),
        ..DiskOptions::default()
    };
    create_disk(&img, &options).unwrap();
    let place = find_volume(&ImageFile::open(&img).unwrap()).unwrap();
    assert_eq!(place.offset, MIB);
}

#[test]
fn two_fat_partitions_need_the_label_to_tell() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("two.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(48 * MIB)
        .unwrap();
    let p = img.to_str().unwrap();
    run_with_input(
        "sfdisk",
        &["-q", p],
        "label: dos\nstart=2048, size=40960, type=e\nstart=43008, size=40960, type=e\n",
    );
    run(
        "mkfs.vfat",
        &["-F", "16", "--offset", "2048", "-n", "DATA", p, "20480"],
    );
    run(
        "mkfs.vfat",
        &["-F", "16", "--offset", "43008", "-n", "OTHER", p, "20480"],
    );
    let err = VfatImage::new(&img)
        .list(&WalkLimits::default())
        .unwrap_err();
    assert!(matches!(err, AreaError::AmbiguousVolume { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("partition 1") && text.contains("partition 2") && text.contains("NLXTP"),
        "{text}"
    );
    // Labelled: that one is the shared area.
    run("mlabel", &["-i", &format!("{p}@@43008S"), "::NLXTP"]);
    let place = find_volume(&ImageFile::open(&img).unwrap()).unwrap();
    assert_eq!(place.offset, 43008 * 512);
}

/// Writes `bytes` at `offset` of `img`.
fn poke(img: &Path, offset: u64, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, bytes, offset).unwrap();
}

/// An MBR entry: type, first sector, sectors.
fn entry(kind: u8, start: u32, sectors: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[4] = kind;
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    e
}

/// Makes the GPT header's checksum match its (changed) fields again.
fn reseal_gpt_header(img: &Path) {
    let mut header = std::fs::read(img).unwrap()[512..1024].to_vec();
    header[16..20].fill(0);
    let crc = nlxtp_host::area::vfat::partition::crc32(&header[..92]);
    poke(img, 512 + 16, &crc.to_le_bytes());
}

#[test]
fn hostile_partition_tables_get_clear_errors_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let img = dir.path().join(name);
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 * MIB)
            .unwrap();
        poke(&img, 510, &[0x55, 0xAA]);
        img
    };
    let mut cases: Vec<(&str, PathBuf, &str)> = Vec::new();

    let img = fresh("past-end.img");
    poke(&img, 446, &entry(0x0E, 2048, 1 << 30));
    cases.push(("an entry past the end", img, "outside the image"));

    let img = fresh("overlap.img");
    poke(&img, 446, &entry(0x83, 2048, 4096));
    poke(&img, 462, &entry(0x83, 4000, 4096));
    cases.push(("overlapping entries", img, "overlap"));

    // An extended partition whose boot record points back at itself.
    let img = fresh("ebr-loop.img");
    poke(&img, 446, &entry(0x05, 2048, 8192));
    poke(&img, 2048 * 512 + 446, &entry(0x83, 63, 100));
    poke(&img, 2048 * 512 + 462, &entry(0x05, 1, 100));
    poke(&img, 2048 * 512 + 510, &[0x55, 0xAA]);
    poke(&img, 2049 * 512 + 446, &entry(0x83, 63, 100));
    poke(&img, 2049 * 512 + 462, &entry(0x05, 1, 100)); // itself, again and again
    poke(&img, 2049 * 512 + 510, &[0x55, 0xAA]);
    cases.push(("a loop of extended boot records", img, "loops"));

    // A GPT claiming a million entries, and one with a broken checksum.
    let made = dir.path().join("gpt.img");
    create_disk(
        &made,
        &DiskOptions {
            size: 8 * MIB,
            partition: Some(Scheme::Gpt),
            ..DiskOptions::default()
        },
    )
    .unwrap();
    let absurd = dir.path().join("gpt-count.img");
    std::fs::copy(&made, &absurd).unwrap();
    poke(&absurd, 512 + 80, &1_000_000u32.to_le_bytes());
    reseal_gpt_header(&absurd);
    cases.push(("a GPT of a million entries", absurd, "1000000 entries"));
    let crc = dir.path().join("gpt-crc.img");
    std::fs::copy(&made, &crc).unwrap();
    poke(&crc, 2 * 512 + 40, &[0xff]);
    cases.push(("GPT entries changed after their checksum", crc, "checksum"));

    let img = fresh("no-fat.img");
    poke(&img, 446, &entry(0x83, 2048, 4096));
    cases.push(("no FAT partition", img, "no FAT partition"));

    for (what, img, needle) in cases {
        let took = std::time::Instant::now();
        let err = VfatImage::new(&img)
            .list(&WalkLimits::default())
            .expect_err(what);
        assert!(
            took.elapsed() < Duration::from_secs(2),
            "{what}: {:?}",
            took.elapsed()
        );
        let text = err.to_string();
        assert!(text.contains(needle), "{what}: {text}");
        let status = nlxtp(&["status", img.to_str().unwrap()], dir.path());
        assert_eq!(status.status.code(), Some(1), "{what}");
        assert!(
            !stderr(&status).contains("panicked"),
            "{what}: {}",
            stderr(&status)
        );
    }
}

/// The FUSE view on a partitioned disk: a file written through the mount is committed
/// into the partition, and the table stays valid.
#[test]
fn the_fuse_view_writes_into_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("view.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = nlxtp(
        &[
            "create-disk",
            img.to_str().unwrap(),
            "--size",
            "40M",
            "--partition",
            "gpt",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let vm = format!("web={}", img.display());
    let mounted = nlxtp(
        &["mount", mnt.to_str().unwrap(), "--vm", &vm, "--daemon"],
        dir.path(),
    );
    assert!(mounted.status.success(), "{}", stderr(&mounted));
    let written = std::fs::write(mnt.join("web/auto_exec.sh"), "echo via the view\n");
    let view = std::fs::read_to_string(mnt.join("web/.nlxtp/view.json"));
    let unmounted = nlxtp(&["umount", mnt.to_str().unwrap()], dir.path());
    written.unwrap();
    assert!(view.unwrap().contains("\"read-write\""));
    assert!(unmounted.status.success(), "{}", stderr(&unmounted));
    assert_eq!(
        run("mtype", &["-i", &mtools_image(&img), "::auto_exec.sh"]),
        "echo via the view\n"
    );
    let verify = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");
}
