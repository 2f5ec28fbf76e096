//! The container directory backend against real directories, with what a hostile guest
//! plants: symbolic links out of the area, FIFOs, sockets, devices, unreadable files,
//! deep trees, and a thread that swaps directories for symlinks while the host reads.
//!
//! The tests run as root (CI does). Root reads any file, so "unreadable" is made by
//! dropping `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` in one thread (capabilities are
//! per thread on Linux), as a host tool running without them would be.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use nlxtp_host::area::dir::{ContainerDir, Skipped};
use nlxtp_host::area::{
    AreaError, AreaPath, EntryKind, SharedArea, StatusRead, UploadData, UploadFile, WalkLimits,
};
use rustix::fs::{self as rfs, FileType, Mode, RenameFlags, CWD};

/// Bytes that exist only outside the area: seeing any of them is an escape.
const SECRET: &[u8] = b"HOST-SECRET-7f3a9c";

/// A temp dir with `area/` (the shared area) and `outside/` (host files with SECRET).
struct Fixture {
    _tmp: tempfile::TempDir,
    area: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let area = tmp.path().join("area");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::create_dir(&area).unwrap();
        for f in ["secret", "sub/secret", "status.bin", "auto_exec.sh"] {
            fs::write(outside.join(f), SECRET).unwrap();
        }
        Fixture {
            _tmp: tmp,
            area,
            outside,
        }
    }

    fn open(&self) -> ContainerDir {
        ContainerDir::open(&self.area).unwrap()
    }

    fn outside_intact(&self) {
        for f in ["secret", "sub/secret", "status.bin", "auto_exec.sh"] {
            assert_eq!(fs::read(self.outside.join(f)).unwrap(), SECRET, "{f}");
        }
    }
}

fn path(p: &str) -> AreaPath {
    AreaPath::new(p).unwrap()
}

fn upload(p: &str, bytes: &[u8], mode: u32) -> UploadFile {
    UploadFile {
        path: path(p),
        data: UploadData::Bytes(bytes.to_vec()),
        mode,
    }
}

fn upload_dir(p: &str, mode: u32) -> UploadFile {
    UploadFile {
        path: path(p),
        data: UploadData::Dir,
        mode,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file's bytes, by path, as a walk hands them out.
fn walk_bytes(area: &ContainerDir) -> Result<(BTreeMap<String, Vec<u8>>, Skipped), AreaError> {
    let mut files = BTreeMap::new();
    let skipped = area.walk_report(&WalkLimits::default(), &mut |entry, reader| {
        if let Some(reader) = reader {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            assert_eq!(bytes.len() as u64, entry.size, "{}", entry.path);
            files.insert(entry.path.to_string(), bytes);
        }
        Ok(())
    })?;
    Ok((files, skipped))
}

/// Runs `f` on another thread and fails the test if it takes longer than 20 s (a
/// blocking open of a FIFO would hang for ever).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} blocked for 20 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked (see above)"),
    }
}

/// The names in the directory `dir`, sorted.
fn names(dir: impl AsRef<Path>) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn mkfifo(p: &Path) {
    rfs::mkfifoat(CWD, p, Mode::from_raw_mode(0o644)).unwrap();
}

