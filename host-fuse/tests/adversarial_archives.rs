//! Hostile upload archives, generated here (well over a hundred), each uploaded with
//! `ops::upload` into both backends: a vFAT image and a container directory, both opened
//! with `ops::open_target` as the CLI opens them.
//!
//! For every case and backend: a clear error or the documented safe handling (see
//! docs/security.md); nothing written outside the target; a refused upload leaves the
//! previous content as it was (the image byte for byte, the directory file for file);
//! every image passes `fsck.vfat -n` afterwards; no upload takes more than a few seconds.
//! Decompression bombs and a million members stop at their bound quickly and in bounded
//! memory.

mod hostile;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostile::{kind, Header, ManyMembers, Piece, Tar};
use nlxtp_core::{layout, StatusReader};
use nlxtp_host::area::vfat::create_image;
use nlxtp_host::area::{read_status, EntryKind, Patience, SharedArea, WalkLimits};
use nlxtp_host::ops::{self, ArchiveLimits, UploadError, UploadOptions};

/// What one backend must do with a case.
#[derive(Debug, Clone)]
enum Outcome {
    /// Refused, with a message containing this text; the area as it was.
    Refused(&'static str),
    /// Accepted: exactly these files (besides the fresh manifest), with these bytes.
    Accepted(Vec<(String, Vec<u8>)>),
}

use Outcome::{Accepted, Refused};

#[derive(Debug, Clone)]
struct Case {
    name: String,
    archive: Vec<u8>,
    image: Outcome,
    dir: Outcome,
    files_only: bool,
    run_again: bool,
    limits: ArchiveLimits,
}

fn case(name: impl Into<String>, archive: Vec<u8>, both: Outcome) -> Case {
    Case {
        name: name.into(),
        archive,
        image: both.clone(),
        dir: both,
        files_only: false,
        run_again: false,
        limits: ArchiveLimits::default(),
    }
}

fn split(name: impl Into<String>, archive: Vec<u8>, image: Outcome, dir: Outcome) -> Case {
    Case {
        image,
        dir,
        ..case(name, archive, Refused(""))
    }
}

const SCRIPT: &[u8] = b"#!/bin/sh\necho new\n";

fn accepted(files: &[(&str, &[u8])]) -> Outcome {
    Accepted(
        files
            .iter()
            .map(|(p, b)| ((*p).to_owned(), b.to_vec()))
            .collect(),
    )
}

/// A valid archive with `tar` before its start script.
fn with_script(tar: Tar) -> Vec<u8> {
    tar.file("auto_exec.sh", SCRIPT).finish()
}

/// Where absolute member names point: a real directory outside every area.
struct Outside {
    dir: PathBuf,
    secret: String,
}

fn escapes(out: &Outside) -> Vec<Case> {
    let abs = format!("{}/pwned", out.dir.display());
    let mut names: Vec<String> = [
        "../escape",
        "../../escape",
        "../../../../../../../../tmp/escape",
        "a/../../escape",
        "a/b/../../../escape",
        "./../escape",
        "..",
        "../",
        "a/..",
        "a/../b",
        "/abs",
        "/",
        "//abs",
        "/./abs",
        "/etc/cron.d/nlxtp",
        "./a/./../../escape",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    names.push(abs);
    let mut cases = Vec::new();
    for name in &names {
        cases.push(case(
            format!("file {name:?}"),
            with_script(Tar::new().file(name, b"escaped")),
            Refused("unsafe path"),
        ));
        cases.push(case(
            format!("dir {name:?}"),
            with_script(Tar::new().dir(name)),
            Refused("unsafe path"),
        ));
    }
    // The same through the two ways of naming a member beyond 100 bytes.
    let long = format!("{}/../../../escape", "d".repeat(120));
    cases.push(case(
        "GNU long name with '..'",
        with_script(Tar::new().long_name(long.as_bytes()).file("short", b"x")),
        Refused("unsafe path"),
    ));
    cases.push(case(
        "PAX path '..'",
        with_script(
            Tar::new()
                .pax(&[("path", b"../escape")])
                .file("short", b"x"),
        ),
        Refused("unsafe path"),
    ));
    cases.push(case(
        "PAX path absolute",
        with_script(
            Tar::new()
                .pax(&[("path", format!("{}/pwned", out.dir.display()).as_bytes())])
                .file("short", b"x"),
        ),
        Refused("unsafe path"),
    ));
    cases.push(case(
        "PAX path with a NUL byte",
        with_script(Tar::new().pax(&[("path", b"a\0b")]).file("short", b"x")),
        Refused("unsafe path"),
    ));
    cases
}

fn links(out: &Outside) -> Vec<Case> {
    let secret_file = out.dir.join("secret.txt").display().to_string();
    let mut cases = Vec::new();
    let targets = [
        "/etc/passwd",
        "/",
        "../../..",
        "../outside/secret.txt",
        secret_file.as_str(),
        "inside.txt",
        "",
        "/proc/self/root",
    ];
    for target in targets {
        cases.push(case(
            format!("symlink to {target:?}"),
            with_script(
                Tar::new()
                    .file("inside.txt", b"in")
                    .link("link", kind::SYMLINK, target),
            ),
            Refused("symbolic link"),
        ));
        cases.push(case(
            format!("hard link to {target:?}"),
            with_script(
                Tar::new()
                    .file("inside.txt", b"in")
                    .link("link", kind::HARD_LINK, target),
            ),
            Refused("hard link"),
        ));
    }
    for name in ["auto_exec.sh", "nlxtp", "nlxtp/status.bin", "d/link"] {
        cases.push(case(
            format!("symlink named {name}"),
            Tar::new()
                .link(name, kind::SYMLINK, &secret_file)
                .file("auto_exec.sh/x", b"x")
                .finish(),
            Refused("symbolic link"),
        ));
    }
    cases.push(case(
        "hard link named auto_exec.sh",
        Tar::new()
            .file("real.sh", SCRIPT)
            .link("auto_exec.sh", kind::HARD_LINK, "real.sh")
            .finish(),
        Refused("hard link"),
    ));
    cases.push(case(
        "symlink, then a file through it",
        with_script(
            Tar::new()
                .link("l", kind::SYMLINK, &out.dir.display().to_string())
                .file("l/pwned", b"through the link"),
        ),
        Refused("symbolic link"),
    ));
    cases.push(case(
        "symlink in a directory, then a file through it",
        with_script(
            Tar::new()
                .dir("d")
                .link("d/l", kind::SYMLINK, "/")
                .file("d/l/tmp/pwned", b"through the link"),
        ),
        Refused("symbolic link"),
    ));
    cases.push(case(
        "PAX linkpath escaping",
        with_script(
            Tar::new()
                .pax(&[("linkpath", b"../../../etc/shadow")])
                .link("l", kind::SYMLINK, "x"),
        ),
        Refused("symbolic link"),
    ));
    cases.push(case(
        "GNU long link escaping",
        with_script(
            Tar::new()
                .member(
                    &Header::new(b"././@LongLink", kind::GNU_LONG_LINK, 20),
                    b"../../../etc/shadow\0",
                )
                .link("l", kind::HARD_LINK, "x"),
        ),
        Refused("hard link"),
    ));
    cases
}

fn specials() -> Vec<Case> {
    let mut cases = Vec::new();
    for (what, k) in [
        ("character device", kind::CHAR_DEVICE),
        ("block device", kind::BLOCK_DEVICE),
        ("FIFO", kind::FIFO),
    ] {
        for name in ["dev", "auto_exec.sh", "nlxtp/status.bin", "deep/er/node"] {
            let tar = Tar::new().special(name, k);
            let archive = if name == "auto_exec.sh" {
                tar.finish()
            } else {
                with_script(tar)
            };
            cases.push(case(
                format!("{what} named {name}"),
                archive,
                Refused("only files and directories"),
            ));
        }
    }
    for (what, k, needle) in [
        // Without its sparse map the tar crate refuses the header itself.
        ("GNU sparse file", kind::GNU_SPARSE, "is not a tar"),
        (
            "GNU volume label",
            kind::GNU_VOLUME,
            "only files and directories",
        ),
        ("unknown type 'Z'", b'Z', "only files and directories"),
    ] {
        cases.push(case(
            what,
            with_script(Tar::new().member(&Header::new(b"odd", k, 0), b"")),
            Refused(needle),
        ));
    }
    cases
}

fn mode_bits() -> Vec<Case> {
    let mut cases = Vec::new();
    for mode in [0o4755, 0o2755, 0o1777, 0o7777, 0o6711] {
        cases.push(case(
            format!("file mode {mode:o}"),
            with_script(Tar::new().file_mode("tool", b"elf", mode)),
            accepted(&[("tool", b"elf"), ("auto_exec.sh", SCRIPT)]),
        ));
        cases.push(case(
            format!("directory mode {mode:o}"),
            with_script(Tar::new().dir_mode("shared", mode).file("shared/f", b"f")),
            accepted(&[("shared/f", b"f"), ("auto_exec.sh", SCRIPT)]),
        ));
    }
    cases.push(case(
        "setuid start script",
        Tar::new()
            .file_mode("auto_exec.sh", SCRIPT, 0o6755)
            .finish(),
        accepted(&[("auto_exec.sh", SCRIPT)]),
    ));
    cases
}

fn names() -> Vec<Case> {
    let mut cases = Vec::new();
    let n255 = "n".repeat(255);
    let n256 = "n".repeat(256);
    cases.push(case(
        "a name of 255 bytes",
        with_script(Tar::new().file(&n255, b"255")),
        accepted(&[(n255.as_str(), b"255"), ("auto_exec.sh", SCRIPT)]),
    ));
    cases.push(case(
        "a name of 256 bytes",
        with_script(Tar::new().file(&n256, b"256")),
        Refused("more than 255"),
    ));
    let path_5000 = vec!["p".repeat(200); 25].join("/");
    cases.push(case(
        "a path of 5024 bytes",
        with_script(Tar::new().file(&path_5000, b"long")),
        Refused("unsafe path"),
    ));
    // Deeper than a walk goes by default (32): an upload may hold what a download with
    // default limits then refuses, with a clear error (adversarial_images.rs).
    let deep = vec!["d"; 64].join("/");
    let deep_file = format!("{deep}/f");
    cases.push(case(
        "64 nested directories",
        with_script(Tar::new().file(&deep_file, b"deep")),
        accepted(&[(deep_file.as_str(), b"deep"), ("auto_exec.sh", SCRIPT)]),
    ));
    // Names Linux takes and vFAT cannot hold.
    for name in [
        "a:b",
        "what?",
        "star*",
        "pipe|",
        "less<",
        "more>",
        "quote\"",
        "back\\slash",
        "..\\..\\windows",
        "trailing.",
        "trailing ",
        "control\u{1}",
        "tab\there",
        "emoji\u{1F600}",
        "new\nline",
    ] {
        cases.push(split(
            format!("FAT-invalid name {name:?}"),
            with_script(Tar::new().file(name, b"odd")),
            Refused("cannot be stored"),
            accepted(&[(name, b"odd"), ("auto_exec.sh", SCRIPT)]),
        ));
    }
    // Names both take.
    for name in [
        "CON",
        "nul.txt",
        " leading space",
        "ünïcödé",
        "x.tar.gz.sh",
        ".hidden",
    ] {
        cases.push(case(
            format!("odd but valid name {name:?}"),
            with_script(Tar::new().file(name, b"ok")),
            accepted(&[(name, b"ok"), ("auto_exec.sh", SCRIPT)]),
        ));
    }
    // Not UTF-8: read lossily (U+FFFD), documented.
    cases.push(case(
        "a name that is not UTF-8",
        with_script(Tar::new().member(&Header::new(b"bad\xff\xfe", kind::FILE, 2), b"nu")),
        accepted(&[("bad\u{FFFD}\u{FFFD}", b"nu"), ("auto_exec.sh", SCRIPT)]),
    ));
    // Case-insensitive collisions: one file on vFAT, two in a directory.
    for (a, b) in [
        ("a.txt", "A.TXT"),
        ("Dir/x", "dir/y"),
        ("readme", "README"),
        ("straße", "STRASSE"),
        ("ä.txt", "Ä.txt"),
    ] {
        let tar = with_script(Tar::new().file(a, b"1").file(b, b"2"));
        let dir = accepted(&[(a, b"1"), (b, b"2"), ("auto_exec.sh", SCRIPT)]);
        // "straße" is "STRASSE" upper-cased, which is how fatfs compares names.
        cases.push(split(
            format!("{a} and {b}"),
            tar,
            Refused("would be the same file"),
            dir,
        ));
    }
    cases.push(split(
        "NLXTP/x beside the protocol directory",
        with_script(Tar::new().file("NLXTP/x", b"x")),
        Refused("would be the same file"),
        accepted(&[("NLXTP/x", b"x"), ("auto_exec.sh", SCRIPT)]),
    ));
    cases
}

/// A status file with a finished run (exit 0): what a forged status would hold.
fn forged_status() -> Vec<u8> {
    use nlxtp_core::record::STATUS_SLOT_LEN;
    use nlxtp_core::slots::{StatusWriter, STATUS_FILE_LEN};
    use nlxtp_core::{RunState, StatusRecord};
    let mut file = vec![0u8; STATUS_FILE_LEN];
    let mut record = StatusRecord {
        state: RunState::Exited(0),
        heartbeat_interval_ms: 1000,
        ..StatusRecord::default()
    };
    let mut slot = [0u8; STATUS_SLOT_LEN];
    let at = StatusWriter::new().encode(&mut record, &mut slot).unwrap();
    file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
    file
}

fn structure() -> Vec<Case> {
    let mut cases = vec![
        case(
            "auto_exec.sh as a directory",
            Tar::new().dir("auto_exec.sh").finish(),
            Refused("is not a regular file"),
        ),
        case(
            "auto_exec.sh/ as a directory with a file",
            Tar::new()
                .dir("auto_exec.sh/")
                .file("auto_exec.sh/x", b"x")
                .finish(),
            Refused("is not a regular file"),
        ),
        case(
            "auto_exec.sh only as a parent",
            Tar::new().file("auto_exec.sh/x", b"x").finish(),
            Refused("has no auto_exec.sh"),
        ),
        case(
            "no start script",
            Tar::new().file("x", b"x").finish(),
            Refused("has no auto_exec.sh"),
        ),
        case(
            "start script only in a subdirectory",
            Tar::new().file("sub/auto_exec.sh", SCRIPT).finish(),
            Refused("has no auto_exec.sh"),
        ),
        case(
            "start script twice",
            Tar::new()
                .file("auto_exec.sh", SCRIPT)
                .file("auto_exec.sh", b"second")
                .finish(),
            Refused("appears twice"),
        ),
        case(
            "a file twice, once as ./",
            with_script(Tar::new().file("a", b"1").file("./a", b"2")),
            Refused("appears twice"),
        ),
        case(
            "a file, then a directory of the same name",
            with_script(Tar::new().file("x", b"1").dir("x")),
            Refused("appears twice"),
        ),
        case(
            "a file, then a file below it",
            with_script(Tar::new().file("x", b"1").file("x/y", b"2")),
            Refused("both"),
        ),
        case(
            "./auto_exec.sh and ./ members",
            Tar::new().dir("./").file("./auto_exec.sh", SCRIPT).finish(),
            accepted(&[("auto_exec.sh", SCRIPT)]),
        ),
        case(
            "a member with an empty name",
            with_script(Tar::new().file("", b"nameless")),
            accepted(&[("auto_exec.sh", SCRIPT)]),
        ),
        case(
            "a contiguous file (type 7)",
            with_script(Tar::new().member(&Header::new(b"c", kind::CONTIGUOUS, 1), b"c")),
            accepted(&[("c", b"c"), ("auto_exec.sh", SCRIPT)]),
        ),
    ];
    // Protocol files a re-uploaded download brings, or an archive forges (in any case:
    // vFAT finds NLXTP/STATUS.BIN as nlxtp/status.bin): left out, never taken over. An
    // earlier run's status means the archive already ran: refused unless run again.
    let forged = forged_status();
    for name in layout::RUN_FILES {
        let (dir, file) = name.split_once('/').unwrap();
        for name in [
            name.to_owned(),
            format!("{dir}/{}", file.to_uppercase()),
            name.to_uppercase(),
        ] {
            let archive = with_script(Tar::new().file(&name, &forged));
            let title = format!("archive brings {name}");
            if name.eq_ignore_ascii_case(layout::STATUS_FILE) {
                cases.push(case(&title, archive.clone(), Refused("--run-again")));
                let mut again = case(
                    format!("{title}, run again"),
                    archive,
                    accepted(&[("auto_exec.sh", SCRIPT)]),
                );
                again.run_again = true;
                cases.push(again);
            } else {
                cases.push(case(title, archive, accepted(&[("auto_exec.sh", SCRIPT)])));
            }
        }
    }
    // The original implementation's status: refused, or left out when run again.
    for name in ["exec_status/done", "EXEC_STATUS/out"] {
        let archive = with_script(Tar::new().file(name, b"x"));
        cases.push(case(
            format!("archive brings {name}"),
            archive.clone(),
            Refused("--run-again"),
        ));
        let mut again = case(
            format!("archive brings {name}, run again"),
            archive,
            accepted(&[("auto_exec.sh", SCRIPT)]),
        );
        again.run_again = true;
        cases.push(again);
    }
    cases.push(case(
        "archive brings nlxtp/Manifest.bin",
        with_script(Tar::new().file("nlxtp/Manifest.bin", b"forged")),
        accepted(&[("auto_exec.sh", SCRIPT)]),
    ));
    let mut files_only = case(
        "files only: auto_exec.sh only as a parent",
        Tar::new().file("auto_exec.sh/x", b"x").finish(),
        accepted(&[("auto_exec.sh/x", b"x")]),
    );
    files_only.files_only = true;
    cases.push(files_only);
    // A guest's vFAT ignores case: AUTO_EXEC.SH would run after a files-only upload.
    for name in ["AUTO_EXEC.SH", "Auto_Exec.sh", "auto_exec.sh"] {
        let mut c = case(
            format!("files only: {name} at the root"),
            Tar::new().file(name, b"x").finish(),
            Refused("a files-only upload must not hold it"),
        );
        c.files_only = true;
        cases.push(c);
    }
    cases
}

fn broken() -> Vec<Case> {
    let good = with_script(Tar::new().file("data", &[7u8; 3000]));
    let mut bad_sum = good.clone();
    bad_sum[148] = b'7';
    let mut bad_size = good.clone();
    bad_size[124..136].copy_from_slice(b"zzzzzzzzzzz\0");
    let mut negative = good.clone();
    negative[124..136].copy_from_slice(&[0xFF; 12]);
    let gz = hostile::gzip(&good);
    let zst = hostile::zstd(&good);
    vec![
        case("empty input", Vec::new(), Refused("has no auto_exec.sh")),
        case(
            "one zero block",
            vec![0u8; 512],
            Refused("has no auto_exec.sh"),
        ),
        case(
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            Refused("is not a tar"),
        ),
        case("bad header checksum", bad_sum, Refused("is not a tar")),
        case("size field not octal", bad_size, Refused("is not a tar")),
        case("size field base-256 negative", negative, Refused("")),
        case(
            "cut inside a member",
            good[..512 + 1000].to_vec(),
            Refused("could not be read to the end"),
        ),
        case(
            "cut between members, no end blocks",
            Tar::new()
                .file("a", b"a")
                .file("auto_exec.sh", SCRIPT)
                .unfinished(),
            accepted(&[("a", b"a"), ("auto_exec.sh", SCRIPT)]),
        ),
        case(
            "gzip cut short",
            gz[..gz.len() - 10].to_vec(),
            Refused("could not be read to the end"),
        ),
        // Where the cut lands decides whether the first header is still whole.
        case("zstd cut short", zst[..zst.len() / 2].to_vec(), Refused("")),
        case(
            "gzip with a flipped byte",
            {
                let mut g = gz.clone();
                let mid = g.len() / 2;
                g[mid] ^= 0x55;
                g
            },
            Refused(""),
        ),
        case(
            "gzip of a tar padded to 4 MiB records (tar -b 8192)",
            hostile::gzip(&{
                let mut t = with_script(Tar::new().file("a", b"a"));
                t.resize(4 << 20, 0);
                t
            }),
            accepted(&[("a", b"a"), ("auto_exec.sh", SCRIPT)]),
        ),
        case(
            "gzip, then garbage",
            [gz.clone(), b"trailing garbage, not gzip".to_vec()].concat(),
            Refused(""),
        ),
        case(
            "a PAX size that disagrees with the header",
            with_script(
                Tar::new()
                    .pax(&[("size", b"99999999999")])
                    .file("data", b"0123456789"),
            ),
            Refused(""),
        ),
    ]
}

/// Bombs with a bound small enough to reach quickly: each must stop at it.
fn bombs() -> Vec<Case> {
    let limits = ArchiveLimits {
        max_entries: 1000,
        max_total_bytes: 16 << 20,
    };
    let mut cases = Vec::new();
    for zstd in [false, true] {
        let c = if zstd { "zstd" } else { "gzip" };
        // One member declaring more than the bound: refused before reading a byte of it.
        let huge = Header::new(b"huge", kind::FILE, 1 << 40).block();
        let mut one = case(
            format!("{c} bomb: one member of 1 TiB"),
            hostile::bomb(&[Piece::Bytes(&huge), Piece::ZerosMib(64)], zstd),
            Refused("holds more than"),
        );
        one.limits = limits;
        cases.push(one);
        // Members each within the bound, together beyond it.
        let a = Header::new(b"a", kind::FILE, 12 << 20).block();
        let b = Header::new(b"b", kind::FILE, 12 << 20).block();
        let pieces = [
            Piece::Bytes(&a),
            Piece::ZerosMib(12),
            Piece::Bytes(&b),
            Piece::ZerosMib(12),
        ];
        let mut two = case(
            format!("{c} bomb: two members of 12 MiB under a 16 MiB bound"),
            hostile::bomb(&pieces, zstd),
            Refused("holds more than"),
        );
        two.limits = limits;
        cases.push(two);
    }
    cases
}

/// Extension headers (GNU long names, PAX) and skipped members declaring huge sizes,
/// backed by real (compressed) bytes: the `tar` crate reads extension headers whole into
/// memory, and skips members by reading through their data.
fn extension_bombs() -> Vec<Case> {
    let mut cases = Vec::new();
    for (what, k, name) in [
        ("GNU long name", kind::GNU_LONG_NAME, &b"././@LongLink"[..]),
        ("GNU long link", kind::GNU_LONG_LINK, b"././@LongLink"),
        ("PAX header", kind::PAX, b"./PaxHeaders/x"),
        ("PAX global header", kind::PAX_GLOBAL, b"./PaxHeaders/g"),
        // Members the upload skips: the tar crate reads through their data to the next.
        ("directory", kind::DIR, b"d/"),
        ("nameless file", kind::FILE, b""),
        ("root directory ./", kind::DIR, b"./"),
    ] {
        for zstd in [false, true] {
            let head = Header::new(name, k, 1 << 40).block();
            cases.push(case(
                format!(
                    "{what} of 1 TiB, 256 MiB present ({})",
                    if zstd { "zstd" } else { "gzip" }
                ),
                hostile::bomb(&[Piece::Bytes(&head), Piece::ZerosMib(256)], zstd),
                Refused(""),
            ));
        }
    }
    cases
}

/// A directory with the previous content, or an image holding it, per case.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: Outside,
    base_image: PathBuf,
}

const OLD_SCRIPT: &[u8] = b"#!/bin/sh\necho old\n";

fn old_archive() -> Vec<u8> {
    Tar::new()
        .file("old/keep.txt", b"old content")
        .file("auto_exec.sh", OLD_SCRIPT)
        .finish()
}

fn options(case: &Case) -> UploadOptions {
    UploadOptions {
        limits: case.limits,
        files_only: case.files_only,
        run_again: case.run_again,
        // No status check: nothing runs in these areas, and `status` remembers what it
        // saw in the user's state directory.
        force: true,
        ..UploadOptions::default()
    }
}

impl Fixture {
    fn new() -> Self {
        let tmp = hostile::scratch();
        let root = tmp.path().to_path_buf();
        let dir = root.join("outside");
        fs::create_dir_all(dir.join("sub")).unwrap();
        let secret = hostile::secret("archive");
        fs::write(dir.join("secret.txt"), &secret).unwrap();
        let base_image = root.join("base.img");
        create_image(&base_image, 2 << 20, None, None).unwrap();
        let area = ops::open_target(&base_image).unwrap();
        ops::upload(area.as_ref(), &old_archive()[..], &UploadOptions::default()).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            outside: Outside { dir, secret },
            base_image,
        }
    }

