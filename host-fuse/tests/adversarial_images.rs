//! Hostile vFAT images beyond tests/vfat_hostile.rs (which covers looped chains, FAT
//! entries 0/1/reserved/beyond the volume, broken boot sectors and sizes beyond the
//! image): directories with tens of thousands of entries, garbage long-file-name
//! entries, cross-linked files that would multiply what a download reads, deep trees,
//! and directories shared between parents. Every operation a host runs on an image
//! (list, walk reading every file, read by name, status, download, upload) ends within a
//! few seconds, with a clear error where the image is broken, and never panics.

mod common;
mod hostile;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{make_image, mmd, patch, Layout, Maker};
use nlxtp_core::{RunState, StatusReader};
use nlxtp_host::area::vfat::VfatImage;
use nlxtp_host::area::{read_status, AreaError, AreaPath, Patience, SharedArea, WalkLimits};
use nlxtp_host::ops::archive::{write_download, Compression};
use nlxtp_host::ops::{self, UploadOptions};

/// What every operation may take at most on these images (a debug build).
const FEW_SECONDS: Duration = Duration::from_secs(5);

/// A FAT16 image (16 MiB) with a directory `BIG` whose entries this test writes itself.
struct Image {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    layout: Layout,
    /// Clusters handed out so far, counting down from the last one.
    next_free: u32,
}

fn short_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// A short directory entry.
fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// A long-name entry: order byte, checksum, 13 UTF-16 units.
fn lfn_entry(order: u8, checksum: u8, units: &[u16; 13]) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0] = order;
    e[11] = 0x0F;
    e[13] = checksum;
    let mut i = 0;
    for range in [1..11, 14..26, 28..32] {
        for at in range.step_by(2) {
            e[at..at + 2].copy_from_slice(&units[i].to_le_bytes());
            i += 1;
        }
    }
    e
}

/// The long-name entries (last part first, as on disk) of `name` for `short`.
fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    units.push(0);
    while !units.len().is_multiple_of(13) {
        units.push(0xFFFF);
    }
    let parts: Vec<[u16; 13]> = units.chunks(13).map(|c| c.try_into().unwrap()).collect();
    let sum = short_checksum(short);
    (0..parts.len())
        .rev()
        .map(|i| {
            let order = (i + 1) as u8 | if i + 1 == parts.len() { 0x40 } else { 0 };
            lfn_entry(order, sum, &parts[i])
        })
        .collect()
}

/// The offset of the short entry of the directory `short` (not the volume label, which
/// mkfs names NLXTP too).
fn find_dir_entry(img: &Path, short: &[u8; 11]) -> u64 {
    let b = std::fs::read(img).unwrap();
    b.chunks_exact(32)
        .position(|e| &e[..11] == short && e[11] & 0x10 != 0 && e[11] != 0x0F)
        .map(|i| i as u64 * 32)
        .unwrap_or_else(|| panic!("no directory {:?}", String::from_utf8_lossy(short)))
}

/// 8.3 name `F<n>` padded, extension `TXT`.
fn numbered(n: usize) -> [u8; 11] {
    let mut name = *b"           ";
    let digits = format!("F{n:07}");
    name[..8].copy_from_slice(digits.as_bytes());
    name[8..].copy_from_slice(b"TXT");
    name
}

impl Image {
    fn new() -> Self {
        let tmp = hostile::scratch();
        let path = make_image(tmp.path(), Maker::Mkfs(16));
        mmd(&path, "BIG");
        mmd(&path, "nlxtp");
        let layout = Layout::read(&path);
        let len = std::fs::metadata(&path).unwrap().len();
        let clusters = ((len - layout.data_offset) / layout.cluster_size) as u32;
        Image {
            _tmp: tmp,
            path,
            layout,
            next_free: clusters + 1,
        }
    }

    /// A fresh chain of `n` clusters at the end of the volume, linked in both FATs.
    fn chain(&mut self, n: u32) -> u32 {
        let first = self.next_free + 1 - n;
        self.next_free -= n;
        let fat_len = self.layout.root_offset - self.layout.fat_offset;
        for c in first..first + n {
            let next: u16 = if c + 1 == first + n {
                0xFFFF
            } else {
                (c + 1) as u16
            };
            for fat in 0..2 {
                patch(
                    &self.path,
                    self.layout.fat_offset + fat * fat_len / 2 + 2 * u64::from(c),
                    &next.to_le_bytes(),
                );
            }
        }
        first
    }