#[test]
fn upload_then_read_list_and_walk() {
    let fx = Fixture::new();
    let area = fx.open();
    assert!(!area.is_busy().unwrap());
    assert_eq!(area.location(), fx.area);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    area.replace(vec![
        upload("auto_exec.sh", b"#!/bin/sh\necho hi\n", 0o755),
        upload("nlxtp/manifest.bin", &[7u8; 512], 0o644),
        upload("data/a.txt", b"alpha", 0o640),
        UploadFile {
            path: path("data/sub/big.bin"),
            data: UploadData::Reader {
                reader: Box::new(io::Cursor::new(big.clone())),
                len: big.len() as u64,
            },
            mode: 0o600,
        },
        upload_dir("empty", 0o750),
        upload("setuid", b"s", 0o4755),
        upload("setgid", b"g", 0o2711),
        upload_dir("sticky", 0o1777),
        upload("readonly/file", b"r", 0o444),
        upload_dir("readonly", 0o555),
    ])
    .unwrap();

    // Modes on disk: as asked, without setuid, setgid and sticky bits.
    for (p, mode) in [
        ("auto_exec.sh", 0o755),
        ("nlxtp", 0o755),
        ("data/a.txt", 0o640),
        ("data/sub/big.bin", 0o600),
        ("empty", 0o750),
        ("setuid", 0o755),
        ("setgid", 0o711),
        ("sticky", 0o777),
        ("readonly", 0o555),
        ("readonly/file", 0o444),
    ] {
        assert_eq!(mode_of(&fx.area.join(p)), mode, "{p}");
    }

    let listed: Vec<(String, EntryKind, u64, u32)> = area
        .list(&WalkLimits::default())
        .unwrap()
        .into_iter()
        .map(|e| (e.path.to_string(), e.kind, e.size, e.mode))
        .collect();
    let f = EntryKind::File;
    let d = EntryKind::Dir;
    let expected: Vec<(String, EntryKind, u64, u32)> = [
        ("auto_exec.sh", f, 18, 0o755),
        ("data", d, 0, 0o755),
        ("data/a.txt", f, 5, 0o640),
        ("data/sub", d, 0, 0o755),
        ("data/sub/big.bin", f, 200_000, 0o600),
        ("empty", d, 0, 0o750),
        ("nlxtp", d, 0, 0o755),
        ("nlxtp/manifest.bin", f, 512, 0o644),
        ("readonly", d, 0, 0o555),
        ("readonly/file", f, 1, 0o444),
        ("setgid", f, 1, 0o711),
        ("setuid", f, 1, 0o755),
        ("sticky", d, 0, 0o777),
    ]
    .into_iter()
    .map(|(p, k, s, m)| (p.to_string(), k, s, m))
    .collect();
    assert_eq!(listed, expected);

    let (files, skipped) = walk_bytes(&area).unwrap();
    assert_eq!(skipped, Skipped::default());
    assert_eq!(files["data/sub/big.bin"], big);
    assert_eq!(files["data/a.txt"], b"alpha");
    assert_eq!(files.len(), 7);

    assert_eq!(
        area.read_file(&path("data/sub/big.bin"), 1 << 20).unwrap(),
        big
    );
    assert_eq!(
        area.read_file(&path("nlxtp/manifest.bin"), 512).unwrap(),
        [7u8; 512]
    );

    // The status file: absent, then as long as it is, then capped one byte over.
    let mut out = vec![1, 2, 3];
    area.read_status_file(StatusRead::Cached, &mut out).unwrap();
    assert!(out.is_empty());
    fs::write(fx.area.join("nlxtp/status.bin"), vec![9u8; 8192]).unwrap();
    area.read_status_file(StatusRead::Relocate, &mut out)
        .unwrap();
    assert_eq!(out, vec![9u8; 8192]);
    fs::write(fx.area.join("nlxtp/status.bin"), vec![9u8; 20_000]).unwrap();
    area.read_status_file(StatusRead::Cached, &mut out).unwrap();
    assert_eq!(out.len(), 8193);
}

#[test]
fn errors_say_what_is_wrong() {
    let fx = Fixture::new();
    let area = fx.open();
    area.replace(vec![upload("dir/file", b"12345", 0o644)])
        .unwrap();
    let err = area.read_file(&path("nope"), 10).unwrap_err();
    assert!(matches!(err, AreaError::NotFound { .. }), "{err}");
    let err = area.read_file(&path("dir/file/below"), 10).unwrap_err();
    assert!(matches!(err, AreaError::NotFound { .. }), "{err}");
    let err = area.read_file(&path("dir"), 10).unwrap_err();
    assert!(matches!(err, AreaError::NotAFile { .. }), "{err}");
    let err = area.read_file(&path("dir/file"), 4).unwrap_err();
    assert!(matches!(err, AreaError::TooLarge { limit: 4, .. }), "{err}");
    assert_eq!(area.read_file(&path("dir/file"), 5).unwrap(), b"12345");

    // Walk limits.
    let tight = WalkLimits {
        max_entries: 1,
        ..WalkLimits::default()
    };
    assert!(matches!(area.list(&tight), Err(AreaError::TooLarge { .. })));
    let shallow = WalkLimits {
        max_depth: 0,
        ..WalkLimits::default()
    };
    assert!(matches!(
        area.list(&shallow),
        Err(AreaError::TooLarge { .. })
    ));
    let small = WalkLimits {
        max_total_bytes: 4,
        ..WalkLimits::default()
    };
    assert!(matches!(area.list(&small), Err(AreaError::TooLarge { .. })));

    // A visitor's error is the sink's.
    let err = area
        .walk(&WalkLimits::default(), &mut |_, _| {
            Err(io::Error::other("archive full"))
        })
        .unwrap_err();
    assert!(matches!(err, AreaError::Sink { .. }), "{err}");

    // Uploads the backend refuses, before touching the area.
    let err = area
        .replace(vec![upload("x", b"1", 0o644), upload("x", b"2", 0o644)])
        .unwrap_err();
    assert!(matches!(err, AreaError::BadName { .. }), "{err}");
    assert_eq!(area.read_file(&path("dir/file"), 5).unwrap(), b"12345");

    // A short source fails the upload, and leaves no start script.
    let err = area
        .replace(vec![
            upload("auto_exec.sh", b"echo", 0o755),
            UploadFile {
                path: path("short"),
                data: UploadData::Reader {
                    reader: Box::new(io::Cursor::new(vec![1u8; 10])),
                    len: 11,
                },
                mode: 0o644,
            },
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            AreaError::ShortSource {
                got: 10,
                len: 11,
                ..
            }
        ),
        "{err}"
    );
    assert!(!fx.area.join("auto_exec.sh").exists());
    area.replace(vec![upload("dir/file", b"12345", 0o644)])
        .unwrap();

    // Opening.
    let missing = ContainerDir::open(fx.area.join("missing")).unwrap_err();
    assert!(matches!(missing, AreaError::NoImage { .. }), "{missing}");
    symlink(&fx.area, fx.area.with_file_name("link")).unwrap();
    let err = ContainerDir::open(fx.area.with_file_name("link")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("could not open the area directory"),
        "{err}"
    );
    let rootfs = fx.area.parent().unwrap();
    let inside = ContainerDir::open_in(rootfs, "/area").unwrap();
    assert_eq!(inside.read_file(&path("dir/file"), 5).unwrap(), b"12345");
    assert!(ContainerDir::open_in(rootfs, "link").is_err());
    assert!(ContainerDir::open_in(rootfs, "area/../../etc").is_err());
    symlink("/", fx.area.join("slash")).unwrap();
    assert!(ContainerDir::open_in(rootfs, "area/slash/etc").is_err());
}

