//! libvirt domains as targets, against a real libvirtd started by the harness
//! (`nlxtp_harness::libvirt`) and real QEMU under TCG: the whole cycle through the local
//! connection and through TCP on loopback, the refusal to upload while the domain runs
//! (the volume unchanged), and the clear error for a domain without a shared disk.

use std::sync::Arc;
use std::time::Duration;

use nlxtp_harness::libvirt::{define_domain, nlxtp_libvirt_binary, virsh, wait_shut_off, Libvirtd};
use nlxtp_harness::vm::archive;
use nlxtp_host::area::libvirt::{attach, connect, detach, LibvirtDomain};
use nlxtp_host::area::vfat::{create_disk, DiskOptions};
use nlxtp_host::area::{AreaError, AreaPath, SharedArea, STATUS_FILE};
use nlxtp_host::ops::{self, UploadError, UploadOptions};

const POOL: &str = "nlxtp-test";

fn open(uri: &str, name: &str) -> LibvirtDomain {
    LibvirtDomain::open(connect(Some(uri)).unwrap(), uri, name).unwrap()
}

fn sha(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn cycle_local_and_remote_and_refusals() {
    let daemon = Libvirtd::shared().unwrap();
    let pool_dir = daemon.pool(POOL).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (kernel, initramfs) = nlxtp_harness::initramfs::guest_initramfs(work.path()).unwrap();
    let disk = pool_dir.join("web1-shared.img");
    let _ = std::fs::remove_file(&disk);
    create_disk(
        &disk,
        &DiskOptions {
            size: 16 << 20,
            ..DiskOptions::default()
        },
    )
    .unwrap();
    virsh(Libvirtd::SYSTEM, &["pool-refresh", POOL]).unwrap();
    define_domain(
        Libvirtd::SYSTEM,
        "nlxtp-web1",
        &kernel.boot_image(),
        &initramfs,
        "loglevel=4 nlxtp.heartbeat_ms=500",
        POOL,
        "web1-shared.img",
    )
    .unwrap();

    // Upload through the local connection while the domain is off.
    let local = open(Libvirtd::SYSTEM, "nlxtp-web1");
    assert!(!local.is_busy().unwrap());
    let job = archive(&[(
        "auto_exec.sh",
        b"#!/bin/sh\necho hello from libvirt > out.txt\n",
        0o755,
    )])
    .unwrap();
    ops::upload(&local, &job[..], &UploadOptions::default()).unwrap();
    // The old volume is gone and the domain uses a new one.
    assert!(!disk.exists(), "the old volume was not deleted");

    // Boot it; while it runs, an upload is refused (also remotely) and the volume stays.
    virsh(Libvirtd::SYSTEM, &["start", "nlxtp-web1"]).unwrap();
    let remote = open(daemon.tcp_uri(), "nlxtp-web1");
    assert!(remote.is_busy().unwrap());
    let before: Vec<_> = std::fs::read_dir(&pool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let contents: Vec<_> = before.iter().map(|p| sha(p)).collect();
    match ops::upload(&remote, &job[..], &UploadOptions::default()) {
        Err(UploadError::Area(AreaError::Busy { .. })) => {}
        other => panic!("an upload to a running domain was not refused: {other:?}"),
    }
    match remote.replace(Vec::new()) {
        Err(AreaError::Busy { .. }) => {}
        other => panic!("a replace on a running domain was not refused: {other:?}"),
    }
    let after: Vec<_> = std::fs::read_dir(&pool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after);
    assert_eq!(contents, after.iter().map(|p| sha(p)).collect::<Vec<_>>());

    // The run ends and the guest powers off; the remote reads see the result.
    wait_shut_off(Libvirtd::SYSTEM, "nlxtp-web1", Duration::from_secs(180)).unwrap();
    assert!(!remote.is_busy().unwrap());
    let report = ops::status::status(&remote).unwrap();
    let record = report.record.expect("a status record");
    assert_eq!(record.state, "exited", "{record:?}");
    assert_eq!(record.exit_code, Some(0));
    let out = remote
        .read_file(&AreaPath::new("out.txt").unwrap(), 1024)
        .unwrap();
    assert_eq!(out, b"hello from libvirt\n");
    assert!(!remote
        .read_file(&AreaPath::new(STATUS_FILE).unwrap(), 1 << 20)
        .unwrap()
        .is_empty());
}

#[test]
fn a_domain_without_a_shared_disk_is_a_clear_error() {
    let daemon = Libvirtd::shared().unwrap();
    let xml = "<domain type='qemu'><name>nlxtp-bare</name><memory unit='MiB'>64</memory>\
               <os><type arch='x86_64'>hvm</type></os></domain>";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), xml).unwrap();
    let _ = virsh(Libvirtd::SYSTEM, &["undefine", "nlxtp-bare"]);
    virsh(Libvirtd::SYSTEM, &["define", file.path().to_str().unwrap()]).unwrap();
    let err = LibvirtDomain::open(
        connect(Some(Libvirtd::SYSTEM)).unwrap(),
        "qemu:///system",
        "nlxtp-bare",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("has no shared disk") && err.contains("attach"),
        "{err}"
    );

    // attach makes one (a volume of the pool, in the persistent definition), detach
    // takes it away again with its volume.
    let pool_dir = daemon.pool(POOL).unwrap();
    let conn = connect(Some(daemon.tcp_uri())).unwrap();
    let _ = std::fs::remove_file(pool_dir.join("nlxtp-bare-nlxtp.img"));
    virsh(Libvirtd::SYSTEM, &["pool-refresh", POOL]).unwrap();
    let options = DiskOptions {
        size: 8 << 20,
        ..DiskOptions::default()
    };
    let made = attach(&conn, "nlxtp-bare", POOL, &options).unwrap();
    assert_eq!(made.target, "vdb");
    let xml = virsh(Libvirtd::SYSTEM, &["dumpxml", "--inactive", "nlxtp-bare"]).unwrap();
    assert!(xml.contains("<serial>NLXTP</serial>"), "{xml}");
    let area = open(daemon.tcp_uri(), "nlxtp-bare");
    let report = ops::status::status(&area).unwrap();
    assert!(!report.upload_present && report.record.is_none());
    let again = attach(&conn, "nlxtp-bare", POOL, &options)
        .unwrap_err()
        .to_string();
    assert!(again.contains("attach a shared disk"), "{again}");
    assert!(detach(&conn, "nlxtp-bare").unwrap());
    assert!(!pool_dir.join(&made.volume).exists());
    let err = LibvirtDomain::open(Arc::new((*conn).clone()), daemon.tcp_uri(), "nlxtp-bare")
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no shared disk"), "{err}");
    let err = connect(Some("qemu+tcp://127.0.0.1:1/system"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("could not connect to libvirt"), "{err}");
}

/// A second host (its own libvirtd in its own mount namespace, on 127.0.0.2), driven
/// only over TCP: upload, boot, `wait` (through the reads over streams), status and
/// the output, then both daemons answer for their own domain only.
#[test]
fn cycle_on_a_second_host_over_tcp() {
    let host1 = Libvirtd::shared().unwrap();
    let host2 = Libvirtd::second_host().unwrap();
    let uri = host2.tcp_uri().to_owned();
    let pool = "nlxtp-host2";
    let pool_dir = host2.pool(pool).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (kernel, initramfs) = nlxtp_harness::initramfs::guest_initramfs(work.path()).unwrap();
    let disk = pool_dir.join("db1-shared.img");
    let _ = std::fs::remove_file(&disk);
    create_disk(
        &disk,
        &DiskOptions {
            size: 16 << 20,
            ..DiskOptions::default()
        },
    )
    .unwrap();
    virsh(&uri, &["pool-refresh", pool]).unwrap();
    define_domain(
        &uri,
        "nlxtp-db1",
        &kernel.boot_image(),
        &initramfs,
        "loglevel=4 nlxtp.heartbeat_ms=500",
        pool,
        "db1-shared.img",
    )
    .unwrap();
    // The first host does not know this domain: each daemon is a host of its own.
    let err = LibvirtDomain::open(
        connect(Some(host1.tcp_uri())).unwrap(),
        host1.tcp_uri(),
        "nlxtp-db1",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("there is no domain nlxtp-db1"), "{err}");

    let area = open(&uri, "nlxtp-db1");
    let job = archive(&[(
        "auto_exec.sh",
        b"#!/bin/sh\necho second host > out.txt\nexit 3\n",
        0o755,
    )])
    .unwrap();
    ops::upload(&area, &job[..], &UploadOptions::default()).unwrap();
    virsh(&uri, &["start", "nlxtp-db1"]).unwrap();
    let outcome = ops::status::wait(
        &area,
        Some(Duration::from_secs(180)),
        Duration::from_millis(250),
        &mut |_| Ok(()),
    )
    .unwrap();
    match outcome {
        ops::WaitOutcome::Done(record) => {
            assert_eq!(record.state, nlxtp_core::RunState::Exited(3), "{record:?}")
        }
        other => panic!("the wait ended with {other:?}"),
    }
    wait_shut_off(&uri, "nlxtp-db1", Duration::from_secs(120)).unwrap();
    let out = area
        .read_file(&AreaPath::new("out.txt").unwrap(), 1024)
        .unwrap();
    assert_eq!(out, b"second host\n");

    // The fleet view over both hosts, in parallel: every domain with a shared disk, with
    // libvirt's state and the run's, as JSON lines; and the CLI on one domain.
    let cli = nlxtp_libvirt_binary().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let lines = run(&[
        "-c",
        host1.tcp_uri(),
        "-c",
        &uri,
        "status",
        "--all",
        "--json",
    ]);
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let db1 = rows
        .iter()
        .find(|r| r["domain"] == "nlxtp-db1")
        .unwrap_or_else(|| panic!("{lines}"));
    assert_eq!(db1["connection"], uri.as_str());
    assert_eq!(db1["domain_state"], "shut off");
    assert_eq!(db1["status"]["record"]["exit_code"], 3);
    let table = run(&["-c", host1.tcp_uri(), "-c", &uri, "status", "--all"]);
    assert!(
        table.contains("nlxtp-db1") && table.contains("shut off"),
        "{table}"
    );
    let text = run(&["--connect", &uri, "status", "nlxtp-db1"]);
    assert!(text.contains("exited with code 3"), "{text}");

    // upload --start boots the domain after the upload; wait follows the run to its end.
    let job_file = work.path().join("job.tar.gz");
    let upload_start = |script: &[u8]| {
        std::fs::write(
            &job_file,
            archive(&[("auto_exec.sh", script, 0o755)]).unwrap(),
        )
        .unwrap();
        run(&[
            "-c",
            &uri,
            "upload",
            "--start",
            "nlxtp-db1",
            job_file.to_str().unwrap(),
        ]);
    };
    upload_start(b"#!/bin/sh\necho again > out.txt\n");
    run(&["-c", &uri, "wait", "nlxtp-db1", "--timeout", "180"]);
    wait_shut_off(&uri, "nlxtp-db1", Duration::from_secs(120)).unwrap();
    let out = area
        .read_file(&AreaPath::new("out.txt").unwrap(), 1024)
        .unwrap();
    assert_eq!(out, b"again\n");

    // A domain destroyed in the middle of a run: the volume is no longer in use, so the
    // run is seen as cut off (wait exits 126 at once, status says so), never as running.
    upload_start(b"#!/bin/sh\necho started\nsleep 600\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let run_state = || {
        let report: serde_json::Value =
            serde_json::from_str(&run(&["-c", &uri, "status", "--json", "nlxtp-db1"])).unwrap();
        report["record"]["state"].as_str().map(str::to_owned)
    };
    while run_state().as_deref() != Some("running") {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    virsh(&uri, &["destroy", "nlxtp-db1"]).unwrap();
    let waited = std::process::Command::new(&cli)
        .args(["-c", &uri, "wait", "nlxtp-db1", "--timeout", "60"])
        .output()
        .unwrap();
    assert_eq!(
        waited.status.code(),
        Some(126),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let text = run(&["-c", &uri, "status", "nlxtp-db1"]);
    assert!(text.contains("cut off"), "{text}");

    // --help speaks of domains, and lists this binary's own commands.
    let help = run(&["--help"]);
    assert!(
        help.contains("TARGET is a domain's name")
            && help.contains("attach")
            && help.contains("--connect")
            && help.contains("upload --hot")
            && !help.contains("create-disk"),
        "{help}"
    );
    let _ = virsh(&uri, &["undefine", "nlxtp-db1"]);
}