    /// A fresh target for case `n`: an image copy, or a directory with the old upload.
    /// Returns the case's own directory and the target in it.
    fn target(&self, n: usize, image: bool) -> (PathBuf, PathBuf) {
        let own = self
            .root
            .join(format!("case-{n}-{}", if image { "img" } else { "dir" }));
        fs::create_dir(&own).unwrap();
        let target = if image {
            let img = own.join("area.img");
            fs::copy(&self.base_image, &img).unwrap();
            img
        } else {
            let area = own.join("area");
            fs::create_dir(&area).unwrap();
            let opened = ops::open_target(&area).unwrap();
            let upload = UploadOptions {
                force: true,
                ..UploadOptions::default()
            };
            ops::upload(opened.as_ref(), &old_archive()[..], &upload).unwrap();
            area
        };
        (own, target)
    }
}

/// The files of an area (the manifest left out), by walking it as a download does.
fn area_files(area: &dyn SharedArea, image: bool) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let limits = WalkLimits {
        max_depth: 200,
        ..WalkLimits::default()
    };
    area.walk(&limits, &mut |entry, reader| {
        if !image {
            assert_eq!(entry.mode & 0o7000, 0, "{} keeps a special bit", entry.path);
        }
        if let (EntryKind::File, Some(reader)) = (entry.kind, reader) {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            if entry.path.as_str() != layout::MANIFEST_FILE {
                files.insert(entry.path.to_string(), bytes);
            }
        }
        Ok(())
    })
    .expect("an area the host wrote walks");
    files
}