#[test]
fn planted_symlinks_are_never_followed() {
    let fx = Fixture::new();
    let area = fx.open();
    area.replace(vec![upload("real/inside.txt", b"inside", 0o644)])
        .unwrap();
    let a = &fx.area;
    fs::create_dir(a.join("nlxtp")).unwrap();
    symlink(fx.outside.join("secret"), a.join("abs")).unwrap();
    symlink("../outside/secret", a.join("rel")).unwrap();
    symlink("../../outside/secret", a.join("real/deep")).unwrap();
    symlink("/", a.join("slash")).unwrap();
    symlink(&fx.outside, a.join("dirlink")).unwrap();
    symlink("loop", a.join("loop")).unwrap();
    symlink(fx.outside.join("status.bin"), a.join("nlxtp/status.bin")).unwrap();

    for (p, kind) in [
        ("abs", "symbolic link"),
        ("rel", "symbolic link"),
        ("real/deep", "symbolic link"),
        ("loop", "symbolic link"),
        ("dirlink", "symbolic link"),
        ("dirlink/secret", "symbolic link"),
        ("slash/etc/passwd", "symbolic link"),
    ] {
        match area.read_file(&path(p), 1 << 20) {
            Err(AreaError::NotRegular { kind: k, .. }) => assert_eq!(k, kind, "{p}"),
            other => panic!("{p}: {other:?}"),
        }
    }
    let err = area.read_file(&path("abs"), 10).unwrap_err().to_string();
    assert!(err.starts_with("abs leads to a symbolic link"), "{err}");

    let mut out = Vec::new();
    let err = area
        .read_status_file(StatusRead::Cached, &mut out)
        .unwrap_err();
    assert!(matches!(err, AreaError::NotRegular { .. }), "{err}");
    assert!(out.is_empty());
    // The protocol directory itself a link to the host's root.
    fs::remove_dir_all(a.join("nlxtp")).unwrap();
    symlink(&fx.outside, a.join("nlxtp")).unwrap();
    let err = area
        .read_status_file(StatusRead::Relocate, &mut out)
        .unwrap_err();
    assert!(matches!(err, AreaError::NotRegular { .. }), "{err}");

    let (files, skipped) = walk_bytes(&area).unwrap();
    assert_eq!(files.keys().collect::<Vec<_>>(), ["real/inside.txt"]);
    assert_eq!(skipped.symlinks, 7);
    assert_eq!(skipped.total(), 7);
    assert!(files.values().all(|b| !contains(b, SECRET)));
    let listed = area.list(&WalkLimits::default()).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
}

