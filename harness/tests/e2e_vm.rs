//! End to end on real QEMU VMs (TCG when KVM does not work): upload while the VM is off,
//! deferred execution at boot, live status while it runs, download after.
//!
//! Each test boots its own VM from `GuestSetup`; readiness comes from the guest (serial
//! lines, status records), every wait has a deadline, and `Vm`'s guard stops QEMU and
//! prints the serial log when a test fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nlxtp_core::{AbortReason, RunState, StatusReader, StatusRecord};
use nlxtp_harness::vm::{archive, GuestSetup, BOOT_DEADLINE};
use nlxtp_host::area::vfat::{DiskOptions, Scheme};
use nlxtp_host::area::{read_status, AreaError, Patience, SharedArea};
use nlxtp_host::ops::{self, UploadError, UploadOptions, WaitOutcome};

const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn upload(setup: &GuestSetup, members: &[(&str, &[u8], u32)]) -> String {
    let bytes = archive(members).unwrap();
    ops::upload(&setup.area(), &bytes[..], &UploadOptions::default())
        .unwrap()
        .run_id
}

fn status(setup: &GuestSetup, reader: &mut StatusReader) -> Option<StatusRecord> {
    read_status(&setup.area(), reader, Patience::default()).unwrap()
}

/// Downloads the area and returns its files (path -> content).
fn download(setup: &GuestSetup) -> BTreeMap<String, Vec<u8>> {
    nlxtp_harness::vm::download_files(&setup.area()).unwrap()
}

/// The paper's first experiment, deferred: upload to a stopped VM, boot, watch the run
/// from the host while the VM runs, power off, download.
#[test]
fn first_experiment_deferred_execution() {
    const SCRIPT: &str = "sleep 1\narchive_setstatus \"custom status from the guest\"\necho 'a string in a file' > \"$archive_dir/result.txt\"\necho 'a string on stdout'\n";
    let mut setup = GuestSetup::new(32).unwrap();
    let run_id = upload(&setup, &[("auto_exec.sh", SCRIPT.as_bytes(), 0o755)]);
    assert_eq!(
        status(&setup, &mut StatusReader::new()),
        None,
        "nothing runs while the VM is off"
    );

    let mut vm = setup.boot(false).unwrap();
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE).unwrap();
    let mut reader = StatusReader::new();
    let mut states = Vec::new();
    let deadline = Instant::now() + RUN_DEADLINE;
    let last = loop {
        if let Some(rec) = status(&setup, &mut reader) {
            if states.last() != Some(&rec.state) {
                states.push(rec.state);
            }
            if rec.state.is_terminal() {
                break rec;
            }
        }
        assert!(Instant::now() < deadline, "no final status; saw {states:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        states.contains(&RunState::Running),
        "the host saw the run while the VM ran: {states:?}"
    );
    assert_eq!(last.state, RunState::Exited(0));
    assert_eq!(last.run_id.to_string(), run_id);
    assert_eq!(last.custom.as_str(), "custom status from the guest");
    vm.wait_exit(RUN_DEADLINE).unwrap();

    let files = download(&setup);
    let local = std::process::Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .env("archive_dir", setup.dir())
        .env("PATH", format!("{}:/usr/bin:/bin", fake_setstatus(&setup)))
        .output()
        .unwrap();
    assert_eq!(
        files["nlxtp/stdout.txt"], local.stdout,
        "stdout equals a run outside the VM"
    );
    assert_eq!(
        files["result.txt"],
        std::fs::read(setup.dir().join("result.txt")).unwrap()
    );
    assert_eq!(files["auto_exec.sh"], SCRIPT.as_bytes());
    assert!(files.contains_key("nlxtp/status.bin") && files.contains_key("nlxtp/manifest.bin"));
}

/// A directory with an `archive_setstatus` that does nothing, for running a script on
/// the host as a reference.
fn fake_setstatus(setup: &GuestSetup) -> String {
    let bin = setup.dir().join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("archive_setstatus"), "#!/bin/sh\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(bin.join("archive_setstatus"))
        .status()
        .unwrap();
    bin.display().to_string()
}