/// What one case did on one backend, for the summary.
#[derive(Debug, Default)]
struct Tally {
    refused: usize,
    accepted: usize,
    slowest: Duration,
}

fn run_case(fx: &Fixture, n: usize, case: &Case, image: bool, tally: &mut Tally) {
    let label = format!(
        "case {n} {:?} ({})",
        case.name,
        if image { "image" } else { "dir" }
    );
    let (own, target) = fx.target(n, image);
    let outside_before = hostile::snapshot(&fx.outside.dir);
    let image_before = image.then(|| fs::read(&target).unwrap());
    let dir_before = (!image).then(|| hostile::snapshot(&target));

    let (result, took) = {
        let (target, archive, options) = (target.clone(), case.archive.clone(), options(case));
        hostile::deadline(Duration::from_secs(10), &label, move || {
            let area = ops::open_target(&target).unwrap();
            ops::upload(area.as_ref(), &archive[..], &options)
        })
    };
    tally.slowest = tally.slowest.max(took);
    if std::env::var_os("NLXTP_CASE_TIMES").is_some() {
        eprintln!("{took:>12?} {label}");
    }
    assert!(took < Duration::from_secs(5), "{label}: took {took:?}");

    let expected = if image { &case.image } else { &case.dir };
    match (expected, result) {
        (Refused(needle), Err(err)) => {
            let text = err.to_string();
            assert!(
                text.contains(needle),
                "{label}: {text:?} should say {needle:?}"
            );
            assert!(
                matches!(err, UploadError::Archive(_) | UploadError::Area(_)),
                "{label}: {err:?}"
            );
            if let Some(before) = &image_before {
                assert!(
                    fs::read(&target).unwrap() == *before,
                    "{label}: image changed"
                );
            }
            if let Some(before) = &dir_before {
                assert!(
                    hostile::snapshot(&target) == *before,
                    "{label}: area changed"
                );
            }
            tally.refused += 1;
        }
        (Accepted(files), Ok(report)) => {
            let area = ops::open_target(&target).unwrap();
            let got = area_files(area.as_ref(), image);
            let want: BTreeMap<String, Vec<u8>> = files.iter().cloned().collect();
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{label}"
            );
            assert!(got == want, "{label}: contents differ");
            if !image {
                // No special bit on disk either (the walk reports what fstat says).
                for path in want.keys() {
                    let mode = fs::symlink_metadata(target.join(path)).unwrap().mode();
                    assert_eq!(mode & 0o7000, 0, "{label}: {path} mode {mode:o}");
                }
            }
            let _ = report;
            tally.accepted += 1;
        }
        (Refused(needle), Ok(_)) => panic!("{label}: accepted, should be refused ({needle:?})"),
        (Accepted(_), Err(err)) => panic!("{label}: refused: {err}"),
    }
    if image {
        hostile::fsck(&target).unwrap_or_else(|e| panic!("{label}: {e}"));
        let area = ops::open_target(&target).unwrap();
        let status = read_status(area.as_ref(), &mut StatusReader::new(), Patience::default());
        assert!(
            matches!(status, Ok(None)),
            "{label}: an upload holds no status record: {status:?}"
        );
    }
    // Nothing beside the target, nothing changed outside, no secret in the area.
    let beside: Vec<_> = fs::read_dir(&own)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside.len(),
        1,
        "{label}: written beside the target: {beside:?}"
    );
    assert!(
        hostile::snapshot(&fx.outside.dir) == outside_before,
        "{label}: outside changed"
    );
    let secret = fx.outside.secret.as_bytes();
    if image {
        assert!(
            !hostile::contains(&fs::read(&target).unwrap(), secret),
            "{label}: secret in the image"
        );
    } else {
        for node in hostile::snapshot(&target).values() {
            if let hostile::Node::File { bytes, .. } = node {
                assert!(
                    !hostile::contains(bytes, secret),
                    "{label}: secret in the area"
                );
            }
        }
    }
    assert!(!Path::new("/tmp/escape").exists() && !Path::new("/escape").exists());
    fs::remove_dir_all(&own).unwrap();
}