#[test]
fn fifos_sockets_and_devices_never_block_or_get_opened() {
    let fx = Fixture::new();
    let a = fx.area.clone();
    fs::create_dir(a.join("nlxtp")).unwrap();
    mkfifo(&a.join("fifo"));
    mkfifo(&a.join("nlxtp/status.bin"));
    let _listener = UnixListener::bind(a.join("sock")).unwrap();
    // /dev/zero: a reader that followed it would never see the end.
    rfs::mknodat(
        CWD,
        a.join("zero"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rfs::makedev(1, 5),
    )
    .unwrap();
    fs::write(a.join("plain"), b"plain").unwrap();
    let area = Arc::new(fx.open());

    let walked = {
        let area = Arc::clone(&area);
        within("the walk", move || walk_bytes(&area).unwrap())
    };
    assert_eq!(walked.0.keys().collect::<Vec<_>>(), ["plain"]);
    assert_eq!(
        walked.1,
        Skipped {
            fifos: 2,
            sockets: 1,
            devices: 1,
            ..Skipped::default()
        }
    );
    for (p, kind) in [
        ("fifo", "FIFO"),
        ("sock", "socket"),
        ("zero", "character device"),
        ("nlxtp/status.bin", "FIFO"),
    ] {
        let area = Arc::clone(&area);
        let got = within("read_file", move || area.read_file(&path(p), 100));
        match got {
            Err(AreaError::NotRegular { kind: k, .. }) => assert_eq!(k, kind, "{p}"),
            other => panic!("{p}: {other:?}"),
        }
    }
    let status = {
        let area = Arc::clone(&area);
        within("the status read", move || {
            area.read_status_file(StatusRead::Cached, &mut Vec::new())
        })
    };
    assert!(matches!(
        status,
        Err(AreaError::NotRegular { kind: "FIFO", .. })
    ));

    // The FIFO was never opened for reading: a non-blocking writer finds no reader.
    let writer = rfs::open(
        a.join("fifo"),
        rfs::OFlags::WRONLY | rfs::OFlags::NONBLOCK,
        Mode::empty(),
    );
    assert_eq!(writer.unwrap_err(), rustix::io::Errno::NXIO);

    // An upload removes them all.
    within("the upload", move || {
        area.replace(vec![upload("auto_exec.sh", b"x", 0o755)])
    })
    .unwrap();
    assert_eq!(names(&a), ["auto_exec.sh"]);
}

#[test]
fn names_an_area_path_cannot_hold_are_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fixture::new();
    let latin1 = fx.area.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    fs::write(&latin1, b"not utf-8").unwrap();
    fs::write(fx.area.join("ok"), b"ok").unwrap();
    let area = fx.open();
    let (files, skipped) = walk_bytes(&area).unwrap();
    assert_eq!(files.keys().collect::<Vec<_>>(), ["ok"]);
    assert_eq!(skipped.bad_names, 1);
    // An upload removes it all the same.
    area.replace(vec![upload("auto_exec.sh", b"x", 0o755)])
        .unwrap();
    assert_eq!(names(&fx.area), ["auto_exec.sh"]);
}

/// Unmounts, also when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn mount_points_inside_the_area_are_never_entered() {
    let fx = Fixture::new();
    let m = fx.area.join("m");
    fs::create_dir(&m).unwrap();
    fs::write(m.join("under"), b"below the mount").unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "nlxtp-test"])
        .arg(&m)
        .status()
        .expect("mount(8) runs (util-linux)");
    assert!(
        status.success(),
        "mount -t tmpfs failed: the tests need root"
    );
    let _guard = Unmount(m.clone());
    fs::write(m.join("mounted"), SECRET).unwrap();
    fs::write(fx.area.join("plain"), b"plain").unwrap();
    let area = fx.open();

    let (files, skipped) = walk_bytes(&area).unwrap();
    assert_eq!(files.keys().collect::<Vec<_>>(), ["plain"]);
    assert_eq!(skipped.mounts, 1);
    match area.read_file(&path("m/mounted"), 100) {
        Err(AreaError::NotRegular { kind, .. }) => assert_eq!(kind, "mount point"),
        other => panic!("{other:?}"),
    }
    // An upload does not remove what is mounted: it stops with an error.
    let err = area
        .replace(vec![upload("auto_exec.sh", b"x", 0o755)])
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("could not remove the mount point"),
        "{err}"
    );
    assert_eq!(fs::read(m.join("mounted")).unwrap(), SECRET);
    assert!(!fx.area.join("auto_exec.sh").exists());
}

