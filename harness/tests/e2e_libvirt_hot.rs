//! Jobs for a running libvirt domain (issue 15, the libvirt path), end to end: a real
//! libvirtd, a real TCG domain with `<acpi/>` that boots the harness guest and stays up
//! (`nlxtp.stay`), everything over `qemu+tcp://`. Each job is a new hot volume, written
//! through a stream and hot-plugged live; the guest runs it once and releases it; the
//! host unplugs it and downloads the results from the volume. Also: the library and the
//! `nlxtp-libvirt` command line for the same cycle, the refused upload into a volume the
//! domain still has, a forced detach that leaves the `Detached` record, and `--remove`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nlxtp_core::{AbortReason, RunState, StatusRecord};
use nlxtp_harness::jobs::{self, median};
use nlxtp_harness::libvirt::{define_domain, nlxtp_libvirt_binary, virsh, Libvirtd, BASE};
use nlxtp_harness::vm::{archive, download_files};
use nlxtp_host::area::libvirt::connect;
use nlxtp_host::area::libvirt::hot::{
    self, HotDetachOptions, HotJob, HotOptions, HotSelect, HotVolume, HotVolumeError,
};
use nlxtp_host::area::{AreaError, SharedArea};
use nlxtp_host::ops;
use nlxtp_host::ops::hot::DetachOptions;

const POOL: &str = "nlxtp-hot";
const DOMAIN: &str = "nlxtp-hot1";
const HOT_SIZE: u64 = 8 << 20;
const BOOT_DEADLINE: Duration = Duration::from_secs(180);
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Destroys and undefines the domain when the test ends; prints its serial log when the
/// test failed.
struct DomainGuard {
    uri: String,
    serial: PathBuf,
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "serial log of {DOMAIN}:\n{}",
                std::fs::read_to_string(&self.serial).unwrap_or_default()
            );
        }
        let _ = virsh(&self.uri, &["destroy", DOMAIN]);
        let _ = virsh(&self.uri, &["undefine", DOMAIN]);
    }
}