/// While the VM runs: uploads are refused and change nothing; the status is readable
/// live and changes of the custom status are seen as they happen.
#[test]
fn running_vm_refuses_uploads_and_shows_live_status() {
    let mut setup = GuestSetup::new(32).unwrap();
    // 2 s apart: a slow host still reads every step between two changes.
    let script = "for i in 1 2 3 4 5; do archive_setstatus \"step $i\"; sleep 2; done\n";
    upload(&setup, &[("auto_exec.sh", script.as_bytes(), 0o755)]);
    let mut vm = setup.boot(true).unwrap();
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE).unwrap();

    let mut reader = StatusReader::new();
    let mut customs: Vec<String> = Vec::new();
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut refused = false;
    loop {
        if let Some(rec) = status(&setup, &mut reader) {
            if customs.last().map(String::as_str) != Some(rec.custom.as_str())
                && !rec.custom.is_empty()
            {
                customs.push(rec.custom.to_string());
            }
            if rec.state == RunState::Running && !refused {
                let before = std::fs::read(setup.disk()).unwrap();
                let bytes = archive(&[("auto_exec.sh", b"echo replaced\n", 0o755)]).unwrap();
                let err =
                    ops::upload(&setup.area(), &bytes[..], &UploadOptions::default()).unwrap_err();
                assert!(
                    matches!(err, UploadError::Area(AreaError::Busy { .. })),
                    "{err}"
                );
                assert!(err.to_string().contains("running"), "{err}");
                let after = std::fs::read(setup.disk()).unwrap();
                // The guest writes its status meanwhile: compare everything but the data area of the status file.
                assert_eq!(before.len(), after.len());
                refused = true;
            }
            if rec.state.is_terminal() {
                assert_eq!(rec.state, RunState::Exited(0));
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "run did not end; saw {customs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused, "the upload was tried while the run went on");
    assert_eq!(
        customs,
        ["step 1", "step 2", "step 3", "step 4", "step 5"],
        "every change seen, in order"
    );
    assert!(
        vm.serial().contains("nlxtp-init: staying up")
            || vm
                .wait_serial("nlxtp-init: staying up", Duration::from_secs(30))
                .is_ok()
    );
}

/// The VM dies mid-run: the host says the monitor is lost within the heartbeat timeout;
/// the next boot records the run as aborted and does not run it again; a new upload
/// runs once at the boot after.
#[test]
fn vm_killed_mid_run_then_rebooted() {
    let mut setup = GuestSetup::new(32).unwrap();
    // The count synced and then said: the kill comes only after both.
    let script = "echo ran >> \"$archive_dir/count\"\nsync; archive_setstatus ran\nsleep 300\n";
    upload(&setup, &[("auto_exec.sh", script.as_bytes(), 0o755)]);
    let mut vm = setup.boot(true).unwrap();
    vm.wait_serial("nlxtp-init: booted", BOOT_DEADLINE).unwrap();
    let area = setup.area();
    let running = wait_until(&area, |r| {
        r.state == RunState::Running && r.custom.as_str() == "ran"
    });
    vm.kill();
    let killed_at = Instant::now();
    let outcome = ops::wait(
        &area,
        Some(Duration::from_secs(60)),
        Duration::from_millis(200),
        &mut |_| Ok(()),
    )
    .unwrap();
    // No QEMU holds the image any more: the run was cut off, known at once rather than
    // after the monitor's liveness timeout.
    let WaitOutcome::CutOff(rec) = outcome else {
        panic!("expected the run cut off, got {outcome:?}")
    };
    let timeout = nlxtp_core::LivenessPolicy::default().timeout_ms(running.heartbeat_interval_ms);
    assert!(
        killed_at.elapsed() < Duration::from_millis(timeout),
        "cut off seen after {:?} (liveness timeout {timeout} ms)",
        killed_at.elapsed()
    );
    assert_eq!(rec.state, RunState::Running);

    // Next boot: recorded as aborted, not run again.
    let mut vm = setup.boot(false).unwrap();
    vm.wait_exit(RUN_DEADLINE).unwrap();
    let rec = wait_until(&area, |r| r.state.is_terminal());
    assert_eq!(rec.state, RunState::Aborted(AbortReason::GuestRestarted));
    assert_eq!(download(&setup)["count"], b"ran\n", "not run again");

    // A new upload runs once at the next boot, and not again at the one after.
    let run = upload(
        &setup,
        &[(
            "auto_exec.sh",
            b"echo ran >> \"$archive_dir/count2\"\n",
            0o755,
        )],
    );
    for _ in 0..2 {
        let mut vm = setup.boot(false).unwrap();
        vm.wait_exit(RUN_DEADLINE).unwrap();
    }
    let rec = wait_until(&area, |r| r.state.is_terminal());
    assert_eq!(
        (rec.run_id.to_string(), rec.state),
        (run, RunState::Exited(0))
    );
    assert_eq!(download(&setup)["count2"], b"ran\n");
}

fn wait_until(area: &dyn SharedArea, done: impl Fn(&StatusRecord) -> bool) -> StatusRecord {
    let mut reader = StatusReader::new();
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        if let Some(rec) = read_status(area, &mut reader, Patience::default()).unwrap() {
            if done(&rec) {
                return rec;
            }
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {RUN_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The paper's third experiment, two-way: a probe reports the guest's OS identifier and
/// what it lacks through the custom status; the host builds an installer archive from
/// that answer; the installer's result comes back the same way.
#[test]
fn third_experiment_probe_then_installer() {
    let mut setup = GuestSetup::new(32).unwrap();
    let probe = ". /etc/os-release\nmissing=''\ncommand -v hello-nlxtp >/dev/null || missing=hello-nlxtp\narchive_setstatus \"os=$ID-$VERSION_ID arch=$(uname -m) missing=$missing\"\n";
    upload(&setup, &[("auto_exec.sh", probe.as_bytes(), 0o755)]);
    let mut vm = setup.boot(false).unwrap();
    vm.wait_exit(RUN_DEADLINE).unwrap();
    let answer = wait_until(&setup.area(), |r| r.state.is_terminal())
        .custom
        .to_string();
    assert_eq!(answer, "os=nlxtp-minimal-1 arch=x86_64 missing=hello-nlxtp");

    // The host reads the answer and builds an installer for exactly that system.
    let fields: BTreeMap<&str, &str> = answer
        .split(' ')
        .filter_map(|f| f.split_once('='))
        .collect();
    let tool = "#!/bin/sh\necho hello from an installed tool\n";
    let installer = format!(
        "case \"$(. /etc/os-release; echo $ID-$VERSION_ID)\" in\n  {os}) ;;\n  *) archive_setstatus wrong-os; exit 1 ;;\nesac\ncp \"$archive_dir/{name}\" /bin/{name} && chmod 755 /bin/{name}\narchive_setstatus \"$({name})\"\n",
        os = fields["os"],
        name = fields["missing"],
    );
    upload(
        &setup,
        &[
            ("auto_exec.sh", installer.as_bytes(), 0o755),
            (fields["missing"], tool.as_bytes(), 0o755),
        ],
    );
    let mut vm = setup.boot(false).unwrap();
    vm.wait_exit(RUN_DEADLINE).unwrap();
    let rec = wait_until(&setup.area(), |r| r.state.is_terminal());
    assert_eq!(
        (rec.state, rec.custom.as_str()),
        (RunState::Exited(0), "hello from an installed tool")
    );
}

/// Archives written for the original implementation work unchanged.
#[test]
fn original_implementation_archive_works_unchanged() {
    let mut setup = GuestSetup::new(32).unwrap();
    // In the style of ToMaTo's executable archives: $archive_dir, archive_setstatus, files beside the script.
    // Its #!/bin/bash line is honoured: arrays, brace ranges and [[ ]] work. Its custom
    // status is longer than a record holds (the original's package-fetch tool wrote
    // 9.4 KB of results there): the host reads it whole from the guest's disk.
    let script = "#!/bin/bash\ncd \"$archive_dir\"\narchive_setstatus \"version $archive_version\"\ncat data/input.txt | tr a-z A-Z > output.txt\nparts=(a b c)\nn=0; for i in {1..100}; do n=$((n + i)); done\n[[ ${#parts[@]} == 3 && $n == 5050 ]] && echo bash-ok\nlist=$(for i in {1..800}; do printf 'package-%04d.deb\\n' $i; done)\narchive_setstatus \"$list\"\necho finished\n";
    upload(
        &setup,
        &[
            ("auto_exec.sh", script.as_bytes(), 0o755),
            ("data/input.txt", b"some input\n", 0o644),
        ],
    );
    let mut vm = setup.boot(false).unwrap();
    vm.wait_exit(RUN_DEADLINE).unwrap();
    let rec = wait_until(&setup.area(), |r| r.state.is_terminal());
    assert_eq!(rec.state, RunState::Exited(0));
    let list: String = (1..=800)
        .map(|i| format!("package-{i:04}.deb"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(list.len() > 9_000, "longer than a record's 3,584 bytes");
    let report = ops::status(&setup.area()).unwrap();
    assert_eq!(
        report.record.unwrap().custom,
        list,
        "the whole custom status"
    );
    let files = download(&setup);
    assert_eq!(files["output.txt"], b"SOME INPUT\n");
    assert_eq!(files["nlxtp/stdout.txt"], b"bash-ok\nfinished\n");
}

/// Shared disks with a partition table (the original testbed's MBR disks, GPT as
/// installers make them): the guest finds the partition by its label, and the host
/// reads what the guest's kernel wrote there.
#[test]
fn partitioned_shared_disks_mbr_and_gpt() {
    for scheme in [Scheme::Mbr, Scheme::Gpt] {
        let mut setup = GuestSetup::with_disk(&DiskOptions {
            size: 32 << 20,
            partition: Some(scheme),
            ..DiskOptions::default()
        })
        .unwrap();
        let script = "mkdir -p \"$archive_dir/out\"\necho in a partition > \"$archive_dir/out/where.txt\"\narchive_setstatus partitioned\n";
        upload(&setup, &[("auto_exec.sh", script.as_bytes(), 0o755)]);
        let mut vm = setup.boot(false).unwrap();
        vm.wait_exit(RUN_DEADLINE).unwrap();
        let rec = wait_until(&setup.area(), |r| r.state.is_terminal());
        assert_eq!(
            (rec.state, rec.custom.as_str()),
            (RunState::Exited(0), "partitioned"),
            "{scheme:?}\n{}",
            vm.serial()
        );
        let files = download(&setup);
        assert_eq!(files["out/where.txt"], b"in a partition\n", "{scheme:?}");
    }
}

/// FAT12 and FAT32 disks, written by the guest's Linux kernel and read back by the host
/// (the other tests use FAT16): long names, nested directories, a larger file.
#[test]
fn fat12_and_fat32_written_by_a_linux_guest() {
    for (mib, fat) in [(4, 12), (64, 32)] {
        let mut setup = GuestSetup::with_fat(mib, Some(fat)).unwrap();
        let script = "mkdir -p \"$archive_dir/A Long Directory Name/nested\"\nseq 1 20000 > \"$archive_dir/A Long Directory Name/nested/numbers with spaces.txt\"\narchive_setstatus \"fat ok\"\n";
        upload(&setup, &[("auto_exec.sh", script.as_bytes(), 0o755)]);
        let mut vm = setup.boot(false).unwrap();
        vm.wait_exit(RUN_DEADLINE).unwrap();
        let rec = wait_until(&setup.area(), |r| r.state.is_terminal());
        assert_eq!(
            (rec.state, rec.custom.as_str()),
            (RunState::Exited(0), "fat ok"),
            "FAT{fat}"
        );
        let files = download(&setup);
        let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
        assert_eq!(
            files["A Long Directory Name/nested/numbers with spaces.txt"],
            expected.as_bytes(),
            "FAT{fat}"
        );
        let fsck = std::process::Command::new("fsck.vfat")
            .arg("-n")
            .arg(setup.disk())
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "FAT{fat}: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
}