#[test]
fn files_the_host_may_not_read_fail_clearly() {
    let fx = Fixture::new();
    let area = Arc::new(fx.open());
    area.replace(vec![
        upload("locked/file", b"x", 0o644),
        upload("closed", b"x", 0o000),
    ])
    .unwrap();
    fs::set_permissions(fx.area.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let area2 = Arc::clone(&area);
    let (read, walked) = within("the reads", move || {
        use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
        // This thread only: a host tool without root's override of file permissions.
        let mut caps = capabilities(None).unwrap();
        caps.effective -= CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
        set_capabilities(None, caps).unwrap();
        (
            area2.read_file(&path("closed"), 10),
            area2.walk(&WalkLimits::default(), &mut |_, _| Ok(())),
        )
    });
    let read = read.unwrap_err();
    let closed = fx.area.join("closed");
    assert_eq!(
        read.to_string(),
        format!(
            "could not open {}: fix the cause below and retry",
            closed.display()
        )
    );
    let source = std::error::Error::source(&read).unwrap().to_string();
    assert!(source.contains("ermission denied"), "{source}");
    // The walk reaches "closed" first (names in order) and stops there.
    let walked = walked.unwrap_err();
    assert!(matches!(walked, AreaError::Io { .. }), "{walked}");
    // With root's capabilities the same area reads, and an upload replaces it.
    assert_eq!(area.read_file(&path("closed"), 10).unwrap(), b"x");
    area.replace(vec![upload("new", b"n", 0o644)]).unwrap();
    assert_eq!(names(&fx.area), ["new"]);
}

#[test]
fn upload_removes_the_old_area_without_following_links() {
    let fx = Fixture::new();
    let a = &fx.area;
    // A deep chain: more levels than the removal keeps open.
    let mut deep = a.join("deep");
    for i in 0..150 {
        deep = deep.join(format!("{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"b").unwrap();
    fs::create_dir_all(a.join("shut/inner")).unwrap();
    fs::write(a.join("shut/inner/f"), b"f").unwrap();
    fs::set_permissions(a.join("shut"), fs::Permissions::from_mode(0o000)).unwrap();
    symlink(&fx.outside, a.join("to_outside")).unwrap();
    symlink("/", a.join("to_root")).unwrap();
    symlink("../outside/secret", a.join("rel")).unwrap();
    fs::create_dir(a.join("nlxtp")).unwrap();
    symlink(&fx.outside, a.join("nlxtp/inner_link")).unwrap();
    mkfifo(&a.join("fifo"));
    let _listener = UnixListener::bind(a.join("sock")).unwrap();
    fs::write(a.join("auto_exec.sh"), b"old script").unwrap();
    for i in 0..50 {
        fs::write(a.join(format!("old{i}")), b"old").unwrap();
    }

    let area = fx.open();
    area.replace(vec![
        upload("auto_exec.sh", b"new script", 0o755),
        upload("nlxtp/manifest.bin", &[1u8; 512], 0o644),
    ])
    .unwrap();
    fx.outside_intact();
    assert_eq!(names(a), ["auto_exec.sh", "nlxtp"]);
    assert_eq!(names(a.join("nlxtp")), ["manifest.bin"]);
    assert_eq!(fs::read(a.join("auto_exec.sh")).unwrap(), b"new script");
}

#[test]
fn new_entries_belong_to_the_owner_of_the_area() {
    let fx = Fixture::new();
    // As in an unprivileged container: the area belongs to the container's root.
    std::os::unix::fs::chown(&fx.area, Some(100_000), Some(100_007)).unwrap();
    let area = fx.open();
    area.replace(vec![
        upload("auto_exec.sh", b"s", 0o755),
        upload("a/b/c", b"c", 0o644),
        upload_dir("e", 0o700),
    ])
    .unwrap();
    for p in ["auto_exec.sh", "a", "a/b", "a/b/c", "e"] {
        let meta = fs::symlink_metadata(fx.area.join(p)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (100_000, 100_007), "{p}");
    }
}

/// Runs for `secs` seconds: swaps `name` in `dir` (a directory) with `name.link` (a
/// symlink to `target`) back and forth with RENAME_EXCHANGE, recreating either if
/// something removed it. Returns how many swaps it made.
fn swapper(
    dir: PathBuf,
    name: &str,
    target: PathBuf,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    let real = dir.join(name);
    let link = dir.join(format!("{name}.link"));
    thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            if rfs::renameat_with(CWD, &real, CWD, &link, RenameFlags::EXCHANGE).is_ok() {
                swaps += 1;
                continue;
            }
            // Removed by an upload: put the pieces back (the guest insists).
            if fs::create_dir(&real).is_ok() {
                let _ = fs::write(real.join("secret"), b"inside");
            }
            let _ = symlink(&target, &link);
        }
        swaps
    })
}

#[test]
fn a_guest_swapping_directories_for_symlinks_never_leaks_host_bytes() {
    let fx = Fixture::new();
    let a = fx.area.clone();
    fs::create_dir(a.join("d")).unwrap();
    fs::create_dir_all(a.join("p/e")).unwrap();
    fs::create_dir(a.join("nlxtp")).unwrap();
    fs::write(a.join("d/secret"), b"inside").unwrap();
    fs::write(a.join("p/e/secret"), b"inside").unwrap();
    fs::write(a.join("nlxtp/status.bin"), b"inside").unwrap();
    symlink(&fx.outside, a.join("d.link")).unwrap();
    symlink(fx.outside.join("sub"), a.join("p/e.link")).unwrap();
    symlink(&fx.outside, a.join("nlxtp.link")).unwrap();
    let area = Arc::new(fx.open());

    let stop = Arc::new(AtomicBool::new(false));
    let swappers = [
        swapper(a.clone(), "d", fx.outside.clone(), Arc::clone(&stop)),
        swapper(a.join("p"), "e", fx.outside.join("sub"), Arc::clone(&stop)),
        swapper(a.clone(), "nlxtp", fx.outside.clone(), Arc::clone(&stop)),
    ];
    // A naive reader that follows paths, to show the race is real.
    let naive_leaks = Arc::new(AtomicUsize::new(0));
    let naive = {
        let (a, stop, leaks) = (a.clone(), Arc::clone(&stop), Arc::clone(&naive_leaks));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fs::read(a.join("d/secret")).is_ok_and(|b| b == SECRET) {
                    leaks.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let lister = {
        let (area, stop) = (Arc::clone(&area), Arc::clone(&stop));
        thread::spawn(move || {
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                if area.list(&WalkLimits::default()).is_ok() {
                    ok += 1;
                }
            }
            ok
        })
    };

    let (mut reads_ok, mut refused, mut walks_ok, mut inside_seen) = (0, 0, 0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for p in ["d/secret", "p/e/secret", "nlxtp/status.bin"] {
            match area.read_file(&path(p), 1 << 20) {
                Ok(bytes) => {
                    assert!(!contains(&bytes, SECRET), "read_file({p}) leaked");
                    assert_eq!(bytes, b"inside");
                    reads_ok += 1;
                }
                Err(AreaError::NotRegular { .. } | AreaError::NotFound { .. }) => refused += 1,
                Err(e) => panic!("{p}: {e}"),
            }
        }
        let mut status = Vec::new();
        if area
            .read_status_file(StatusRead::Cached, &mut status)
            .is_ok()
        {
            assert!(!contains(&status, SECRET), "the status read leaked");
        }
        // Walk errors are allowed (an entry swapped between two calls); leaks are not.
        let mut leaked = false;
        let walked = area.walk(&WalkLimits::default(), &mut |_, reader| {
            if let Some(reader) = reader {
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes)?;
                leaked |= contains(&bytes, SECRET);
                inside_seen += usize::from(bytes == b"inside");
            }
            Ok(())
        });
        assert!(!leaked, "the walk leaked");
        walks_ok += usize::from(walked.is_ok());
    }
    stop.store(true, Ordering::Relaxed);
    let swaps: Vec<usize> = swappers.into_iter().map(|s| s.join().unwrap()).collect();
    naive.join().unwrap();
    let lists_ok = lister.join().unwrap();
    eprintln!(
        "swaps {swaps:?}, reads ok {reads_ok}, refused {refused}, walks ok {walks_ok}, \
         lists ok {lists_ok}, naive leaks {}",
        naive_leaks.load(Ordering::Relaxed)
    );
    assert!(swaps.iter().all(|&s| s > 1000), "{swaps:?}");
    assert!(
        naive_leaks.load(Ordering::Relaxed) > 0,
        "the race never hit a naive reader"
    );
    assert!(reads_ok > 0 && refused > 0 && walks_ok > 0 && inside_seen > 0);
    assert!(lists_ok > 0);
    fx.outside_intact();
}

#[test]
fn an_upload_racing_a_swapping_guest_removes_nothing_outside() {
    let fx = Fixture::new();
    let a = fx.area.clone();
    fs::create_dir(a.join("d")).unwrap();
    symlink(&fx.outside, a.join("d.link")).unwrap();
    fs::create_dir(a.join("x")).unwrap();
    symlink(fx.outside.join("sub"), a.join("x.link")).unwrap();
    let area = fx.open();
    let stop = Arc::new(AtomicBool::new(false));
    let swappers = [
        swapper(a.clone(), "d", fx.outside.clone(), Arc::clone(&stop)),
        swapper(a.clone(), "x", fx.outside.join("sub"), Arc::clone(&stop)),
    ];
    let (mut ok, mut failed) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        match area.replace(vec![
            upload("auto_exec.sh", b"s", 0o755),
            upload("f", b"f", 0o644),
        ]) {
            Ok(()) => ok += 1,
            Err(e) => {
                // The guest keeps recreating entries: a clear error, not an escape.
                assert!(matches!(e, AreaError::Io { .. }), "{e}");
                failed += 1;
            }
        }
        fx.outside_intact();
    }
    stop.store(true, Ordering::Relaxed);
    let swaps: Vec<usize> = swappers.into_iter().map(|s| s.join().unwrap()).collect();
    eprintln!("uploads ok {ok}, failed {failed}, swaps {swaps:?}");
    assert!(
        ok + failed > 5 && swaps.iter().all(|&s| s > 100),
        "{swaps:?}"
    );
    fx.outside_intact();
    // Once the guest stops, an upload goes through.
    area.replace(vec![upload("auto_exec.sh", b"s", 0o755)])
        .unwrap();
    assert_eq!(names(&a), ["auto_exec.sh"]);
}

