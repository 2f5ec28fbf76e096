//! Hot-plugged shared disks against a real QEMU with no guest OS (it sits in the BIOS):
//! the QMP client, attach (QEMU's locks then refuse uploads), a detach whose unplug the
//! absent guest never acknowledges, the host's Detached record, and what is refused.
//! The cycle with a guest that runs the job is the harness's (it needs a booted kernel).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{record, status_file};
use nlxtp_core::record::AbortReason;
use nlxtp_core::RunState;
use nlxtp_host::area::vfat::{create_image, qemu_holds_image, VfatImage};
use nlxtp_host::area::{AreaPath, SharedArea, UploadFile};
use nlxtp_host::ops::hot::{self, AttachOptions, DetachOptions, HotDisk, HotError};
use nlxtp_host::ops::{self, exec_archive, UploadError};
use nlxtp_host::vm::{Accel, Arch, Qemu, QemuConfig, Qmp, QmpError};

/// The tests that start QEMU, one at a time: a QEMU forked while another test holds a
/// lock's descriptor would share it until its exec (see qemu_lock.rs).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A QEMU with no kernel and no disk, serving QMP on `dir/qmp.sock`; the library's guard
/// stops it when dropped.
fn bios_only_qemu(dir: &Path) -> (Qemu, Qmp) {
    let config = QemuConfig {
        arch: Arch::X86_64,
        accel: Accel::Tcg,
        kernel: None,
        initrd: None,
        append: String::new(),
        disks: Vec::new(),
        memory_mib: 64,
        cpus: 1,
        serial_log: dir.join("serial.log"),
    };
    let socket = dir.join("qmp.sock");
    let qemu = Qemu::spawn_with_qmp(&config, &socket).expect("QEMU starts");
    let qmp = Qmp::connect(&socket, Duration::from_secs(20)).expect("QEMU's QMP socket answers");
    (qemu, qmp)
}

fn job() -> Vec<u8> {
    exec_archive(&["echo".into(), "hot".into()])
}

#[test]
fn qmp_commands_events_and_errors_against_a_real_qemu() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (_qemu, mut qmp) = bios_only_qemu(dir.path());
    let status = qmp.execute("query-status", None).unwrap();
    assert_eq!(status["status"], "running", "{status}");

    let err = qmp.execute("no-such-command", None).unwrap_err();
    assert_eq!(err.class(), Some("CommandNotFound"), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("QEMU refused no-such-command: "),
        "{err}"
    );

    // Events that come while a reply is awaited are kept for wait_event.
    qmp.execute("stop", None).unwrap();
    qmp.execute("cont", None).unwrap();
    let resumed = qmp
        .wait_event("RESUME", |_| true, Duration::from_secs(5))
        .unwrap();
    assert_eq!(resumed.name, "RESUME");
    let start = Instant::now();
    let err = qmp
        .wait_event("DEVICE_DELETED", |_| true, Duration::from_millis(200))
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, QmpError::NoEvent { .. }), "{err:?}");

    // QEMU serves one client at a time: a second one is told so, in bounded time.
    let err = Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("another client"), "{err}");
    // The first connection still works.
    qmp.execute("query-status", None).unwrap();
}

#[test]
fn a_missing_socket_says_how_qemu_must_be_started() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let start = Instant::now();
    let err = Qmp::connect(&socket, Duration::from_millis(100)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "is QEMU running with -qmp unix:{},server=on,wait=off?",
            socket.display()
        )),
        "{text}"
    );
}

#[test]
fn a_peer_that_is_not_qmp_or_sends_endless_lines_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, sends) in [
        ("not-qmp", b"hello there\n".to_vec()),
        ("not-greeting", b"{\"return\": {}}\n".to_vec()),
        ("endless", vec![b'x'; nlxtp_host::vm::qmp::MAX_LINE + 10]),
    ] {
        let socket = dir.path().join(format!("{name}.sock"));
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let _ = peer.write_all(&sends);
            // Keep the connection open until the client has given up.
            let _ = BufReader::new(peer).read_line(&mut String::new());
        });
        let err = Qmp::connect(&socket, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains("not QMP"), "{err}");
        server.join().unwrap();
    }
}

