//! Jobs for a running VM (issue 15), end to end on real QEMU: the host writes a job into
//! a hot disk (label NLXTP-HOT), plugs it into the running VM over QMP, the guest's
//! hot-plug watcher mounts it, runs the job once, unmounts it and marks it released; the
//! host unplugs it and reads the results. No reboot, no agent channel.
//!
//! Every job appends a line to `runs.txt` on its own disk: one line is "ran exactly
//! once".

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nlxtp_core::{AbortReason, RunState, StatusRecord};
use nlxtp_harness::jobs::{self, median};
use nlxtp_harness::qemu::Vm;
use nlxtp_harness::vm::{archive, download_files, GuestSetup, BOOT_DEADLINE};
use nlxtp_host::area::{AreaError, SharedArea};
use nlxtp_host::ops::hot::{self, AttachOptions, DetachOptions, HotDisk, HotError};
use nlxtp_host::ops::{self, UploadError, UploadOptions};
use nlxtp_host::vm::Qmp;

const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// Hot disks are small: the job and its results.
const HOT_SIZE: u64 = 8 << 20;

fn options() -> AttachOptions {
    AttachOptions {
        size: HOT_SIZE,
        ..AttachOptions::default()
    }
}

/// A job that records its run on its own disk, prints `tag`, leaves `tag` in
/// result.txt and exits with `code`; `extra` runs first.
fn job(tag: &str, code: u8, extra: &str) -> Vec<u8> {
    let script = format!(
        "#!/bin/sh\necho run >> runs.txt\n{extra}\necho {tag}\necho {tag} > result.txt\nexit {code}\n"
    );
    archive(&[("auto_exec.sh", script.as_bytes(), 0o755)]).unwrap()
}

/// A VM booted once that stays up, with its QMP connection.
fn boot_hot(setup: &mut GuestSetup) -> (Vm, Qmp) {
    let mut vm = setup.boot_hot().unwrap();
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE).unwrap();
    let qmp = vm.qmp().unwrap();
    (vm, qmp)
}

fn wait_done(area: &dyn SharedArea) -> StatusRecord {
    jobs::wait_done(area, RUN_DEADLINE).unwrap()
}

fn wait_started(area: &dyn SharedArea) -> Instant {
    jobs::wait_started(area, RUN_DEADLINE).unwrap()
}