fn run_all(fx: &Fixture, cases: &[Case]) -> (Tally, Tally) {
    let (mut image, mut dir) = (Tally::default(), Tally::default());
    for (n, case) in cases.iter().enumerate() {
        run_case(fx, n, case, true, &mut image);
        run_case(fx, n, case, false, &mut dir);
    }
    (image, dir)
}

#[test]
fn hostile_archives_are_refused_or_handled_safely_in_both_backends() {
    let fx = Fixture::new();
    let mut cases = Vec::new();
    cases.extend(escapes(&fx.outside));
    cases.extend(links(&fx.outside));
    cases.extend(specials());
    cases.extend(mode_bits());
    cases.extend(names());
    cases.extend(structure());
    cases.extend(broken());
    cases.extend(bombs());
    let count = cases.len();
    let (image, dir) = run_all(&fx, &cases);
    eprintln!(
        "{count} hostile archives: image {} refused, {} accepted (slowest {:?}); \
         directory {} refused, {} accepted (slowest {:?})",
        image.refused, image.accepted, image.slowest, dir.refused, dir.accepted, dir.slowest
    );
    assert!(count >= 100, "only {count} cases");
}

#[test]
fn extension_header_bombs_stop_at_once_in_bounded_memory() {
    let fx = Fixture::new();
    let cases = extension_bombs();
    let before = hostile::peak_rss_kib();
    let (image, dir) = run_all(&fx, &cases);
    let grew = hostile::peak_rss_kib().saturating_sub(before);
    eprintln!(
        "{} extension-header bombs: slowest {:?} / {:?}, peak memory grew {grew} KiB",
        cases.len(),
        image.slowest,
        dir.slowest
    );
    assert!(grew < 128 << 10, "peak memory grew by {grew} KiB");
    assert!(image.slowest < Duration::from_secs(1) && dir.slowest < Duration::from_secs(1));
}