fn wait_serial(path: &Path, text: &str, deadline: Duration) {
    let end = Instant::now() + deadline;
    while !std::fs::read_to_string(path).is_ok_and(|log| log.contains(text)) {
        assert!(
            Instant::now() < end,
            "no {text:?} in {} within {deadline:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A job that records its run on its own disk, prints `tag`, leaves it in result.txt.
fn job(tag: &str, extra: &str) -> Vec<u8> {
    let script =
        format!("#!/bin/sh\necho run >> runs.txt\n{extra}\necho {tag}\necho {tag} > result.txt\n");
    archive(&[("auto_exec.sh", script.as_bytes(), 0o755)]).unwrap()
}

fn wait_started(area: &dyn SharedArea) -> Instant {
    jobs::wait_started(area, RUN_DEADLINE).unwrap()
}

fn wait_done(area: &dyn SharedArea) -> StatusRecord {
    jobs::wait_done(area, RUN_DEADLINE).unwrap()
}

fn text(files: &BTreeMap<String, Vec<u8>>, name: &str) -> String {
    jobs::text(files, name).unwrap()
}

fn cli(uri: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(nlxtp_libvirt_binary().unwrap())
        .args(["-c", uri])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nlxtp-libvirt {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn hot_jobs_through_libvirt_over_tcp() {
    let daemon = Libvirtd::shared().unwrap();
    let pool_dir = daemon.pool(POOL).unwrap();
    // Hot volumes of earlier runs go: this test counts its own.
    for entry in std::fs::read_dir(&pool_dir).unwrap() {
        let _ = std::fs::remove_file(entry.unwrap().path());
    }
    let work = tempfile::tempdir().unwrap();
    let (kernel, initramfs) = nlxtp_harness::initramfs::guest_initramfs(work.path()).unwrap();
    let shared = format!("{DOMAIN}-shared.img");
    nlxtp_host::area::vfat::create_disk(
        &pool_dir.join(&shared),
        &nlxtp_host::area::vfat::DiskOptions {
            size: 16 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    virsh(Libvirtd::SYSTEM, &["pool-refresh", POOL]).unwrap();
    define_domain(
        Libvirtd::SYSTEM,
        DOMAIN,
        &kernel.boot_image(),
        &initramfs,
        "loglevel=4 nlxtp.heartbeat_ms=500 nlxtp.stay",
        POOL,
        &shared,
    )
    .unwrap();
    let serial = PathBuf::from(BASE)
        .join("boot")
        .join(DOMAIN)
        .join("serial.log");
    let _ = std::fs::remove_file(&serial);
    let _guard = DomainGuard {
        uri: Libvirtd::SYSTEM.into(),
        serial: serial.clone(),
    };
    let uri = daemon.tcp_uri().to_owned();
    let conn = connect(Some(&uri)).unwrap();

    // Off: a hot job is refused, clearly.
    let off = hot::attach(
        conn.clone(),
        &uri,
        DOMAIN,
        &job("x", "")[..],
        &HotOptions::default(),
    );
    assert!(
        matches!(off, Err(HotVolumeError::NotRunning { .. })),
        "{off:?}"
    );

    virsh(Libvirtd::SYSTEM, &["start", DOMAIN]).unwrap();
    let booted = Instant::now();
    wait_serial(&serial, "nlxtp-init: booted", BOOT_DEADLINE);
    eprintln!("domain booted in {:?}", booted.elapsed());

    let options = HotOptions {
        size: HOT_SIZE,
        ..HotOptions::default()
    };
    let mut to_start = Vec::new();
    let mut to_results = Vec::new();
    let mut volumes = Vec::new();
    for i in 0..5 {
        let tag = format!("job-{i}");
        let sent = Instant::now();
        let volume = if i == 2 {
            // The command line, the same cycle.
            let file = work.path().join("job.tar.gz");
            std::fs::write(&file, job(&tag, "")).unwrap();
            let out = cli(
                &uri,
                &[
                    "upload",
                    "--hot",
                    DOMAIN,
                    file.to_str().unwrap(),
                    "--size",
                    "8M",
                    "--json",
                ],
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["pool"], POOL, "the shared disk's pool: {report}");
            let (volume, attached) =
                hot::find_hot(&conn, &uri, DOMAIN, &HotSelect::default()).unwrap();
            assert_eq!(attached.unwrap().volume, report["volume"].as_str().unwrap());
            to_start.push(wait_started(&volume) - sent);
            cli(&uri, &["wait", "--hot", DOMAIN, "--quiet"]);
            let ended = Instant::now();
            let out = cli(&uri, &["detach", "--hot", DOMAIN, "--json"]);
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["released_by_guest"], true, "{report}");
            assert_eq!(report["detached"], true, "{report}");
            let tar = work.path().join("out.tar");
            cli(&uri, &["download", "--hot", DOMAIN, tar.to_str().unwrap()]);
            to_results.push(ended.elapsed());
            let mut files = BTreeMap::new();
            for entry in tar::Archive::new(std::fs::File::open(&tar).unwrap())
                .entries()
                .unwrap()
            {
                let mut entry = entry.unwrap();
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
                files.insert(
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    content,
                );
            }
            assert_eq!(text(&files, "runs.txt"), "run\n", "job {i} ran once");
            assert_eq!(text(&files, "result.txt"), format!("{tag}\n"));
            volume
        } else {
            let attached = hot::attach(conn.clone(), &uri, DOMAIN, &job(&tag, "")[..], &options)
                .unwrap_or_else(|e| panic!("job {i}: {e}"));
            assert!(attached.created);
            let volume =
                HotVolume::open(conn.clone(), &uri, &attached.pool, &attached.volume).unwrap();
            assert!(volume.is_busy().unwrap());
            to_start.push(wait_started(&volume) - sent);
            let record = wait_done(&volume);
            let ended = Instant::now();
            assert_eq!(record.state, RunState::Exited(0), "job {i}");
            let detached = hot::detach(&conn, &uri, DOMAIN, &HotDetachOptions::default()).unwrap();
            assert!(
                detached.detach.released_by_guest
                    && detached.detach.detached
                    && !detached.detach.record_written
                    && !detached.removed,
                "job {i}: {detached:?}"
            );
            assert_eq!(detached.volume, attached.volume);
            let got = download_files(&volume).unwrap();
            to_results.push(ended.elapsed());
            assert_eq!(text(&got, "runs.txt"), "run\n", "job {i} ran once");
            assert_eq!(text(&got, "result.txt"), format!("{tag}\n"));
            assert_eq!(text(&got, "nlxtp/stdout.txt"), format!("{tag}\n"));
            volume
        };
        assert!(!volume.is_busy().unwrap(), "job {i}: still attached");
        volumes.push(volume.name().to_owned());
    }

    // A job the domain still has: an upload into its volume is refused, nothing written.
    let attached = hot::attach(
        conn.clone(),
        &uri,
        DOMAIN,
        &job("long", "echo started; sleep 300")[..],
        &options,
    )
    .unwrap();
    let volume = HotVolume::open(conn.clone(), &uri, &attached.pool, &attached.volume).unwrap();
    wait_started(&volume);
    let path = pool_dir.join(&attached.volume);
    let before = std::fs::read(&path).unwrap();
    let again = HotOptions {
        volume: Some(attached.volume.clone()),
        ..options.clone()
    };
    let refused = HotJob::prepare(conn.clone(), &uri, DOMAIN, &again);
    assert!(
        matches!(refused, Err(HotVolumeError::StillAttached { .. })),
        "{refused:?}"
    );
    match volume.replace(Vec::new()) {
        Err(AreaError::Busy { .. }) => {}
        other => panic!("a replace of an attached hot volume was not refused: {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // A second job attached beside it: "the hot disk" is ambiguous now.
    let second = hot::attach(
        conn.clone(),
        &uri,
        DOMAIN,
        &job("after", "sleep 1")[..],
        &options,
    )
    .unwrap();
    let ambiguous = hot::find_hot(&conn, &uri, DOMAIN, &HotSelect::default());
    assert!(
        matches!(
            ambiguous,
            Err(HotVolumeError::SeveralHotDisks { count: 2, .. })
        ),
        "{ambiguous:?}"
    );

    // Taken away while the script runs: the record says so.
    let forced = HotDetachOptions {
        select: HotSelect {
            volume: Some(attached.volume.clone()),
            pool: None,
        },
        detach: DetachOptions {
            force: true,
            ..DetachOptions::default()
        },
        ..HotDetachOptions::default()
    };
    let detached = hot::detach(&conn, &uri, DOMAIN, &forced).unwrap();
    assert!(
        detached.detach.detached
            && !detached.detach.released_by_guest
            && detached.detach.record_written,
        "{detached:?}"
    );
    // The slot went in at its offset: the volume keeps its size (and its files, below).
    assert_eq!(std::fs::metadata(&path).unwrap().len(), HOT_SIZE);
    let record = ops::status(&volume).unwrap().record.expect("a record");
    assert_eq!(
        record.description,
        RunState::Aborted(AbortReason::Detached).to_string()
    );
    let got = download_files(&volume).unwrap();
    assert_eq!(text(&got, "runs.txt"), "run\n");

    // The guest survives it and runs the other job to its end.
    let attached = second;
    let next = HotVolume::open(conn.clone(), &uri, &attached.pool, &attached.volume).unwrap();
    assert_eq!(wait_done(&next).state, RunState::Exited(0));
    let removed = hot::detach(
        &conn,
        &uri,
        DOMAIN,
        &HotDetachOptions {
            remove: true,
            ..HotDetachOptions::default()
        },
    )
    .unwrap();
    assert!(
        removed.detach.released_by_guest && removed.removed,
        "{removed:?}"
    );
    assert!(!pool_dir.join(&attached.volume).exists());

    // A kept volume goes later, by name, through the command line.
    cli(
        &uri,
        &[
            "detach",
            "--hot",
            DOMAIN,
            "--volume",
            &volumes[0],
            "--remove",
        ],
    );
    assert!(!pool_dir.join(&volumes[0]).exists());

    // One boot all along.
    let log = std::fs::read_to_string(&serial).unwrap();
    assert_eq!(log.matches("nlxtp-init: booted").count(), 1);
    eprintln!(
        "libvirt hot jobs over qemu+tcp: host command to script start, median {:?} (max {:?}); \
         script end to results downloaded, median {:?} (max {:?})",
        median(to_start.clone()),
        to_start.iter().max().unwrap(),
        median(to_results.clone()),
        to_results.iter().max().unwrap(),
    );
}