/// An upload of generation `gen`: a manifest, `files` data files and a script, each
/// carrying the generation so a reader can tell which upload it sees.
fn generation(gen: u32, files: usize) -> Vec<UploadFile> {
    let mut out = vec![upload("nlxtp/manifest.bin", &manifest(gen), 0o644)];
    for i in 0..files {
        out.push(upload(&format!("data/{i:04}"), &data(gen, i), 0o644));
    }
    // The script first in the list: the backend must still write it last.
    out.insert(0, upload("auto_exec.sh", &script(gen), 0o755));
    out
}

fn manifest(gen: u32) -> Vec<u8> {
    let mut m = vec![gen as u8; 512];
    m[..4].copy_from_slice(&gen.to_le_bytes());
    m
}

fn data(gen: u32, i: usize) -> Vec<u8> {
    format!("{gen}:{i}:").repeat(50 + i % 200).into_bytes()
}

fn script(gen: u32) -> Vec<u8> {
    format!(
        "#!/bin/sh\n# generation {gen}\n{}\n# end\n",
        "echo x\n".repeat(8000)
    )
    .into_bytes()
}

/// Which generation the script in `area` belongs to; panics if it is incomplete.
fn script_generation(area: &Path) -> Option<u32> {
    let bytes = fs::read(area.join("auto_exec.sh")).ok()?;
    let text = String::from_utf8(bytes.clone()).expect("a script of one upload");
    let gen: u32 = text
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# generation "))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("a script without its generation: {} bytes", bytes.len()));
    assert_eq!(bytes, script(gen), "an incomplete script");
    Some(gen)
}

