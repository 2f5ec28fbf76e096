//! The FUSE view, mounted for real with the `nlxtp` binary: reading, status.json, staged
//! writes and their commits (checked with mtools, fsck.vfat and the host's own reader),
//! a real QEMU making it read-only, unmounting (busy, lazy, SIGTERM), SIGKILL at any
//! moment, reload, and the POSIX basics that apply to it.
//!
//! Every wait has a deadline; [`Mounted`] unmounts (`fusermount3 -u -z`) and kills its
//! mount process when dropped, so a failing test leaks neither.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nlxtp_core::layout::{MANIFEST_FILE, START_SCRIPT, STATUS_FILE};
use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::slots::{read_status, StatusWriter};
use nlxtp_core::{Manifest, RunState};
use nlxtp_host::area::vfat::{create_image, qemu_holds_image, VfatImage};
use nlxtp_host::area::{AreaPath, SharedArea, UploadFile, WalkLimits};

const NLXTP: &str = env!("CARGO_BIN_EXE_nlxtp");

/// Polls `cond` until it holds, failing after `deadline`.
fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "{what}: not after {deadline:?}");
        sleep(Duration::from_millis(20));
    }
}

fn is_mounted(mountpoint: &Path) -> bool {
    let want = mountpoint.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A scratch directory with a mount point and a private runtime directory.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("mnt")).unwrap();
        fs::create_dir(dir.path().join("run")).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mnt(&self) -> PathBuf {
        self.path("mnt")
    }

    /// A 16 MiB image holding `files`.
    fn image(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let img = self.path(name);
        create_image(&img, 16 << 20, None, None).unwrap();
        VfatImage::new(&img)
            .replace(
                files
                    .iter()
                    .map(|(p, b)| UploadFile::bytes(p, b.to_vec()).unwrap())
                    .collect(),
            )
            .unwrap();
        img
    }

    fn nlxtp(&self, args: &[&str]) -> Output {
        Command::new(NLXTP)
            .args(args)
            .env("NLXTP_RUNTIME_DIR", self.path("run"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn umount_ok(&self, lazy: bool) {
        let out = self.umount(lazy);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "nlxtp umount failed: {err}");
    }

    fn umount(&self, lazy: bool) -> Output {
        let mnt = self.mnt();
        let mut args = vec!["umount", mnt.to_str().unwrap()];
        if lazy {
            args.push("--lazy");
        }
        self.nlxtp(&args)
    }

    /// Starts `nlxtp mount MNT ARGS...` and waits for its ready line.
    fn mount(&self, args: &[&str]) -> Mounted {
        let mnt = self.mnt();
        let log = File::create(self.path("mount.log")).unwrap();
        let mut child = Command::new(NLXTP)
            .arg("-vv")
            .arg("mount")
            .arg(&mnt)
            .args(args)
            .arg("--stage-dir")
            .arg(self.dir.path())
            .env("NLXTP_RUNTIME_DIR", self.path("run"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut mounted = Mounted {
            child,
            mountpoint: mnt,
            log: Some(self.path("mount.log")),
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("mounted") => {}
            other => panic!(
                "no ready line ({other:?}); stderr: {}",
                mounted.stderr_after_exit()
            ),
        }
        assert!(is_mounted(&mounted.mountpoint));
        mounted
    }
}

/// A running mount process; dropping it cleans up whatever is left, and shows the
/// process's messages if the test failed.
struct Mounted {
    child: Child,
    mountpoint: PathBuf,
    log: Option<PathBuf>,
}

impl Mounted {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn vm(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "the mount process still runs after {deadline:?}"
            );
            sleep(Duration::from_millis(20));
        }
    }

    fn stderr_after_exit(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log
            .as_ref()
            .and_then(|l| fs::read_to_string(l).ok())
            .unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mountpoint)
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(text) = self.log.as_ref().and_then(|l| fs::read_to_string(l).ok()) {
                eprintln!("--- messages of the mount process ---\n{text}");
            }
        }
    }
}

/// A QEMU paused before booting (`-S`) that holds the image as a running VM does, as in
/// qemu_lock.rs. Dropping it kills it.
struct Qemu {
    child: Child,
}

