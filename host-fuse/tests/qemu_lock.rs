//! QEMU's image locks against a real QEMU: the host sees a running VM, refuses to upload
//! then, and keeps a VM from starting while it holds its guard.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nlxtp_host::area::vfat::{create_image, qemu_holds_image, ImageWriteGuard, VfatImage};
use nlxtp_host::area::{AreaError, SharedArea, UploadFile, WalkLimits};

/// A QEMU paused before booting anything (`-S`), holding the image as a VM does.
/// Dropping it stops QEMU: SIGTERM, then SIGKILL after a deadline.
struct Qemu {
    child: Child,
}

impl Qemu {
    fn start(image: &Path) -> Qemu {
        let drive = format!("file={},format=raw,if=virtio", image.display());
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
            .args(["-drive", &drive])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 starts (install qemu-system-x86)");
        Qemu { child }
    }

    /// Starts QEMU on `image` and waits until it holds the image's locks (failing if it
    /// exits first).
    fn start_holding(image: &Path) -> Qemu {
        let mut qemu = Qemu::start(image);
        wait_for("QEMU locks the image", Duration::from_secs(20), || {
            if let Some(status) = qemu.child.try_wait().unwrap() {
                panic!("QEMU exited before it locked {}: {status}", image.display());
            }
            qemu_holds_image(image).unwrap()
        });
        qemu
    }

    /// Waits for QEMU to exit by itself; its status and standard error.
    fn wait_exit(&mut self, deadline: Duration) -> (std::process::ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            assert!(
                start.elapsed() < deadline,
                "QEMU still runs after {deadline:?}"
            );
            sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tests of this file one at a time: a QEMU one test starts is forked while the
/// other may hold a lock's descriptor, which the child then shares until its exec (OFD
/// locks last as long as any copy), so the other would see its dropped lock still held.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls `cond` until it holds, failing after `deadline`.
fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "{what}: not after {deadline:?}");
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn running_qemu_is_detected_and_blocks_uploads_and_the_guard_blocks_qemu() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vm.img");
    create_image(&img, 16 << 20, None, None).unwrap();
    let area = VfatImage::new(&img);
    area.replace(vec![
        UploadFile::bytes("auto_exec.sh", b"first".to_vec()).unwrap()
    ])
    .unwrap();
    assert!(!qemu_holds_image(&img).unwrap());

    // A running VM: detected, reads still work, uploads are refused and change nothing.
    let mut qemu = Qemu::start_holding(&img);
    assert!(area.is_busy().unwrap());
    assert_eq!(area.list(&WalkLimits::default()).unwrap().len(), 1);
    let before = std::fs::read(&img).unwrap();
    let err = area
        .replace(vec![
            UploadFile::bytes("auto_exec.sh", b"second".to_vec()).unwrap()
        ])
        .unwrap_err();
    assert!(matches!(err, AreaError::Busy { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("the VM is running")
            && text.contains("stop it, then upload; the script runs at its next boot"),
        "{text}"
    );
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a refused upload changes nothing"
    );
    assert!(matches!(
        ImageWriteGuard::acquire(&img),
        Err(AreaError::Busy { .. })
    ));
    qemu.stop();
    wait_for("QEMU's locks go away", Duration::from_secs(5), || {
        !qemu_holds_image(&img).unwrap()
    });

    // The host's guard held: QEMU cannot start on the image.
    let guard = ImageWriteGuard::acquire(&img).unwrap();
    let mut blocked = Qemu::start(&img);
    let (status, stderr) = blocked.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "QEMU started despite the guard: {stderr}"
    );
    assert!(stderr.contains("Failed to lock byte"), "{stderr}");
    drop(guard);

    // After an upload (a new inode renamed over the old), nothing stays locked: a VM starts.
    area.replace(vec![
        UploadFile::bytes("auto_exec.sh", b"second".to_vec()).unwrap()
    ])
    .unwrap();
    let mut again = Qemu::start_holding(&img);
    again.stop();
}