#[test]
fn a_million_members_stop_at_the_entry_bound() {
    // The generator makes valid members.
    let few = ops::archive::read_upload(
        ManyMembers::new(12),
        &ArchiveLimits::default(),
        false,
        None,
        None,
    )
    .unwrap();
    let names: Vec<&str> = few.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, (0..12).map(|i| format!("f{i}")).collect::<Vec<_>>());
    let fx = Fixture::new();
    // Both backends at once: each parse takes a few seconds in a debug build.
    let runs: Vec<_> = [(0, true), (1, false)]
        .into_iter()
        .map(|(n, image)| {
            let (_, target) = fx.target(n, image);
            let before = image.then(|| fs::read(&target).unwrap());
            let run = {
                let target = target.clone();
                std::thread::spawn(move || {
                    hostile::deadline(Duration::from_secs(30), "a million members", move || {
                        let area = ops::open_target(&target).unwrap();
                        let mut stream = ManyMembers::new(1_000_000);
                        let options = UploadOptions {
                            force: true,
                            ..UploadOptions::default()
                        };
                        let result = ops::upload(area.as_ref(), &mut stream, &options);
                        (
                            result.map(|_| ()).map_err(|e| e.to_string()),
                            stream.produced,
                        )
                    })
                })
            };
            (image, target, before, run)
        })
        .collect();
    for (image, target, before, run) in runs {
        let ((result, count), took) = run.join().unwrap();
        let err = result.unwrap_err();
        let backend = if image { "image" } else { "dir" };
        eprintln!("a million members ({backend}): {err} after {count} members, {took:?}");
        assert!(err.contains("more than 100000 members"), "{err}");
        // Read a little ahead at most (buffering), never the rest.
        assert!(count <= 100_000 + 200, "{count} members read");
        assert!(took < Duration::from_secs(15), "{took:?}");
        if let Some(before) = before {
            assert!(fs::read(&target).unwrap() == before);
            hostile::fsck(&target).unwrap();
        }
    }
}