/// Waits until the run's custom status reads `text`: the script has got that far (a
/// started run's record comes before the script's first line).
fn wait_custom(area: &dyn SharedArea, text: &str) {
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        let report = ops::status(area).unwrap();
        if report.record.as_ref().is_some_and(|r| r.custom == text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the custom status never read {text:?}: {report:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn files(area: &dyn SharedArea) -> BTreeMap<String, Vec<u8>> {
    download_files(area).unwrap()
}

fn text(files: &BTreeMap<String, Vec<u8>>, name: &str) -> String {
    jobs::text(files, name).unwrap()
}

fn hot_image(setup: &GuestSetup, name: &str) -> PathBuf {
    setup.dir().join(name)
}

/// A VM booted once runs 20 jobs in a row by hot-plug, on one disk image used again and
/// again: each runs exactly once, each is downloaded with its outputs, and the guest
/// never sees an earlier job's content (QEMU's node is deleted at every detach).
#[test]
fn twenty_jobs_in_a_row_without_a_reboot() {
    let mut setup = GuestSetup::new(16).unwrap();
    let (mut vm, mut qmp) = boot_hot(&mut setup);
    let image = hot_image(&setup, "hot.img");
    let mut to_start = Vec::new();
    let mut to_results = Vec::new();
    for i in 0..20u8 {
        let tag = format!("job-{i}");
        let sent = Instant::now();
        let attached = hot::attach(&mut qmp, &image, &job(&tag, i % 4, "")[..], &options())
            .unwrap_or_else(|e| panic!("job {i}: {e}"));
        assert_eq!(attached.created, i == 0);
        let disk = HotDisk::open(&image).unwrap();
        to_start.push(wait_started(disk.area()) - sent);
        let record = wait_done(disk.area());
        let ended = Instant::now();
        assert_eq!(record.state, RunState::Exited(i32::from(i % 4)), "job {i}");
        assert_eq!(
            Some(record.run_id.to_string()),
            attached.upload.map(|u| u.run_id)
        );
        let detached = disk.detach(&mut qmp, &DetachOptions::default()).unwrap();
        assert!(
            detached.released_by_guest && detached.detached && !detached.record_written,
            "job {i}: {detached:?}"
        );
        let got = files(disk.area());
        to_results.push(ended.elapsed());
        assert_eq!(text(&got, "runs.txt"), "run\n", "job {i} ran once");
        assert_eq!(text(&got, "result.txt"), format!("{tag}\n"));
        assert_eq!(text(&got, "nlxtp/stdout.txt"), format!("{tag}\n"));
    }
    // The VM was up all along: one boot.
    assert_eq!(vm.serial().matches("nlxtp-init: booted").count(), 1);
    eprintln!(
        "20 hot jobs: host command to script start, median {:?} (max {:?}); script end to results downloaded, median {:?} (max {:?}); VM up {:?}",
        median(to_start.clone()),
        to_start.iter().max().unwrap(),
        median(to_results.clone()),
        to_results.iter().max().unwrap(),
        vm.uptime()
    );
    vm.stop();
}

/// Two disks attached at the same time: both jobs run (side by side), each once.
#[test]
fn two_jobs_attached_at_once() {
    let mut setup = GuestSetup::new(16).unwrap();
    let (mut vm, mut qmp) = boot_hot(&mut setup);
    let images = [hot_image(&setup, "a.img"), hot_image(&setup, "b.img")];
    for (image, tag) in images.iter().zip(["left", "right"]) {
        // Both are plugged before either has ended: they run side by side.
        hot::attach(&mut qmp, image, &job(tag, 0, "sleep 2")[..], &options()).unwrap();
    }
    for (image, tag) in images.iter().zip(["left", "right"]) {
        let disk = HotDisk::open(image).unwrap();
        let record = wait_done(disk.area());
        assert_eq!(record.state, RunState::Exited(0));
        let detached = disk.detach(&mut qmp, &DetachOptions::default()).unwrap();
        assert!(detached.released_by_guest, "{detached:?}");
        let got = files(disk.area());
        assert_eq!(text(&got, "runs.txt"), "run\n");
        assert_eq!(text(&got, "result.txt"), format!("{tag}\n"));
    }
    vm.stop();
}

/// A disk the VM still holds takes no upload; a detach while the script runs (the
/// host's forced path) takes it anyway and leaves a record that says so; the guest
/// survives it and runs the next job.
#[test]
fn held_disk_refuses_uploads_and_a_forced_detach_is_recorded() {
    let mut setup = GuestSetup::new(16).unwrap();
    let (mut vm, mut qmp) = boot_hot(&mut setup);
    let image = hot_image(&setup, "busy.img");
    hot::attach(
        &mut qmp,
        &image,
        // runs.txt synced before the status says so: the forced detach below comes
        // after it, so the line is on the disk the host takes.
        &job(
            "never",
            0,
            "echo started; sync; archive_setstatus synced; sleep 300",
        )[..],
        &options(),
    )
    .unwrap();
    let disk = HotDisk::open(&image).unwrap();
    wait_custom(disk.area(), "synced");
    let before = std::fs::read(&image).unwrap();

    let refused = hot::attach(&mut qmp, &image, &job("second", 0, "")[..], &options());
    assert!(
        matches!(refused, Err(HotError::StillAttached { .. })),
        "{refused:?}"
    );
    let plain = ops::upload(
        disk.area(),
        &job("third", 0, "")[..],
        &UploadOptions::default(),
    );
    assert!(
        matches!(plain, Err(UploadError::Area(AreaError::Busy { .. }))),
        "{plain:?}"
    );

    let forced = DetachOptions {
        force: true,
        ..DetachOptions::default()
    };
    let detached = disk.detach(&mut qmp, &forced).unwrap();
    assert!(
        detached.detached && !detached.released_by_guest && detached.record_written,
        "{detached:?}"
    );
    let report = ops::status(disk.area()).unwrap();
    let record = report.record.expect("a record");
    assert_eq!(
        record.description,
        RunState::Aborted(AbortReason::Detached).to_string()
    );
    assert_ne!(std::fs::read(&image).unwrap(), before);
    let got = files(disk.area());
    assert_eq!(text(&got, "runs.txt"), "run\n");

    // The guest lets the gone disk go and takes the next one.
    let next = hot_image(&setup, "next.img");
    hot::attach(&mut qmp, &next, &job("after", 0, "")[..], &options()).unwrap();
    let disk = HotDisk::open(&next).unwrap();
    assert_eq!(wait_done(disk.area()).state, RunState::Exited(0));
    assert!(
        disk.detach(&mut qmp, &DetachOptions::default())
            .unwrap()
            .released_by_guest
    );
    vm.stop();
}

/// kill -9 of QEMU while a hot disk's job runs; the disk plugged into the next boot as
/// it is: the run is recorded as aborted, never run again.
#[test]
fn a_killed_vm_leaves_an_aborted_run_that_never_runs_again() {
    let mut setup = GuestSetup::new(16).unwrap();
    let (mut vm, mut qmp) = boot_hot(&mut setup);
    let image = hot_image(&setup, "crash.img");
    hot::attach(
        &mut qmp,
        &image,
        // Synced, so that the kill cannot take the line with it: one line after the
        // next boot is "not run again". The kill waits until the status says so.
        &job("crash", 0, "sync; archive_setstatus synced; sleep 300")[..],
        &options(),
    )
    .unwrap();
    let disk = HotDisk::open(&image).unwrap();
    wait_custom(disk.area(), "synced");
    vm.kill();
    drop(qmp);
    let report = ops::status(disk.area()).unwrap();
    assert!(matches!(report.monitor, ops::Monitor::CutOff), "{report:?}");

    let (mut vm, mut qmp) = boot_hot(&mut setup);
    disk.attach(&mut qmp, None).unwrap();
    let record = wait_done(disk.area());
    assert_eq!(record.state, RunState::Aborted(AbortReason::GuestRestarted));
    let detached = disk.detach(&mut qmp, &DetachOptions::default()).unwrap();
    assert!(detached.released_by_guest, "{detached:?}");
    assert_eq!(text(&files(disk.area()), "runs.txt"), "run\n");
    vm.stop();
}

/// A guest that ignores the disk (its watcher is gone): the detach waits its bounded
/// time, takes the disk anyway and says the guest never released it; the job never ran.
#[test]
fn a_guest_that_ignores_the_disk() {
    let mut setup = GuestSetup::new(16).unwrap();
    // The boot-time job stops the guest's hot-plug watcher.
    let stop_watcher = archive(&[(
        "auto_exec.sh",
        // The watcher starts beside the boot daemon: wait until it is there to stop.
        // (busybox has no pkill).
        b"#!/bin/sh\nfor i in $(seq 100); do\n  pids=$(ps -o pid,args | grep '[n]lxtp-guest hotplug' | awk '{print $1}')\n  [ -n \"$pids\" ] && kill -KILL $pids && exit 0\n  sleep 0.1\ndone\nexit 1\n",
        0o755,
    )])
    .unwrap();
    ops::upload(&setup.area(), &stop_watcher[..], &UploadOptions::default()).unwrap();
    let (mut vm, mut qmp) = boot_hot(&mut setup);
    let record = wait_done(&setup.area());
    assert_eq!(record.state, RunState::Exited(0));
    let image = hot_image(&setup, "ignored.img");
    hot::attach(&mut qmp, &image, &job("ignored", 0, "")[..], &options()).unwrap();
    let waited = DetachOptions {
        timeout: Duration::from_secs(3),
        ..DetachOptions::default()
    };
    let start = Instant::now();
    let detached = hot::detach(&mut qmp, &image, &waited).unwrap();
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(
        detached.detached && !detached.released_by_guest && !detached.record_written,
        "{detached:?}"
    );
    assert!(detached.waited_ms >= 3000);
    let disk = HotDisk::open(&image).unwrap();
    let report = ops::status(disk.area()).unwrap();
    assert!(
        report.record.is_none() && report.upload_present,
        "{report:?}"
    );
    assert!(!files(disk.area()).contains_key("runs.txt"));
    vm.stop();
}

/// The cycle as a user types it, with the `nlxtp` binary: `upload --hot`, `wait` (exit
/// code of the job), `logs`, `detach --json`, `download`; the socket from `$NLXTP_QMP`
/// for `detach`.
#[test]
fn the_hot_cycle_with_the_cli() {
    let mut setup = GuestSetup::new(16).unwrap();
    let (mut vm, qmp) = boot_hot(&mut setup);
    drop(qmp); // QEMU serves one QMP client at a time.
    let socket = vm.qmp_socket().unwrap().to_owned();
    let nlxtp = nlxtp_harness::host_binary("nlxtp", "").unwrap();
    let image = hot_image(&setup, "cli.img");
    let job_file = setup.dir().join("job.tar.gz");
    std::fs::write(&job_file, job("from the cli", 7, "")).unwrap();
    let run = |args: &[&std::ffi::OsStr], env_qmp: bool| {
        let mut command = std::process::Command::new(&nlxtp);
        command.args(args);
        if env_qmp {
            command.env("NLXTP_QMP", &socket);
        }
        command.output().unwrap()
    };
    let os = |s: &str| std::ffi::OsStr::new(s).to_owned();
    let up = run(
        &[
            &os("upload"),
            &os("--hot"),
            &os("--qmp"),
            socket.as_os_str(),
            &os("--size"),
            &os("8M"),
            image.as_os_str(),
            job_file.as_os_str(),
        ],
        false,
    );
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let waited = run(
        &[&os("wait"), &os("--timeout"), &os("120"), image.as_os_str()],
        false,
    );
    assert_eq!(
        waited.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let logs = run(&[&os("logs"), image.as_os_str()], false);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "from the cli\n");
    let detached = run(&[&os("detach"), &os("--json"), image.as_os_str()], true);
    assert!(
        detached.status.success(),
        "{}",
        String::from_utf8_lossy(&detached.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&detached.stdout).unwrap();
    assert_eq!(report["released_by_guest"], true, "{report}");
    assert_eq!(report["detached"], true, "{report}");
    let results = setup.dir().join("results.tar.gz");
    let down = run(
        &[&os("download"), image.as_os_str(), results.as_os_str()],
        false,
    );
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let list = std::process::Command::new("tar")
        .arg("tzf")
        .arg(&results)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("result.txt") && list.contains("runs.txt"),
        "{list}"
    );
    vm.stop();
}
