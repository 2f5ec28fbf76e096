//! A hostile container directory, through what `nlxtp download` does: `ops::open_target`
//! and `ops::archive::write_download` into a tar.gz, whose every byte is then searched
//! for a secret planted in host files outside the area. Builds on
//! tests/container_dir.rs (which checks the backend's own reads, walks and uploads):
//! here the whole download path runs, with symlinks to host files and to `/`, FIFOs,
//! sockets, devices, unreadable files, and guest threads swapping directories and files
//! for symlinks (and FIFOs) during downloads for several seconds.

mod hostile;

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nlxtp_host::area::{AreaError, WalkLimits};
use nlxtp_host::ops::archive::{write_download, Compression};
use nlxtp_host::ops::open_target;
use rustix::fs::{self as rfs, FileType, Mode, RenameFlags, CWD};

/// A scratch dir with `area/` (the container's shared area) and `outside/` (host files
/// holding the secret), and the secret.
struct Fixture {
    _tmp: tempfile::TempDir,
    area: PathBuf,
    outside: PathBuf,
    secret: String,
}

impl Fixture {
    fn new() -> Self {
        let tmp = hostile::scratch();
        let area = tmp.path().join("area");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::create_dir(&area).unwrap();
        let secret = hostile::secret("dirs");
        for f in ["secret", "sub/secret", "status.bin", "auto_exec.sh"] {
            fs::write(outside.join(f), &secret).unwrap();
        }
        Fixture {
            _tmp: tmp,
            area,
            outside,
            secret,
        }
    }

    fn outside_intact(&self) {
        for f in ["secret", "sub/secret", "status.bin", "auto_exec.sh"] {
            assert_eq!(
                fs::read_to_string(self.outside.join(f)).unwrap(),
                self.secret
            );
        }
    }
}

/// What a download produced: the decompressed tar's members (name, type, bytes).
type Members = Vec<(String, tar::EntryType, Vec<u8>)>;

/// Downloads the area at `path` as `nlxtp download x.tar.gz` does; the tar.gz bytes and
/// the report, or the error.
fn download(path: &Path) -> (Vec<u8>, Result<u64, AreaError>) {
    let area = open_target(path).unwrap();
    let mut out = Vec::new();
    let report = write_download(
        area.as_ref(),
        &mut out,
        Compression::Gzip,
        &WalkLimits::default(),
        &mut |_| {},
    );
    (out, report.map(|r| r.files))
}