#[test]
fn a_running_record_is_cut_off_only_when_no_qemu_holds_the_image() {
    use nlxtp_core::RunState;
    use nlxtp_host::ops::{self, Monitor};
    let _serial = serial();

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vm.img");
    create_image(&img, 16 << 20, None, None).unwrap();
    let rec = common::record(7, RunState::Running, "half way");
    common::mmd(&img, "nlxtp");
    common::mcopy(&img, "nlxtp/status.bin", &common::status_file(3, &rec));
    let area = VfatImage::new(&img);

    let mut qemu = Qemu::start_holding(&img);
    let held = ops::status(&area).unwrap();
    assert!(held.vm_running);
    assert!(
        matches!(held.monitor, Monitor::Alive { .. }),
        "{:?}",
        held.monitor
    );
    qemu.stop();
    wait_for("QEMU's locks go away", Duration::from_secs(5), || {
        !qemu_holds_image(&img).unwrap()
    });
    let off = ops::status(&area).unwrap();
    assert!(!off.vm_running);
    assert_eq!(off.monitor, Monitor::CutOff);
}

/// An archive that never ends: a member of 3 GiB whose bytes keep coming; counts what
/// was read.
struct Endless {
    header: Vec<u8>,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Endless {
    fn new(read: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Endless {
        let mut header = tar::Header::new_gnu();
        header.set_path("big.bin").unwrap();
        header.set_size(3 << 30);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        Endless {
            header: header.as_bytes().to_vec(),
            read,
        }
    }
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.read.load(std::sync::atomic::Ordering::Relaxed) as usize;
        let n = buf.len().min(64 << 10);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = self.header.get(at + i).copied().unwrap_or(b'x');
        }
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// `ops::upload_opening`, as the CLI uploads (the archive read while the area
/// is opened and checked): an image a running QEMU holds is refused as soon as that is
/// seen, and reading the archive stops there; so does a failure to open; a free image
/// takes the upload.
#[test]
fn an_upload_read_beside_the_checks_stops_reading_when_they_refuse() {
    use nlxtp_host::ops::{self, UploadOptions};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vm.img");
    create_image(&img, 16 << 20, None, None).unwrap();
    let options = UploadOptions::default();
    let open = || Ok::<_, AreaError>(Box::new(VfatImage::new(&img)) as Box<dyn SharedArea>);

    // Opening fails (after a while, as a remote connection would): that error, and the
    // reading has stopped far short of the archive's 3 GiB.
    let read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let Err(err) = ops::upload_opening(
        || {
            sleep(Duration::from_millis(100));
            Err::<Box<dyn SharedArea>, _>("no such domain")
        },
        Endless::new(read.clone()),
        &options,
    ) else {
        panic!("opening failed, the upload went on");
    };
    assert_eq!(err, "no such domain");
    let seen = read.load(Ordering::Relaxed);
    assert!(
        seen > 0 && seen < 1 << 30,
        "read {seen} bytes of an upload called off"
    );
    eprintln!(
        "called off after {:?}, {seen} bytes read",
        started.elapsed()
    );

    // A running VM: Busy, reading stopped, the image unchanged.
    let mut qemu = Qemu::start_holding(&img);
    let before = std::fs::read(&img).unwrap();
    let read = Arc::new(AtomicU64::new(0));
    let (_, prepared) = ops::upload_opening(open, Endless::new(read.clone()), &options).unwrap();
    let err = prepared.unwrap_err();
    assert!(
        matches!(err, ops::UploadError::Area(AreaError::Busy { .. })),
        "{err:?}"
    );
    let seen = read.load(Ordering::Relaxed);
    assert!(seen < 1 << 30, "read {seen} bytes of a refused upload");
    assert!(std::fs::read(&img).unwrap() == before);
    qemu.stop();
    wait_for("QEMU's locks go away", Duration::from_secs(5), || {
        !qemu_holds_image(&img).unwrap()
    });

    // Free: the upload goes in.
    let mut job = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(18);
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    job.append_data(&mut header, "auto_exec.sh", &b"#!/bin/sh\necho hi\n"[..])
        .unwrap();
    let job = job.into_inner().unwrap();
    let (area, uploaded) = ops::upload_opening(open, &job[..], &options).unwrap();
    let report = uploaded.unwrap();
    assert_eq!(report.entries, 2, "{report:?}");
    assert_eq!(
        area.read_file(
            &nlxtp_host::area::AreaPath::new("auto_exec.sh").unwrap(),
            64
        )
        .unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
}