/// Checks that, while the script of `gen` stands, the manifest and every data file of
/// `gen` are there and complete. `None` if the area changed meanwhile.
fn check_complete(area: &Path, gen: u32, files: usize) -> Option<()> {
    let manifest_now = fs::read(area.join("nlxtp/manifest.bin"));
    let data_now: Vec<_> = (0..files)
        .map(|i| fs::read(area.join(format!("data/{i:04}"))))
        .collect();
    // Only a state that held from before to after these reads counts.
    if script_generation(area) != Some(gen) {
        return None;
    }
    assert_eq!(
        manifest_now.unwrap(),
        manifest(gen),
        "the manifest beside script {gen}"
    );
    for (i, d) in data_now.into_iter().enumerate() {
        assert_eq!(d.unwrap(), data(gen, i), "data/{i:04} beside script {gen}");
    }
    Some(())
}

#[test]
fn the_start_script_appears_last_complete_and_by_rename() {
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    const FILES: usize = 150;
    let fx = Fixture::new();
    let area = fx.open();

    // One upload, watched with inotify as a guest daemon would.
    let watch = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
    inotify::add_watch(
        &watch,
        &fx.area,
        WatchFlags::CREATE | WatchFlags::MOVED_TO | WatchFlags::CLOSE_WRITE | WatchFlags::DELETE,
    )
    .unwrap();
    area.replace(generation(0, FILES)).unwrap();
    let mut buf = [std::mem::MaybeUninit::uninit(); 1 << 16];
    let mut reader = inotify::Reader::new(&watch, &mut buf);
    let mut events = Vec::new();
    while let Ok(event) = reader.next() {
        let name = event.file_name().map(|n| n.to_string_lossy().into_owned());
        events.push((event.events(), name.unwrap_or_default()));
    }
    let last = events.last().expect("events");
    assert!(
        last.0.contains(ReadFlags::MOVED_TO) && last.1 == "auto_exec.sh",
        "{events:?}"
    );
    let script_events: Vec<_> = events.iter().filter(|e| e.1 == "auto_exec.sh").collect();
    assert_eq!(
        script_events.len(),
        1,
        "the script appears once, by rename: {events:?}"
    );

    // Many uploads, with a reader polling all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (dir, stop) = (fx.area.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            let (mut checked, mut absent) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                match script_generation(&dir) {
                    Some(gen) => checked += usize::from(check_complete(&dir, gen, FILES).is_some()),
                    None => absent += 1,
                }
            }
            (checked, absent)
        })
    };
    for gen in 1..=20 {
        area.replace(generation(gen, FILES)).unwrap();
        assert_eq!(script_generation(&fx.area), Some(gen));
    }
    stop.store(true, Ordering::Relaxed);
    let (checked, absent) = poller.join().unwrap();
    eprintln!("states checked complete {checked}, script absent {absent}");
    assert!(
        checked > 0 && absent > 0,
        "checked {checked}, absent {absent}"
    );
}