    /// Writes `entries` as the whole content of directory `dir` (`BIG` or `nlxtp`), on a
    /// fresh chain long enough, zero-filled after them.
    fn fill_dir(&mut self, dir: &[u8; 11], entries: &[[u8; 32]]) {
        let bytes = (entries.len() + 1) * 32;
        let n = bytes.div_ceil(self.layout.cluster_size as usize) as u32;
        let first = self.chain(n);
        let mut data = Vec::with_capacity(n as usize * self.layout.cluster_size as usize);
        for e in entries {
            data.extend_from_slice(e);
        }
        data.resize(n as usize * self.layout.cluster_size as usize, 0);
        patch(&self.path, self.layout.cluster_offset(first), &data);
        let at = find_dir_entry(&self.path, dir);
        patch(&self.path, at + 26, &(first as u16).to_le_bytes());
    }

    /// A file's data in a fresh chain: its first cluster.
    fn data(&mut self, bytes: &[u8]) -> u32 {
        let n = bytes
            .len()
            .div_ceil(self.layout.cluster_size as usize)
            .max(1) as u32;
        let first = self.chain(n);
        patch(&self.path, self.layout.cluster_offset(first), bytes);
        first
    }
}

/// What each operation on one image did.
#[derive(Debug)]
struct Outcomes {
    list: Result<usize, String>,
    walk: Result<u64, String>,
    read: Result<usize, String>,
    status: Result<bool, String>,
    download: Result<u64, String>,
    upload: Result<(), String>,
}

/// Runs every host operation on the image at `path`, each under FEW_SECONDS.
fn every_operation(path: &Path, read: &str) -> Outcomes {
    let path = path.to_path_buf();
    let read = AreaPath::new(read).unwrap();
    let step = |what: &str, f: Box<dyn FnOnce() -> Result<String, String> + Send>| {
        hostile::deadline(FEW_SECONDS, what, f).0
    };
    let p = path.clone();
    let list = step(
        "list",
        Box::new(move || {
            VfatImage::new(&p)
                .list(&WalkLimits::default())
                .map(|l| l.len().to_string())
                .map_err(|e| e.to_string())
        }),
    );
    let p = path.clone();
    let walk = step(
        "walk",
        Box::new(move || {
            let mut bytes = 0u64;
            VfatImage::new(&p)
                .walk(&WalkLimits::default(), &mut |_, reader| {
                    if let Some(r) = reader {
                        bytes += io::copy(r, &mut io::sink())?;
                    }
                    Ok(())
                })
                .map(|()| bytes.to_string())
                .map_err(|e| e.to_string())
        }),
    );
    let p = path.clone();
    let read = step(
        "read_file",
        Box::new(move || {
            VfatImage::new(&p)
                .read_file(&read, 1 << 20)
                .map(|b| b.len().to_string())
                .map_err(|e| e.to_string())
        }),
    );
    let p = path.clone();
    let status = step(
        "status",
        Box::new(move || {
            let quick = Patience {
                pause: Duration::from_millis(5),
                give_up_after: Duration::from_millis(100),
            };
            read_status(&VfatImage::new(&p), &mut StatusReader::new(), quick)
                .map(|r| r.is_some().to_string())
                .map_err(|e| e.to_string())
        }),
    );
    let p = path.clone();
    let download = step(
        "download",
        Box::new(move || {
            let area = VfatImage::new(&p);
            write_download(
                &area,
                io::sink(),
                Compression::Gzip,
                &WalkLimits::default(),
                &mut |_| {},
            )
            .map(|r| r.bytes.to_string())
            .map_err(|e| e.to_string())
        }),
    );
    // An upload last: it replaces whatever the guest left, broken or not.
    let p = path.clone();
    let upload = step(
        "upload",
        Box::new(move || {
            let area = ops::open_target(&p).map_err(|e| e.to_string())?;
            let archive = hostile::Tar::new()
                .file("auto_exec.sh", b"#!/bin/sh\n")
                .finish();
            let options = UploadOptions {
                force: true,
                ..UploadOptions::default()
            };
            ops::upload(area.as_ref(), &archive[..], &options)
                .map(|_| String::new())
                .map_err(|e| e.to_string())
        }),
    );
    let num = |r: Result<String, String>| r.map(|s| s.parse::<u64>().unwrap());
    let outcomes = Outcomes {
        list: num(list).map(|n| n as usize),
        walk: num(walk),
        read: num(read).map(|n| n as usize),
        status: status.map(|s| s == "true"),
        download: num(download),
        upload: upload.map(|_| ()),
    };
    hostile::fsck(&path).expect("the upload wrote a clean image");
    outcomes
}