#[test]
fn attached_disk_is_locked_refuses_uploads_and_an_unacknowledged_unplug_is_reported() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (_qemu, mut qmp) = bios_only_qemu(dir.path());
    let image = dir.path().join("job1.img");

    // Created, uploaded, attached: QEMU holds the image.
    let start = Instant::now();
    let report = hot::attach(&mut qmp, &image, &job()[..], &AttachOptions::default()).unwrap();
    let total = start.elapsed();
    eprintln!(
        "create+upload+attach: {total:?}; blockdev-add+device_add: {} ms",
        report.attach_ms
    );
    assert!(report.created);
    assert!(report.node.starts_with("nlxtp-hot-") && report.node.len() <= 31);
    assert!(
        qemu_holds_image(&image).unwrap(),
        "device_add takes QEMU's locks"
    );
    let area = VfatImage::new(&image);
    let status = ops::status(&area).unwrap();
    assert!(status.vm_running && status.upload_present, "{status:?}");

    // A second upload into the attached disk is refused and changes nothing.
    let before = std::fs::read(&image).unwrap();
    let err = hot::attach(&mut qmp, &image, &job()[..], &AttachOptions::default()).unwrap_err();
    assert!(matches!(err, HotError::StillAttached { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("detach it first (nlxtp detach --qmp SOCKET"),
        "{err}"
    );
    let err = ops::upload(&area, &job()[..], &ops::UploadOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            UploadError::Area(nlxtp_host::area::AreaError::Busy { .. })
        ),
        "{err:?}"
    );
    assert!(std::fs::read(&image).unwrap() == before);

    // No guest OS answers the ACPI unplug: the bounded wait says so, and the disk stays.
    let start = Instant::now();
    let options = DetachOptions {
        force: true,
        device_timeout: Duration::from_millis(500),
        ..DetachOptions::default()
    };
    let detached = hot::detach(&mut qmp, &image, &options).unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(detached.was_attached && !detached.detached, "{detached:?}");
    assert!(!detached.released_by_guest && !detached.record_written);
    assert!(
        qemu_holds_image(&image).unwrap(),
        "the VM still holds the disk"
    );
    assert!(
        std::fs::read(&image).unwrap() == before,
        "nothing was written"
    );

    // A second disk beside it: another node, also attached.
    let second = dir.path().join("job2.img");
    let report2 = hot::attach(&mut qmp, &second, &job()[..], &AttachOptions::default()).unwrap();
    assert_ne!(report2.node, report.node);
    assert!(qemu_holds_image(&second).unwrap());
}

#[test]
fn detaching_a_disk_the_vm_never_had_writes_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (_qemu, mut qmp) = bios_only_qemu(dir.path());
    let image = dir.path().join("spare.img");
    let disk = HotDisk::open_or_create(&image, 8 << 20).unwrap();
    running_record_with_output(disk.area());
    let before = std::fs::read(&image).unwrap();
    let report = disk
        .detach(
            &mut qmp,
            &DetachOptions {
                force: true,
                ..DetachOptions::default()
            },
        )
        .unwrap();
    assert!(
        !report.was_attached && report.detached && !report.record_written,
        "{report:?}"
    );
    assert!(std::fs::read(&image).unwrap() == before);
}

/// An area whose run is in progress: the script, an output file and a "running" record.
fn running_record_with_output(area: &dyn SharedArea) {
    area.replace(vec![
        UploadFile::bytes("result.txt", b"half of the work".to_vec()).unwrap(),
        UploadFile::bytes(
            "nlxtp/status.bin",
            status_file(3, &record(7, RunState::Running, "working")),
        )
        .unwrap(),
        UploadFile::bytes("auto_exec.sh", b"#!/bin/sh\nsleep 100\n".to_vec()).unwrap(),
    ])
    .unwrap();
}

#[test]
fn a_run_taken_away_gets_the_detached_record_and_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("hot.img");
    let disk = HotDisk::open_or_create(&image, 8 << 20).unwrap();
    let area = disk.area();
    running_record_with_output(area);

    assert!(hot::record_detached(area).unwrap());
    let status = ops::status(area).unwrap();
    let record = status.record.expect("a record");
    assert_eq!(record.state, "aborted", "{record:?}");
    assert!(record.done);
    let mut file = Vec::new();
    area.read_status_file(nlxtp_host::area::StatusRead::Relocate, &mut file)
        .unwrap();
    let decoded = nlxtp_core::slots::read_status(&file).unwrap();
    assert_eq!(decoded.state, RunState::Aborted(AbortReason::Detached));
    assert_eq!(
        decoded.sequence, 4,
        "the next slot, the old record kept in the other"
    );
    assert_eq!(decoded.custom.as_str(), "working");
    let kept = area
        .read_file(&AreaPath::new("result.txt").unwrap(), 1 << 20)
        .unwrap();
    assert_eq!(kept, b"half of the work");
    common::assert_fsck_clean(&image);

    // A run that has ended is left as it is.
    let after = std::fs::read(&image).unwrap();
    assert!(!hot::record_detached(area).unwrap());
    assert!(std::fs::read(&image).unwrap() == after);
}

#[test]
fn a_disk_without_the_hot_label_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("boot-shared.img");
    create_image(&image, 8 << 20, None, None).unwrap();
    let before = std::fs::read(&image).unwrap();
    let err = HotDisk::open_or_create(&image, 8 << 20).unwrap_err();
    assert!(matches!(err, HotError::NotHot { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("its label is NLXTP, a hot disk's is NLXTP-HOT"),
        "{text}"
    );
    assert!(std::fs::read(&image).unwrap() == before);
}