/// A crash at any moment of an upload: run uploads in a child process and kill it.
#[test]
fn a_killed_upload_leaves_no_script_or_a_complete_one() {
    use std::io::BufRead;
    const FILES: usize = 100;
    let fx = Fixture::new();
    let exe = std::env::current_exe().unwrap();
    let (mut with_script, mut without) = (0, 0);
    for round in 0..16u64 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NLXTP_CRASH_AREA", &fx.area)
            .env("NLXTP_CRASH_FILES", FILES.to_string())
            .env("NLXTP_CRASH_FIRST", (round * 1000).to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the child's first finished upload, so the kill lands in the
        // uploads after it, at a different point each round.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("done ") && tx.send(()).is_err() {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(60));
        thread::sleep(Duration::from_millis(round * 47 % 500));
        child.kill().unwrap();
        child.wait().unwrap();
        first.expect("the child finished no upload in 60 s");
        match script_generation(&fx.area) {
            Some(gen) => {
                assert!(
                    check_complete(&fx.area, gen, FILES).is_some(),
                    "nothing writes now"
                );
                with_script += 1;
            }
            None => without += 1,
        }
    }
    eprintln!("killed with a script in place {with_script}, without {without}");
    assert!(with_script > 0 && without > 0, "{with_script} / {without}");
    fx.outside_intact();
}

/// The child of [`a_killed_upload_leaves_no_script_or_a_complete_one`]: uploads until
/// killed, with a short pause after each (a host idle between uploads). Not a test of
/// its own.
#[test]
#[ignore = "run by a_killed_upload_leaves_no_script_or_a_complete_one"]
fn crash_child() {
    let var =
        |name| std::env::var(name).unwrap_or_else(|_| panic!("{name}: run by the crash test"));
    let area = ContainerDir::open(var("NLXTP_CRASH_AREA")).unwrap();
    let files: usize = var("NLXTP_CRASH_FILES").parse().unwrap();
    let first: u32 = var("NLXTP_CRASH_FIRST").parse().unwrap();
    for gen in first.. {
        area.replace(generation(gen, files)).unwrap();
        println!("done {gen}");
        thread::sleep(Duration::from_millis(40));
    }
}

/// A thousand small files go in and come out whole (speed: benches/container_dir.rs).
#[test]
fn a_thousand_small_files_round_trip() {
    let fx = Fixture::new();
    let area = fx.open();
    let mut files = vec![upload("auto_exec.sh", b"true", 0o755)];
    for i in 0..1000 {
        files.push(upload(&format!("d{}/f{i}", i % 10), &[b'x'; 200], 0o644));
    }
    area.replace(files).unwrap();
    let (read, skipped) = walk_bytes(&area).unwrap();
    assert_eq!(skipped.total(), 0);
    assert_eq!(read.len(), 1001);
    assert_eq!(
        read.values()
            .filter(|b| b.as_slice() == [b'x'; 200])
            .count(),
        1000
    );
    area.replace(vec![upload("auto_exec.sh", b"true", 0o755)])
        .unwrap();
    assert_eq!(names(&fx.area), ["auto_exec.sh"]);
}