fn assert_corrupt(what: &str, got: &Result<impl std::fmt::Debug, String>, needle: &str) {
    match got {
        Err(e) => assert!(
            e.contains("corrupt") && e.contains(needle),
            "{what}: {e:?} should be a corrupt-area error about {needle:?}"
        ),
        Ok(v) => panic!("{what}: {v:?}, expected an error about {needle:?}"),
    }
}

#[test]
fn thirty_thousand_entries_in_one_directory() {
    let mut img = Image::new();
    let mut entries = Vec::new();
    let data = img.data(b"hello");
    for n in 0..30_000 {
        let name = numbered(n);
        if n % 3 == 0 {
            // A long name on every third.
            entries.extend(lfn_entries(&format!("a long name number {n}.log"), &name));
        }
        if n % 7 == 0 {
            // Deleted entries in between.
            let mut gone = short_entry(&name, 0x20, 0, 0);
            gone[0] = 0xE5;
            entries.push(gone);
        }
        let (cluster, size) = if n == 29_999 { (data, 5) } else { (0, 0) };
        entries.push(short_entry(&name, 0x20, cluster, size));
    }
    img.fill_dir(b"BIG        ", &entries);
    let started = std::time::Instant::now();
    let got = every_operation(&img.path, "BIG/F0029999.TXT");
    eprintln!("30,000 entries: {got:?} in {:?}", started.elapsed());
    // Tens of thousands of entries are valid: everything works, within the bounds.
    assert_eq!(got.list, Ok(30_000 + 2));
    assert_eq!(got.walk, Ok(5));
    assert_eq!(got.read, Ok(5));
    assert_eq!(got.status, Ok(false));
    assert_eq!(got.download, Ok(5));
    assert_eq!(got.upload, Ok(()));

    // With a walk bound below the count: a clear error, not a partial list.
    let mut img2 = Image::new();
    img2.fill_dir(b"BIG        ", &entries);
    let limits = WalkLimits {
        max_entries: 10_000,
        ..WalkLimits::default()
    };
    let err = VfatImage::new(&img2.path).list(&limits).unwrap_err();
    assert!(matches!(err, AreaError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("the number of files"), "{err}");
}

#[test]
fn a_directory_beyond_65536_entries_is_corrupt() {
    let mut img = Image::new();
    let entries: Vec<[u8; 32]> = (0..70_000)
        .map(|n| {
            let mut name = numbered(n % 9_999_999);
            name[0] = b'G';
            short_entry(&name, 0x20, 0, 0)
        })
        .collect();
    img.fill_dir(b"BIG        ", &entries);
    let got = every_operation(&img.path, "BIG/G0000001.TXT");
    eprintln!("70,000 entries: {got:?}");
    assert_corrupt("list", &got.list, "more clusters than it can use");
    assert_corrupt("walk", &got.walk, "more clusters than it can use");
    assert_corrupt("read", &got.read, "more clusters than it can use");
    assert_corrupt("download", &got.download, "more clusters than it can use");
    assert_eq!(got.status, Ok(false));
    assert_eq!(got.upload, Ok(()));
}

/// One garbage long-name case: what it is, its entries, the name a host must show (or
/// the text of its corrupt-area error).
type LfnCase = (&'static str, Vec<[u8; 32]>, Result<String, String>);

/// Long-name entries a guest can write: each case is a directory of them before a short
/// entry `X.TXT`, and what a host must show (the short name when the long one does not
/// apply, a corrupt-area error when it cannot be a name).
#[test]
fn garbage_long_file_names() {
    let short = *b"X       TXT";
    let sum = short_checksum(&short);
    let unit = |s: &str| -> [u16; 13] {
        let mut u = [0xFFFFu16; 13];
        let v: Vec<u16> = s.encode_utf16().collect();
        u[..v.len()].copy_from_slice(&v);
        if v.len() < 13 {
            u[v.len()] = 0;
        }
        u
    };
    let text = |s: &str| Ok::<String, String>(s.to_owned());
    let cases: Vec<LfnCase> = vec![
        (
            "a valid long name",
            lfn_entries("valid name.txt", &short),
            text("valid name.txt"),
        ),
        (
            "wrong checksum",
            vec![lfn_entry(0x41, sum ^ 1, &unit("wrong sum"))],
            text("X.TXT"),
        ),
        (
            "orphan long name, no last-part flag",
            vec![lfn_entry(0x01, sum, &unit("orphan"))],
            text("X.TXT"),
        ),
        (
            "parts out of order",
            vec![
                lfn_entry(0x41, sum, &unit("first")),
                lfn_entry(0x02, sum, &unit("second")),
            ],
            text("X.TXT"),
        ),
        (
            "order 0",
            vec![lfn_entry(0x40, sum, &unit("zero"))],
            text("X.TXT"),
        ),
        (
            "31 parts claimed, one given",
            vec![lfn_entry(0x5F, sum, &unit("many"))],
            text("X.TXT"),
        ),
        (
            "an unpaired surrogate",
            vec![lfn_entry(0x41, sum, &{
                let mut u = unit("ab");
                u[1] = 0xD800;
                u
            })],
            Err("not valid UTF-16".into()),
        ),
        (
            "a slash in the name",
            lfn_entries("../../etc/passwd", &short),
            Err("the name \"../../etc/passwd\"".into()),
        ),
        (
            "the name '.'",
            lfn_entries(".", &short),
            Err("the name \".\"".into()),
        ),
        (
            "an empty name (NUL first)",
            vec![lfn_entry(0x41, sum, &unit(""))],
            text("X.TXT"),
        ),
        (
            "all 0xFFFF",
            vec![lfn_entry(0x41, sum, &[0xFFFF; 13])],
            text("\u{FFFF}".repeat(13).as_str()),
        ),
        (
            "random bytes with the long-name attribute",
            (0..64u32)
                .map(|i| {
                    let mut e = [0u8; 32];
                    for (j, b) in e.iter_mut().enumerate() {
                        *b = (i.wrapping_mul(2_654_435_761).rotate_left(j as u32) >> 7) as u8;
                    }
                    e[0] = 0x41 | (i as u8 & 0x1F);
                    e[11] = 0x0F;
                    e
                })
                .collect(),
            Ok(String::new()),
        ),
    ];
    let mut results = Vec::new();
    for (what, mut entries, expected) in cases {
        let mut img = Image::new();
        let cluster = img.data(b"x");
        entries.push(short_entry(&short, 0x20, cluster, 1));
        img.fill_dir(b"BIG        ", &entries);
        let listed = hostile::deadline(FEW_SECONDS, what, {
            let p = img.path.clone();
            move || VfatImage::new(&p).list(&WalkLimits::default())
        })
        .0;
        let names = listed.map(|l| {
            l.into_iter()
                .filter_map(|e| e.path.as_str().strip_prefix("BIG/").map(str::to_owned))
                .collect::<Vec<_>>()
        });
        match (&expected, &names) {
            (Ok(want), Ok(got)) if want.is_empty() => {
                assert_eq!(got.len(), 1, "{what}: {got:?}")
            }
            (Ok(want), Ok(got)) => assert_eq!(got, std::slice::from_ref(want), "{what}"),
            (Err(needle), Err(e)) => {
                assert!(matches!(e, AreaError::Corrupt { .. }), "{what}: {e}");
                assert!(e.to_string().contains(needle.as_str()), "{what}: {e}");
            }
            _ => panic!("{what}: {names:?}, expected {expected:?}"),
        }
        // Whatever the names, every other operation ends in time and an upload repairs.
        let got = every_operation(&img.path, "BIG/X.TXT");
        assert_eq!(got.upload, Ok(()), "{what}");
        results.push((what, names.map(|n| n.len()).map_err(|e| e.to_string())));
    }
    eprintln!("{results:#?}");
}

#[test]
fn cross_linked_files_cannot_multiply_a_download() {
    // 20,000 entries sharing one 1 MiB chain: 20 GB of "files" in a 16 MiB image.
    let mut img = Image::new();
    let chain = img.data(&vec![b'z'; 1 << 20]);
    let entries: Vec<[u8; 32]> = (0..20_000)
        .map(|n| short_entry(&numbered(n), 0x20, chain, 1 << 20))
        .collect();
    img.fill_dir(b"BIG        ", &entries);
    let started = std::time::Instant::now();
    let got = every_operation(&img.path, "BIG/F0000001.TXT");
    eprintln!("cross-linked: {got:?} in {:?}", started.elapsed());
    // One file alone reads fine; walking them all is refused before the data region's
    // size is exceeded, long before the 4 GiB bound a valid volume could never reach.
    assert_eq!(got.read, Ok(1 << 20));
    assert_corrupt("walk", &got.walk, "cross-link");
    assert_corrupt("download", &got.download, "cross-link");
    assert_eq!(got.upload, Ok(()));
}

#[test]
fn directories_shared_between_parents_and_deep_trees() {
    // Two sibling entries naming the same directory chain.
    let mut img = Image::new();
    let sub = img.chain(1);
    let entries = vec![
        short_entry(b"ONE        ", 0x10, sub, 0),
        short_entry(b"TWO        ", 0x10, sub, 0),
    ];
    img.fill_dir(b"BIG        ", &entries);
    let got = every_operation(&img.path, "BIG/TWO");
    assert_corrupt("walk", &got.walk, "reached twice");
    assert_corrupt("list", &got.list, "reached twice");
    assert!(got.read.is_err(), "a directory is not a file");

    // 1,000 nested directories, each its own cluster: a walk stops at its depth bound,
    // a read by a 2,000-byte path goes down all of them, each in time.
    let mut img = Image::new();
    let depth = 1000;
    let clusters: Vec<u32> = (0..depth).map(|_| img.chain(1)).collect();
    let file = img.data(b"bottom");
    let cluster_size = img.layout.cluster_size as usize;
    for (i, &c) in clusters.iter().enumerate() {
        let mut dir = vec![0u8; cluster_size];
        let child = match clusters.get(i + 1) {
            Some(&next) => short_entry(b"D          ", 0x10, next, 0),
            None => short_entry(b"F          ", 0x20, file, 6),
        };
        dir[..32].copy_from_slice(&child);
        patch(&img.path, img.layout.cluster_offset(c), &dir);
    }
    let at = find_dir_entry(&img.path, b"BIG        ");
    patch(&img.path, at + 26, &(clusters[0] as u16).to_le_bytes());
    let deep = format!("BIG/{}F", "D/".repeat(depth - 1));
    let got = every_operation(&img.path, &deep);
    eprintln!("1,000 levels: {got:?}");
    assert!(
        matches!(&got.walk, Err(e) if e.contains("the depth of")),
        "{:?}",
        got.walk
    );
    assert_eq!(got.read, Ok(6));
    assert_eq!(got.upload, Ok(()));
}

#[test]
fn a_status_file_at_the_end_of_a_huge_protocol_directory() {
    let mut img = Image::new();
    let rec = common::record(3, RunState::Exited(7), "found");
    let file = common::status_file(1, &rec);
    let data = img.data(&file);
    let mut entries: Vec<[u8; 32]> = (0..40_000)
        .map(|n| short_entry(&numbered(n), 0x20, 0, 0))
        .collect();
    entries.push(short_entry(b"STATUS  BIN", 0x20, data, file.len() as u32));
    img.fill_dir(b"NLXTP      ", &entries);
    let area = VfatImage::new(&img.path);
    let (record, took) = hostile::deadline(FEW_SECONDS, "status", move || {
        read_status(&area, &mut StatusReader::new(), Patience::default())
    });
    let record = record.unwrap().unwrap();
    assert_eq!(record.state, RunState::Exited(7));
    eprintln!("status behind 40,000 entries: {took:?}");
}