impl Qemu {
    fn start(image: &Path) -> Qemu {
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-nographic",
                "-nodefaults",
                "-display",
                "none",
                "-S",
            ])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", image.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 starts (install qemu-system-x86)");
        Qemu { child }
    }

    /// Whether QEMU itself holds an OFD lock on `image` (its /proc fdinfo says so). A
    /// lock seen on the path alone could be a moment's leftover of this multi-threaded
    /// test process: a child forked by another test holds copies of its descriptors
    /// until it execs.
    fn locks(&self, image: &Path) -> bool {
        let pid = self.child.id();
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|t| t == image)
                && fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .is_ok_and(|info| info.contains("OFDLCK"))
        })
    }

    fn wait_locked(&mut self, image: &Path) {
        wait_for("QEMU locks the image", Duration::from_secs(20), || {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("QEMU exited early: {status}: {err}");
            }
            self.locks(image)
        });
    }

    /// Fails, with QEMU's messages, unless it still runs and holds the image.
    fn assert_holds(&mut self, image: &Path) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("QEMU exited: {status}: {err}");
        }
        assert!(
            qemu_holds_image(image).unwrap(),
            "QEMU runs but holds no lock"
        );
    }

    /// Waits for QEMU to exit by itself; its status and standard error.
    fn wait_exit(&mut self) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                return (status, err);
            }
            assert!(start.elapsed() < Duration::from_secs(20), "QEMU still runs");
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn errno_of(result: std::io::Result<impl Sized>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn area_file(img: &Path, path: &str) -> Vec<u8> {
    VfatImage::new(img)
        .read_file(&AreaPath::new(path).unwrap(), 1 << 30)
        .unwrap()
}

fn area_paths(img: &Path) -> Vec<String> {
    VfatImage::new(img)
        .list(&WalkLimits::default())
        .unwrap()
        .into_iter()
        .map(|e| e.path.to_string())
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Waits until the VM directory `vm` has nothing uncommitted (a burst's commit is made
/// once it is quiet).
fn wait_committed(vm: &Path) {
    wait_for("the changes are committed", Duration::from_secs(5), || {
        json(&vm.join(".nlxtp/view.json"))["uncommitted_changes"] == false
    });
}

#[test]
fn two_vms_list_read_and_status_json() {
    let s = Scratch::new();
    let rec = common::record(7, RunState::Exited(3), "all done");
    let status = common::status_file(5, &rec);
    let a = s.image(
        "a.img",
        &[
            (START_SCRIPT, b"#!/bin/sh\necho a\n"),
            (STATUS_FILE, &status),
            ("out/result.txt", b"forty-two"),
        ],
    );
    let b = s.image("b.img", &[("only-b.txt", b"bee")]);
    let m = s.mount(&[
        "--vm",
        &format!("a={}", a.display()),
        "--vm",
        &format!("b={}", b.display()),
    ]);
    assert_eq!(names(&m.mountpoint), ["a", "b"]);
    assert_eq!(names(&m.vm("a")), [".nlxtp", START_SCRIPT, "nlxtp", "out"]);
    assert_eq!(names(&m.vm("b")), [".nlxtp", "only-b.txt"]);
    assert_eq!(
        fs::read(m.vm("a").join("out/result.txt")).unwrap(),
        b"forty-two"
    );
    assert_eq!(fs::read(m.vm("b").join("only-b.txt")).unwrap(), b"bee");
    assert_eq!(
        fs::metadata(m.vm("a").join("out/result.txt"))
            .unwrap()
            .len(),
        9
    );
    assert_eq!(
        errno_of(fs::read(m.vm("a").join("missing"))),
        nix::libc::ENOENT
    );

    let report = json(&m.vm("a").join(".nlxtp/status.json"));
    assert_eq!(report["record"]["state"], "exited");
    assert_eq!(report["record"]["exit_code"], 3);
    assert_eq!(report["record"]["custom"], "all done");
    assert_eq!(report["record"]["sequence"], 5);
    assert_eq!(report["vm_running"], false);
    assert_eq!(
        json(&m.vm("b").join(".nlxtp/status.json"))["record"],
        serde_json::Value::Null
    );
    let view = json(&m.vm("b").join(".nlxtp/view.json"));
    assert_eq!(view["writable"], true);
    assert_eq!(view["uncommitted_changes"], false);
    // The view's own files cannot be written.
    assert_eq!(
        errno_of(
            OpenOptions::new()
                .write(true)
                .open(m.vm("a").join(".nlxtp/status.json"))
        ),
        nix::libc::EACCES
    );
    drop(m);
}

/// A simulated guest rewrites the status slots in place in the raw image (as QEMU does
/// for a guest's writes) while status.json and status.bin are read through the view.
#[test]
fn status_json_follows_a_writer_and_never_shows_a_tear() {
    let s = Scratch::new();
    let mut rec = common::record(9, RunState::Running, "step 1");
    let first = common::status_file(1, &rec);
    let img = s.image(
        "g.img",
        &[(START_SCRIPT, b"#!/bin/sh\n"), (STATUS_FILE, &first)],
    );
    // A fresh image keeps the status file in consecutive clusters: find its record (in
    // slot 1, as sequence 1 goes there) and so the file's start.
    let raw = fs::read(&img).unwrap();
    let header = &first[STATUS_SLOT_LEN..STATUS_SLOT_LEN + 16];
    let at = (raw
        .windows(header.len())
        .position(|w| w == header)
        .expect("the status record's bytes in the image")
        - STATUS_SLOT_LEN) as u64;
    let m = s.mount(&["--vm", &format!("g={}", img.display())]);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let img = img.clone();
        std::thread::spawn(move || {
            let file = OpenOptions::new().write(true).open(&img).unwrap();
            let mut writer = StatusWriter::resume(&first);
            let mut slot = vec![0u8; STATUS_SLOT_LEN];
            let mut written = 1;
            while !stop.load(Ordering::SeqCst) {
                rec.custom.clear();
                rec.custom
                    .push_str(&format!("step {}", writer.next_sequence()))
                    .unwrap();
                rec.heartbeat += 1;
                let offset = writer.encode(&mut rec, &mut slot).unwrap() as u64;
                // Two halves with a pause between: a reader may catch the slot torn.
                file.write_all_at(&slot[..2048], at + offset).unwrap();
                sleep(Duration::from_millis(2));
                file.write_all_at(&slot[2048..], at + offset + 2048)
                    .unwrap();
                written += 1;
                sleep(Duration::from_millis(3));
            }
            written
        })
    };
    let mut last = 0;
    let start = Instant::now();
    let mut reads = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let report = json(&m.vm("g").join(".nlxtp/status.json"));
        let seq = report["record"]["sequence"]
            .as_u64()
            .expect("a record every time");
        assert_eq!(report["record"]["custom"], format!("step {seq}"));
        assert!(seq >= last, "the status went back from {last} to {seq}");
        last = seq;
        let raw = fs::read(m.vm("g").join(STATUS_FILE)).unwrap();
        let decoded = read_status(&raw).expect("status.bin through the view is never torn");
        assert_eq!(
            decoded.custom.as_str(),
            format!("step {}", decoded.sequence)
        );
        reads += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(
        last > 1 && reads > 10,
        "saw record {last} of {written} in {reads} reads"
    );
    drop(m);
}

#[test]
fn writes_while_stopped_are_committed_and_a_new_script_gets_a_manifest() {
    let s = Scratch::new();
    let old_status = common::status_file(3, &common::record(1, RunState::Exited(0), "old run"));
    let old_manifest = {
        let mut bytes = vec![0u8; nlxtp_core::record::MANIFEST_LEN];
        Manifest {
            timeout_secs: Some(77),
            ..Default::default()
        }
        .encode(&mut bytes)
        .unwrap();
        bytes
    };
    let img = s.image(
        "w.img",
        &[
            (START_SCRIPT, b"#!/bin/sh\necho old\n"),
            (MANIFEST_FILE, &old_manifest),
            (STATUS_FILE, &old_status),
            ("keep.txt", b"kept"),
        ],
    );
    let m = s.mount(&["--vm", &format!("w={}", img.display())]);
    let vm = m.vm("w");

    // A plain file: committed when `cp`/`write` returns (close flushes).
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(vm.join("data.bin"), &big).unwrap();
    assert_eq!(area_file(&img, "data.bin"), big);
    assert_eq!(common::mtype(&img, "data.bin"), big);
    assert_eq!(
        area_file(&img, STATUS_FILE),
        old_status,
        "no new script: the run's files stay"
    );
    wait_for(
        "nothing open, nothing pending: the guard goes",
        Duration::from_secs(5),
        || !qemu_holds_image(&img).unwrap(),
    );

    // A job dropped in with cp -r: one burst, committed together.
    let job = s.path("job");
    fs::create_dir_all(job.join("lib")).unwrap();
    fs::write(job.join("lib/helper.sh"), b"echo helper\n").unwrap();
    for i in 0..40 {
        fs::write(job.join(format!("input{i}.txt")), format!("input {i}\n")).unwrap();
    }
    let out = Command::new("cp")
        .arg("-r")
        .arg(&job)
        .arg(vm.join("job"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_committed(&vm);
    assert_eq!(common::mtype(&img, "job/lib/helper.sh"), b"echo helper\n");
    assert_eq!(common::mtype(&img, "job/input39.txt"), b"input 39\n");
    assert_eq!(
        area_paths(&img)
            .iter()
            .filter(|p| p.starts_with("job/"))
            .count(),
        42
    );

    // A new start script: the commit is an upload with a fresh run id.
    fs::write(vm.join(START_SCRIPT), b"#!/bin/sh\necho new\n").unwrap();
    wait_committed(&vm);
    assert_eq!(area_file(&img, START_SCRIPT), b"#!/bin/sh\necho new\n");
    let manifest = Manifest::decode(&area_file(&img, MANIFEST_FILE)).unwrap();
    assert_ne!(manifest.run_id, Manifest::default().run_id);
    assert_eq!(
        manifest.timeout_secs,
        Some(77),
        "the last upload's limits are kept"
    );
    let paths = area_paths(&img);
    assert!(!paths.contains(&STATUS_FILE.to_string()), "{paths:?}");
    let view = json(&vm.join(".nlxtp/view.json"));
    assert_eq!(
        view["last_run_started_by_view"],
        manifest.run_id.to_string()
    );
    assert_eq!(
        json(&vm.join(".nlxtp/status.json"))["record"],
        serde_json::Value::Null
    );
    assert_eq!(area_file(&img, "keep.txt"), b"kept");
    common::assert_fsck_clean(&img);
    s.umount_ok(false);
    drop(m);
}

#[test]
fn a_running_qemu_makes_the_view_read_only_and_pending_changes_keep_qemu_out() {
    let s = Scratch::new();
    let img = s.image("q.img", &[("f.txt", b"original")]);
    let mut qemu = Qemu::start(&img);
    qemu.wait_locked(&img);
    let m = s.mount(&["--vm", &format!("q={}", img.display())]);
    let vm = m.vm("q");
    assert_eq!(fs::read(vm.join("f.txt")).unwrap(), b"original");
    qemu.assert_holds(&img);
    let mode = fs::metadata(vm.join("f.txt")).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o222,
        0,
        "no write bits while QEMU holds the image: {mode:o}"
    );
    qemu.assert_holds(&img);
    let written = errno_of(fs::write(vm.join("new.txt"), b"x"));
    qemu.assert_holds(&img);
    assert_eq!(written, nix::libc::EROFS);
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(vm.join("f.txt"))),
        nix::libc::EROFS
    );
    assert_eq!(errno_of(fs::create_dir(vm.join("d"))), nix::libc::EROFS);
    assert_eq!(
        errno_of(fs::remove_file(vm.join("f.txt"))),
        nix::libc::EROFS
    );
    assert_eq!(json(&vm.join(".nlxtp/view.json"))["writable"], false);
    assert_eq!(json(&vm.join(".nlxtp/status.json"))["vm_running"], true);
    drop(qemu);
    wait_for("QEMU's locks go away", Duration::from_secs(5), || {
        !qemu_holds_image(&img).unwrap()
    });

    // Stopped: writable. A file open for writing keeps a QEMU from starting.
    let mut file = None;
    wait_for("the view turns writable", Duration::from_secs(5), || {
        file = OpenOptions::new().write(true).open(vm.join("f.txt")).ok();
        file.is_some()
    });
    let mut file = file.unwrap();
    file.write_all(b"changed!").unwrap();
    let (status, stderr) = Qemu::start(&img).wait_exit();
    assert!(
        !status.success() && stderr.contains("Failed to lock byte"),
        "{stderr}"
    );
    drop(file);
    assert_eq!(area_file(&img, "f.txt"), b"changed!");
    wait_for(
        "the guard goes after the last close",
        Duration::from_secs(5),
        || !qemu_holds_image(&img).unwrap(),
    );
    let mut again = Qemu::start(&img);
    again.wait_locked(&img);
    drop(again);
    drop(m);
}

#[test]
fn umount_refuses_while_files_are_open_and_lazy_finishes_later() {
    let s = Scratch::new();
    let img = s.image("u.img", &[("a.txt", b"a")]);
    let mut m = s.mount(&["--vm", &format!("u={}", img.display())]);
    let reader = File::open(m.vm("u").join("a.txt")).unwrap();
    let out = s.umount(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("busy") && err.contains("u/a.txt (pid "),
        "{err}"
    );
    assert!(is_mounted(&m.mountpoint));
    drop(reader);
    s.umount_ok(false);
    assert!(m.wait_exit(Duration::from_secs(10)).success());
    assert!(!is_mounted(&m.mountpoint));
    drop(m);

    // --lazy: detached at once; what the open file writes is committed when it closes.
    let mut m = s.mount(&["--vm", &format!("u={}", img.display())]);
    let mut writer = File::create(m.vm("u").join("late.txt")).unwrap();
    writer.write_all(b"first ").unwrap();
    s.umount_ok(true);
    assert!(!is_mounted(&m.mountpoint));
    assert!(
        m.child.try_wait().unwrap().is_none(),
        "it serves the open file"
    );
    writer.write_all(b"second").unwrap();
    drop(writer);
    assert!(m.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(area_file(&img, "late.txt"), b"first second");
    common::assert_fsck_clean(&img);

    // Detached with a file that stays open: SIGTERM ends it, keeping what was written.
    let mut m = s.mount(&["--vm", &format!("u={}", img.display())]);
    let mut writer = File::create(m.vm("u").join("kept.txt")).unwrap();
    writer.write_all(b"written before the end").unwrap();
    s.umount_ok(true);
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(area_file(&img, "kept.txt"), b"written before the end");
    assert!(writer.write_all(b"more").is_err(), "the view is gone");
    common::assert_fsck_clean(&img);
}

#[test]
fn sigterm_commits_pending_changes_then_unmounts() {
    let s = Scratch::new();
    let img = s.image("t.img", &[("a.txt", b"0123456789"), ("old/x", b"x")]);
    let mut m = s.mount(&["--vm", &format!("t={}", img.display())]);
    let vm = m.vm("t");
    OpenOptions::new()
        .write(true)
        .open(vm.join("a.txt"))
        .unwrap()
        .set_len(4)
        .unwrap();
    // Changes without an open file wait for a quiet moment before they are committed.
    fs::create_dir(vm.join("made")).unwrap();
    fs::rename(vm.join("old"), vm.join("made/renamed")).unwrap();
    // Mostly still pending here. On a slow host the quiet-moment commit may have come
    // first: then a change back and forth, for SIGTERM to find one pending. Either way,
    // after SIGTERM everything is in the image.
    let pending = || {
        let flag = json(&vm.join(".nlxtp/view.json"))["uncommitted_changes"].clone();
        assert!(flag.is_boolean(), "{flag}");
        flag == true
    };
    for _ in 0..5 {
        if pending() {
            break;
        }
        eprintln!("the quiet-moment commit came first: one more change");
        fs::rename(vm.join("made/renamed"), vm.join("made/moved")).unwrap();
        fs::rename(vm.join("made/moved"), vm.join("made/renamed")).unwrap();
    }
    m.signal(Signal::SIGTERM);
    assert!(m.wait_exit(Duration::from_secs(10)).success());
    assert!(!is_mounted(&m.mountpoint));
    assert_eq!(
        area_paths(&img),
        ["a.txt", "made", "made/renamed", "made/renamed/x"]
    );
    assert_eq!(area_file(&img, "a.txt"), b"0123");
    common::assert_fsck_clean(&img);
    assert!(!qemu_holds_image(&img).unwrap());
}

/// SIGKILL of the mount process while commits rewrite the image: after each kill the
/// image is clean and holds one complete version, and `nlxtp umount` cleans the stale
/// mount point.
#[test]
fn sigkill_at_any_moment_leaves_the_old_or_the_new_image() {
    let s = Scratch::new();
    let version = |n: u32| -> Vec<u8> {
        let mut v = format!("version {n}\n").into_bytes();
        v.resize(1 << 20, b'0' + (n % 10) as u8);
        v
    };
    let img = s.image("k.img", &[("data.bin", &version(0))]);
    let mut next = 1;
    for round in 0..4u64 {
        let mut m = s.mount(&["--vm", &format!("k={}", img.display())]);
        let path = m.vm("k").join("data.bin");
        let first = next;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = first;
                while !stop.load(Ordering::SeqCst) {
                    // Each write ends in a commit (fsync); errors start once the process is gone.
                    let written = File::create(&path)
                        .and_then(|mut f| f.write_all(&version(n)).and_then(|()| f.sync_all()));
                    if written.is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        };
        sleep(Duration::from_millis(60 + 70 * round));
        m.signal(Signal::SIGKILL);
        let _ = m.wait_exit(Duration::from_secs(5));
        stop.store(true, Ordering::SeqCst);
        next = writer.join().unwrap() + 1;
        let out = s.umount(false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.contains("stale"), "{err}");
        assert!(!is_mounted(&m.mountpoint));
        common::assert_fsck_clean(&img);
        let data = area_file(&img, "data.bin");
        let n: u32 =
            String::from_utf8_lossy(&data[..data.iter().position(|&b| b == b'\n').unwrap()])
                .trim_start_matches("version ")
                .parse()
                .unwrap();
        let whole = version(n);
        let differs = data.iter().zip(&whole).position(|(a, b)| a != b);
        assert!(
            data == whole,
            "round {round}: not a whole version {n}: {} bytes, first difference at {differs:?}",
            data.len()
        );
        assert_eq!(area_paths(&img), ["data.bin"]);
        assert!(
            !qemu_holds_image(&img).unwrap(),
            "no lock outlives the process"
        );
    }
}

#[test]
fn posix_basics_on_the_writable_view() {
    let s = Scratch::new();
    let img = s.image(
        "p.img",
        &[("f.txt", b"hello world"), ("d/inner.txt", b"in")],
    );
    let m = s.mount(&["--vm", &format!("p={}", img.display())]);
    let vm = m.vm("p");
    let e = |r: std::io::Result<()>| errno_of(r);

    // Permissions: vFAT keeps none, so chmod that changes bits is refused; modes shown.
    let meta = fs::metadata(vm.join("f.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(
        fs::metadata(vm.join("d")).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        e(fs::set_permissions(
            vm.join("f.txt"),
            fs::Permissions::from_mode(0o600)
        )),
        nix::libc::EPERM
    );
    assert_eq!(
        e(fs::set_permissions(
            vm.join("f.txt"),
            fs::Permissions::from_mode(0o644)
        )),
        0
    );
    assert_eq!(
        e(fs::write(m.mountpoint.join("not-a-vm"), b"x")),
        nix::libc::EPERM
    );

    // Truncate: shrink and grow.
    let f = OpenOptions::new()
        .write(true)
        .open(vm.join("f.txt"))
        .unwrap();
    f.set_len(5).unwrap();
    assert_eq!(fs::read(vm.join("f.txt")).unwrap(), b"hello");
    f.set_len(7).unwrap();
    assert_eq!(fs::read(vm.join("f.txt")).unwrap(), b"hello\0\0");
    drop(f);
    // Append and exclusive create.
    OpenOptions::new()
        .append(true)
        .open(vm.join("f.txt"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    assert_eq!(fs::read(vm.join("f.txt")).unwrap(), b"hello\0\0!");
    assert_eq!(
        errno_of(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(vm.join("f.txt"))
        ),
        nix::libc::EEXIST
    );
    assert_eq!(
        e(fs::write(vm.join("F.TXT"), b"x")),
        nix::libc::EEXIST,
        "vFAT ignores case"
    );

    // mkdir, rmdir.
    fs::create_dir(vm.join("new")).unwrap();
    assert_eq!(e(fs::create_dir(vm.join("new"))), nix::libc::EEXIST);
    assert_eq!(e(fs::remove_dir(vm.join("d"))), nix::libc::ENOTEMPTY);
    assert_eq!(e(fs::remove_dir(vm.join("f.txt"))), nix::libc::ENOTDIR);
    assert_eq!(e(fs::remove_file(vm.join("d"))), nix::libc::EISDIR);
    assert_eq!(e(fs::create_dir(vm.join("missing/sub"))), nix::libc::ENOENT);
    fs::create_dir(vm.join("gone")).unwrap();
    fs::remove_dir(vm.join("gone")).unwrap();

    // rename: a file over a file, a directory with its content, into itself, over a
    // non-empty directory, over a file.
    fs::write(vm.join("g.txt"), b"gee").unwrap();
    fs::rename(vm.join("g.txt"), vm.join("f.txt")).unwrap();
    assert_eq!(fs::read(vm.join("f.txt")).unwrap(), b"gee");
    assert_eq!(errno_of(fs::metadata(vm.join("g.txt"))), nix::libc::ENOENT);
    fs::rename(vm.join("d"), vm.join("new/d2")).unwrap();
    assert_eq!(fs::read(vm.join("new/d2/inner.txt")).unwrap(), b"in");
    assert_eq!(
        e(fs::rename(vm.join("new"), vm.join("new/d2/x"))),
        nix::libc::EINVAL
    );
    fs::create_dir(vm.join("empty")).unwrap();
    assert_eq!(
        e(fs::rename(vm.join("empty"), vm.join("new"))),
        nix::libc::ENOTEMPTY
    );
    assert_eq!(
        e(fs::rename(vm.join("empty"), vm.join("f.txt"))),
        nix::libc::ENOTDIR
    );
    assert_eq!(
        e(fs::rename(vm.join("f.txt"), vm.join("empty"))),
        nix::libc::EISDIR
    );
    assert_eq!(
        e(fs::rename(vm.join("f.txt"), vm.join(".nlxtp/x"))),
        nix::libc::EACCES
    );
    fs::remove_dir(vm.join("empty")).unwrap();

    // An open file keeps its content through a rename; fsync of the directory commits.
    let mut open = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(vm.join("w.txt"))
        .unwrap();
    open.write_all(b"before ").unwrap();
    fs::rename(vm.join("w.txt"), vm.join("new/w.txt")).unwrap();
    open.write_all(b"after").unwrap();
    open.sync_all().unwrap();
    assert_eq!(area_file(&img, "new/w.txt"), b"before after");
    drop(open);
    File::open(&vm).unwrap().sync_all().unwrap();
    assert_eq!(
        area_paths(&img),
        ["f.txt", "new", "new/d2", "new/d2/inner.txt", "new/w.txt"]
    );
    assert_eq!(area_file(&img, "f.txt"), b"gee");
    common::assert_fsck_clean(&img);
    drop(m);
}

#[test]
fn sighup_reload_adds_and_removes_vms_and_daemon_mode() {
    let s = Scratch::new();
    s.image("a.img", &[("a.txt", b"a")]);
    let b = s.image("b.img", &[("b.txt", b"b")]);
    s.image("c.img", &[("c.txt", b"c")]);
    let config = s.path("vms.toml");
    fs::write(&config, "[vms]\na = \"a.img\"\nb = \"b.img\"\n").unwrap();
    let m = s.mount(&["--config", config.to_str().unwrap()]);
    assert_eq!(names(&m.mountpoint), ["a", "b"]);
    let held = File::open(m.vm("b").join("b.txt")).unwrap();
    fs::write(&config, "[vms]\nb = \"b.img\"\nc = \"c.img\"\n").unwrap();
    m.signal(Signal::SIGHUP);
    wait_for("the reload", Duration::from_secs(5), || {
        names(&m.mountpoint) == ["b", "c"]
    });
    assert_eq!(fs::read(m.vm("c").join("c.txt")).unwrap(), b"c");
    let mut text = String::new();
    (&held).read_to_string(&mut text).unwrap();
    assert_eq!(text, "b", "an untouched VM's open file still works");
    drop(held);
    // A broken config changes nothing.
    fs::write(&config, "[vms\n").unwrap();
    m.signal(Signal::SIGHUP);
    sleep(Duration::from_millis(200));
    assert_eq!(names(&m.mountpoint), ["b", "c"]);
    s.umount_ok(false);
    drop(m);

    // --daemon returns once mounted; umount ends the background process.
    let out = s.nlxtp(&[
        "mount",
        s.mnt().to_str().unwrap(),
        "--vm",
        &format!("b={}", b.display()),
        "--daemon",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&s.mnt()));
    let guard = Mounted {
        child: Command::new("true").spawn().unwrap(),
        mountpoint: s.mnt(),
        log: None,
    };
    assert_eq!(fs::read(s.mnt().join("b/b.txt")).unwrap(), b"b");
    s.umount_ok(false);
    assert!(!is_mounted(&s.mnt()));
    drop(guard);
}

/// A container whose area lies below directories the guest controls: the config's
/// `{ rootfs, area }` form resolves it beneath the root, never through a planted link.
#[test]
fn config_containers_are_resolved_beneath_their_root() {
    let s = Scratch::new();
    let rootfs = s.path("ct/rootfs");
    fs::create_dir_all(rootfs.join("mnt/nlXTP")).unwrap();
    fs::write(rootfs.join("mnt/nlXTP/result.txt"), b"inside").unwrap();
    let config = s.path("vms.toml");
    fs::write(
        &config,
        "[vms]\nct = { rootfs = \"ct/rootfs\", area = \"/mnt/nlXTP\" }\n",
    )
    .unwrap();
    let m = s.mount(&["--config", config.to_str().unwrap()]);
    assert_eq!(fs::read(m.vm("ct").join("result.txt")).unwrap(), b"inside");
    assert_eq!(
        json(&m.vm("ct").join(".nlxtp/view.json"))["backend"],
        "directory"
    );
    s.umount_ok(false);
    drop(m);

    // The guest turns /mnt into a link to another container's area: refused.
    let other = s.path("other/mnt/nlXTP");
    fs::create_dir_all(&other).unwrap();
    fs::remove_dir_all(rootfs.join("mnt")).unwrap();
    std::os::unix::fs::symlink(other.parent().unwrap(), rootfs.join("mnt")).unwrap();
    let out = s.nlxtp(&[
        "mount",
        s.mnt().to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--daemon",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("symbolic link"),
        "{err}"
    );
    assert!(!is_mounted(&s.mnt()));
}

/// A container-style directory: a simulated monitor rewrites the status slots in place
/// while status.json is read; the view refuses writes while the run goes on and takes
/// them once it has ended, keeping the status file as it is.
#[test]
fn container_directory_status_and_writes() {
    let s = Scratch::new();
    let area = s.path("ct");
    fs::create_dir_all(area.join("nlxtp")).unwrap();
    fs::write(area.join(START_SCRIPT), b"#!/bin/sh\nsleep 1\n").unwrap();
    let mut rec = common::record(4, RunState::Running, "step 1");
    let first = common::status_file(1, &rec);
    fs::write(area.join(STATUS_FILE), &first).unwrap();
    let m = s.mount(&["--vm", &format!("ct={}", area.display())]);
    let vm = m.vm("ct");
    assert_eq!(json(&vm.join(".nlxtp/view.json"))["backend"], "directory");

    let status = File::options()
        .write(true)
        .open(area.join(STATUS_FILE))
        .unwrap();
    let mut writer = StatusWriter::resume(&first);
    let mut slot = vec![0u8; STATUS_SLOT_LEN];
    let mut write_record = |rec: &mut nlxtp_core::StatusRecord| {
        rec.custom.clear();
        let text = format!("step {}", writer.next_sequence());
        rec.custom.push_str(&text).unwrap();
        let at = writer.encode(rec, &mut slot).unwrap() as u64;
        status.write_all_at(&slot, at).unwrap();
        status.sync_data().unwrap();
    };
    for _ in 0..5 {
        write_record(&mut rec);
        let report = json(&vm.join(".nlxtp/status.json"));
        let seq = report["record"]["sequence"].as_u64().unwrap();
        assert_eq!(report["record"]["custom"], format!("step {seq}"));
        assert_eq!(report["record"]["state"], "running");
    }
    assert_eq!(
        errno_of(fs::write(vm.join("drop.txt"), b"x")),
        nix::libc::EBUSY
    );

    rec.state = RunState::Exited(0);
    write_record(&mut rec);
    let done = fs::read(area.join(STATUS_FILE)).unwrap();
    assert_eq!(
        json(&vm.join(".nlxtp/status.json"))["record"]["state"],
        "exited"
    );
    fs::write(vm.join("drop.txt"), b"dropped in").unwrap();
    assert_eq!(fs::read(area.join("drop.txt")).unwrap(), b"dropped in");
    assert_eq!(
        fs::read(area.join(STATUS_FILE)).unwrap(),
        done,
        "the run's status stays"
    );
    assert_eq!(
        fs::read(area.join(START_SCRIPT)).unwrap(),
        b"#!/bin/sh\nsleep 1\n"
    );
    s.umount_ok(false);
    drop(m);
}