fn members(targz: &[u8]) -> Members {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(targz)
        .read_to_end(&mut raw)
        .unwrap();
    let mut out = Vec::new();
    for entry in tar::Archive::new(&raw[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.push((name, kind, bytes));
    }
    out
}

/// No byte of the secret anywhere: not in the compressed stream, not decompressed; and
/// only relative files and directories.
fn assert_clean(targz: &[u8], secret: &str, what: &str) {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(targz)
        .read_to_end(&mut raw)
        .unwrap_or_default();
    assert!(
        !hostile::contains(&raw, secret.as_bytes()),
        "{what}: the secret is in the download"
    );
    if raw.is_empty() {
        return;
    }
    for (name, kind, _) in members(targz) {
        assert!(
            matches!(kind, tar::EntryType::Regular | tar::EntryType::Directory),
            "{what}: {name} is a {kind:?}"
        );
        assert!(
            !name.starts_with('/') && !name.split('/').any(|c| c == ".."),
            "{what}: {name}"
        );
    }
}

fn mkfifo(p: &Path) {
    rfs::mkfifoat(CWD, p, Mode::from_raw_mode(0o644)).unwrap();
}

#[test]
fn everything_a_guest_plants_is_left_out_of_a_download() {
    let fx = Fixture::new();
    let a = &fx.area;
    fs::create_dir_all(a.join("nlxtp")).unwrap();
    fs::create_dir_all(a.join("results/deeper")).unwrap();
    fs::write(a.join("results/ok.txt"), b"a result").unwrap();
    fs::write(a.join("results/deeper/ok.txt"), b"another").unwrap();
    let links: [(&str, PathBuf); 9] = [
        ("abs", fx.outside.join("secret")),
        ("rel", PathBuf::from("../outside/secret")),
        (
            "results/deeper/rel",
            PathBuf::from("../../../outside/sub/secret"),
        ),
        ("slash", PathBuf::from("/")),
        ("proc-root", PathBuf::from("/proc/self/root")),
        ("proc-cwd", PathBuf::from("/proc/self/cwd")),
        ("outside-dir", fx.outside.clone()),
        ("nlxtp/status.bin", fx.outside.join("status.bin")),
        ("auto_exec.sh", fx.outside.join("auto_exec.sh")),
    ];
    for (name, target) in &links {
        symlink(target, a.join(name)).unwrap();
    }
    mkfifo(&a.join("fifo"));
    mkfifo(&a.join("nlxtp/stdout.txt"));
    let _socket = UnixListener::bind(a.join("socket")).unwrap();
    rfs::mknodat(
        CWD,
        a.join("zero"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rfs::makedev(1, 5),
    )
    .unwrap();
    let path = fx.area.clone();
    let ((targz, report), took) =
        hostile::deadline(Duration::from_secs(20), "the download", move || {
            download(&path)
        });
    assert_eq!(report.unwrap(), 2, "the two results, nothing else");
    assert_clean(&targz, &fx.secret, "planted");
    let names: Vec<String> = members(&targz).into_iter().map(|m| m.0).collect();
    assert_eq!(
        names,
        [
            "nlxtp/",
            "results/",
            "results/deeper/",
            "results/deeper/ok.txt",
            "results/ok.txt"
        ]
    );
    eprintln!("a download past 9 symlinks, 2 FIFOs, a socket and a device: {took:?}");
    // The FIFO was never opened: a writer finds no reader.
    let writer = rfs::open(
        a.join("fifo"),
        rfs::OFlags::WRONLY | rfs::OFlags::NONBLOCK,
        Mode::empty(),
    );
    assert_eq!(writer.unwrap_err(), rustix::io::Errno::NXIO);
    fx.outside_intact();
}

#[test]
fn an_unreadable_file_fails_the_download_clearly() {
    let fx = Fixture::new();
    fs::write(fx.area.join("a.txt"), b"first").unwrap();
    fs::write(fx.area.join("closed"), &fx.secret).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(fx.area.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
    let path = fx.area.clone();
    let (targz, report) = hostile::deadline(Duration::from_secs(20), "the download", move || {
        use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
        // This thread only: a host tool without root's override of file permissions.
        let mut caps = capabilities(None).unwrap();
        caps.effective -= CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
        set_capabilities(None, caps).unwrap();
        download(&path)
    })
    .0;
    let err = report.unwrap_err();
    assert!(matches!(err, AreaError::Io { .. }), "{err}");
    assert!(err.to_string().contains("closed"), "{err}");
    // What was written before the error holds no secret (here: the file was not read).
    assert!(!hostile::contains(&targz, fx.secret.as_bytes()));
}

#[test]
fn an_area_path_that_is_a_symlink_is_refused() {
    let fx = Fixture::new();
    let link = fx.area.parent().unwrap().join("area-link");
    symlink(&fx.outside, &link).unwrap();
    let err = open_target(&link).unwrap_err();
    assert!(matches!(err, AreaError::Io { .. }), "{err}");
}

/// Swaps `name` in `dir` with `name.alt` (a symlink to `target`, or a FIFO) back and
/// forth until `stop`, recreating what an upload or a failed swap removed.
fn swapper(
    dir: PathBuf,
    name: &'static str,
    alt: Alt,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<u64> {
    let real = dir.join(name);
    let other = dir.join(format!("{name}.alt"));
    thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            if rfs::renameat_with(CWD, &real, CWD, &other, RenameFlags::EXCHANGE).is_ok() {
                swaps += 1;
                continue;
            }
            match &alt {
                Alt::Link(target) => {
                    let _ = symlink(target, &other);
                }
                Alt::Fifo => {
                    let _ = rfs::mkfifoat(CWD, &other, Mode::from_raw_mode(0o644));
                }
            }
        }
        swaps
    })
}

enum Alt {
    Link(PathBuf),
    Fifo,
}

#[test]
fn guests_swapping_entries_during_downloads_never_leak_a_host_byte() {
    let secs = std::env::var("NLXTP_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let fx = Fixture::new();
    let a = &fx.area;
    fs::create_dir_all(a.join("d/e")).unwrap();
    fs::create_dir_all(a.join("p")).unwrap();
    fs::create_dir_all(a.join("nlxtp")).unwrap();
    // Many files, so a download takes long enough to be raced.
    for i in 0..200 {
        fs::write(
            a.join(format!("d/e/f{i:03}")),
            format!("inside {i}\n").repeat(200),
        )
        .unwrap();
    }
    fs::write(a.join("p/file"), b"inside").unwrap();
    fs::write(a.join("nlxtp/status.bin"), b"inside").unwrap();
    fs::write(a.join("plain"), b"inside").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swappers = [
        // A directory with many files, for a symlink to the host directory with the secret.
        swapper(
            a.join("d"),
            "e",
            Alt::Link(fx.outside.clone()),
            Arc::clone(&stop),
        ),
        // A top-level directory, for a symlink to / and to the secret's directory.
        swapper(
            a.clone(),
            "d",
            Alt::Link(PathBuf::from("/")),
            Arc::clone(&stop),
        ),
        swapper(
            a.clone(),
            "p",
            Alt::Link(fx.outside.join("sub")),
            Arc::clone(&stop),
        ),
        // Files, for a symlink to the secret and for a FIFO.
        swapper(
            a.join("p"),
            "file",
            Alt::Link(fx.outside.join("secret")),
            Arc::clone(&stop),
        ),
        swapper(a.clone(), "plain", Alt::Fifo, Arc::clone(&stop)),
        swapper(
            a.join("nlxtp"),
            "status.bin",
            Alt::Link(fx.outside.join("status.bin")),
            Arc::clone(&stop),
        ),
    ];
    let (mut ok, mut failed, mut bytes, mut inside_files) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let path = fx.area.clone();
        let ((targz, report), _) =
            hostile::deadline(Duration::from_secs(20), "a raced download", move || {
                download(&path)
            });
        assert_clean(&targz, &fx.secret, "raced");
        bytes += targz.len() as u64;
        match report {
            Ok(files) => {
                ok += 1;
                inside_files += files;
            }
            // An entry swapped between listing and opening: a clear error, no leak.
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        AreaError::Io { .. }
                            | AreaError::NotRegular { .. }
                            | AreaError::Corrupt { .. }
                    ),
                    "{e}"
                );
                failed += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps: Vec<u64> = swappers.into_iter().map(|s| s.join().unwrap()).collect();
    eprintln!(
        "raced downloads for {secs} s: {ok} complete ({inside_files} files), {failed} \
         refused, {bytes} bytes of tar.gz searched, swaps {swaps:?}; 0 secret bytes"
    );
    assert!(ok > 0, "no download completed");
    assert!(swaps.iter().all(|&s| s > 100), "{swaps:?}");
    fx.outside_intact();
}
