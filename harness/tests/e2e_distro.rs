//! End to end on booted Debian 12 systems, one with systemd and one with SysV init
//! (`sysvinit-core`), each with nlxtp-guest installed by the steps in
//! `guest-min/dist/README.md` (see `nlxtp_harness::distro`).
//!
//! One test per init system; each is a sequence of boots of one guest (its root disk
//! kept across them, like a real VM's), sharing boots where one boot can prove several
//! things:
//!
//! 1. upload, run at boot: exit code and custom status; a process the script leaves
//!    running still runs after the run has ended; the daemon's log lines; a poweroff
//!    then unmounts the shared disk cleanly;
//! 2. a reboot with no new upload runs nothing (exactly once);
//! 3. `systemctl stop` / `service nlxtp-guest stop` during a run: a final record, written
//!    before the script got its SIGTERM;
//! 4. poweroff during a run: the same, and a clean unmount;
//! 5. QEMU killed (SIGKILL) during a run, then booted: aborted, not run again.
//!
//! Readiness comes from the guest: the test agent's "ready" line on the second serial
//! port, the status record on the shared disk, QEMU's exit after a poweroff. Every wait
//! has a deadline; a failed test prints the console and the agent's port.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nlxtp_core::{AbortReason, RunState, StatusReader, StatusRecord};
use nlxtp_harness::distro::{DistroGuest, DistroVm, Init};
use nlxtp_harness::vm::archive;
use nlxtp_host::area::{read_status, Patience};
use nlxtp_host::ops::{self, UploadOptions};

/// Boot to the agent's "ready" under TCG on a busy machine (about 16-20 s when idle).
const BOOT: Duration = Duration::from_secs(180);
/// A script's run, a stop, a poweroff.
const RUN: Duration = Duration::from_secs(120);

#[test]
fn debian_systemd() {
    cycle(Init::Systemd);
}

#[test]
fn debian_sysvinit() {
    cycle(Init::Sysvinit);
}

fn cycle(init: Init) {
    let started = Instant::now();
    let mut guest = DistroGuest::new(init, 32).unwrap();
    report(init, "image ready", started);
    run_at_boot(&mut guest);
    report(
        init,
        "1. run at boot, background process, clean poweroff",
        started,
    );
    exactly_once_across_a_reboot(&mut guest);
    report(init, "2. reboot: nothing runs again", started);
    stop_during_a_run(&mut guest);
    report(init, "3. service stop during a run", started);
    poweroff_during_a_run(&mut guest);
    report(init, "4. poweroff during a run", started);
    killed_then_booted(&mut guest);
    report(init, "5. QEMU killed, then booted: aborted", started);
}

fn report(init: Init, step: &str, since: Instant) {
    eprintln!(
        "[{}] {step}: done at {:.1} s",
        init.name(),
        since.elapsed().as_secs_f64()
    );
}

/// Boot 1: the whole cycle of a plain run, with a process left running.
fn run_at_boot(guest: &mut DistroGuest) {
    let script = r#"read start _ </proc/uptime
echo "script start uptime $start"
echo ran >> "$archive_dir/count"
. /etc/os-release
archive_setstatus "custom status from $ID-$VERSION_ID"
# A service the script starts and leaves running (cwd on the shared disk, as it would be).
sleep 1000 </dev/null >/dev/null 2>&1 &
echo $! > /run/nlxtp-test-bg.pid
exit 3
"#;
    upload(guest, script);
    let mut vm = guest.boot().unwrap();
    let ready = vm.wait_ready(BOOT).unwrap();
    let rec = wait_record(guest, RUN, |r| r.state.is_terminal());
    assert_eq!(rec.state, RunState::Exited(3));
    assert_eq!(rec.custom.as_str(), "custom status from debian-12");

    wait_daemon_done(&mut vm, guest.init());
    let bg = vm.sh("cat /run/nlxtp-test-bg.pid").unwrap();
    vm.sh(&format!("kill -0 {}", bg.trim()))
        .expect("the process the script left running still runs after the run has ended");
    check_log(&mut vm, guest.init());
    eprintln!(
        "[{}] agent ready at {:.1} s; {}",
        guest.init().name(),
        ready.as_secs_f64(),
        boot_cost(&mut vm, guest.init())
    );

    vm.send("poweroff").unwrap();
    vm.wait_exit(RUN).unwrap();
    assert_clean_unmount(guest, &vm);
    let files = download(guest);
    assert_eq!(files["count"], b"ran\n");
}

/// Boot 2: the same disk again, no new upload: the daemon does nothing.
fn exactly_once_across_a_reboot(guest: &mut DistroGuest) {
    let before = wait_record(guest, RUN, |r| r.state.is_terminal());
    let mut vm = guest.boot().unwrap();
    vm.wait_ready(BOOT).unwrap();
    wait_daemon_done(&mut vm, guest.init());
    vm.send("poweroff").unwrap();
    vm.wait_exit(RUN).unwrap();
    let after = wait_record(guest, RUN, |r| r.state.is_terminal());
    assert_eq!(after, before, "the record is untouched");
    assert_eq!(download(guest)["count"], b"ran\n", "not run again");
}

/// A script that waits to be stopped and, when its SIGTERM comes, saves the record the
/// guest holds at that moment: it must already be the final one.
const WAIT_TO_BE_STOPPED: &str = r#"trap 'nlxtp-guest status show "$archive_dir" > "$archive_dir/at-term.txt" 2>&1; exit 143' TERM
echo ran >> "$archive_dir/count"
archive_setstatus "waiting to be stopped"
sleep 600
"#;

/// Boot 3: the service is stopped while its script runs.
fn stop_during_a_run(guest: &mut DistroGuest) {
    upload(guest, WAIT_TO_BE_STOPPED);
    let mut vm = guest.boot().unwrap();
    vm.wait_ready(BOOT).unwrap();
    wait_record(guest, RUN, |r| r.custom.as_str() == "waiting to be stopped");
    let stop = match guest.init() {
        Init::Systemd => "systemctl stop nlxtp-guest",
        Init::Sysvinit => "service nlxtp-guest stop",
    };
    let asked = Instant::now();
    vm.sh(stop).unwrap();
    let took = asked.elapsed();
    let rec = wait_record(guest, Duration::from_secs(5), |r| r.state.is_terminal());
    assert_eq!(
        rec.state,
        RunState::Aborted(AbortReason::StoppedBySystem(15))
    );
    eprintln!(
        "[{}] {stop:?} returned after {:.2} s",
        guest.init().name(),
        took.as_secs_f64()
    );
    if guest.init() == Init::Systemd {
        let warnings = vm
            .sh("journalctl -u nlxtp-guest -p warning -o cat --no-pager")
            .unwrap();
        assert!(warnings.contains("stopped by the system"), "{warnings}");
    }
    vm.send("poweroff").unwrap();
    vm.wait_exit(RUN).unwrap();
    assert_recorded_before_the_script_was_signalled(guest);
    assert_eq!(download(guest)["count"], b"ran\n");
}

/// Boot 4: the guest powers off while the script runs.
fn poweroff_during_a_run(guest: &mut DistroGuest) {
    upload(guest, WAIT_TO_BE_STOPPED);
    let mut vm = guest.boot().unwrap();
    vm.wait_ready(BOOT).unwrap();
    wait_record(guest, RUN, |r| r.custom.as_str() == "waiting to be stopped");
    let asked = Instant::now();
    vm.send("poweroff").unwrap();
    vm.wait_exit(RUN).unwrap();
    eprintln!(
        "[{}] poweroff during a run took {:.1} s",
        guest.init().name(),
        asked.elapsed().as_secs_f64()
    );
    let rec = wait_record(guest, RUN, |r| r.state.is_terminal());
    assert_eq!(
        rec.state,
        RunState::Aborted(AbortReason::StoppedBySystem(15))
    );
    assert_recorded_before_the_script_was_signalled(guest);
    assert_clean_unmount(guest, &vm);
}

/// Boots 5 and 6: QEMU is killed mid-run; the next boot records the run as aborted and
/// does not run it again.
fn killed_then_booted(guest: &mut DistroGuest) {
    upload(
        guest,
        "echo ran >> \"$archive_dir/count\"\narchive_setstatus running\nsleep 600\n",
    );
    let mut vm = guest.boot().unwrap();
    vm.wait_ready(BOOT).unwrap();
    wait_record(guest, RUN, |r| r.custom.as_str() == "running");
    vm.kill();
    drop(vm);

    let mut vm = guest.boot().unwrap();
    vm.wait_ready(BOOT).unwrap();
    wait_daemon_done(&mut vm, guest.init());
    let rec = wait_record(guest, RUN, |r| r.state.is_terminal());
    assert_eq!(rec.state, RunState::Aborted(AbortReason::GuestRestarted));
    vm.send("poweroff").unwrap();
    vm.wait_exit(RUN).unwrap();
    assert_eq!(download(guest)["count"], b"ran\n", "not run again");
}

fn upload(guest: &DistroGuest, script: &str) {
    let bytes = archive(&[("auto_exec.sh", script.as_bytes(), 0o755)]).unwrap();
    ops::upload(&guest.area(), &bytes[..], &UploadOptions::default()).unwrap();
}

/// Reads the status record from the host until `done` holds.
fn wait_record(
    guest: &DistroGuest,
    within: Duration,
    done: impl Fn(&StatusRecord) -> bool,
) -> StatusRecord {
    let area = guest.area();
    let mut reader = StatusReader::new();
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(rec) = read_status(&area, &mut reader, Patience::default()).unwrap() {
            if done(&rec) {
                return rec;
            }
            last = Some(rec);
        }
        assert!(
            Instant::now() < deadline,
            "the record did not get there within {within:?}; last: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the daemon has handled the upload and exited (a VM's daemon handles one
/// upload per boot).
fn wait_daemon_done(vm: &mut DistroVm, init: Init) {
    let (check, done) = match init {
        Init::Systemd => ("systemctl show -p SubState --value nlxtp-guest", "exited"),
        Init::Sysvinit => ("service nlxtp-guest status >/dev/null; echo $?", "3"),
    };
    let deadline = Instant::now() + RUN;
    loop {
        let state = vm.sh(check).unwrap();
        if state.trim() == done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not finish: {check} says {state:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The daemon's lines where the init system keeps them: under systemd, in the journal
/// with no second program name and no visible priority prefix.
fn check_log(vm: &mut DistroVm, init: Init) {
    let log = match init {
        Init::Systemd => vm
            .sh("journalctl -u nlxtp-guest -o short --no-pager")
            .unwrap(),
        Init::Sysvinit => vm.sh("cat /var/log/nlxtp-guest.log").unwrap(),
    };
    assert!(log.contains("started"), "{log}");
    if init == Init::Systemd {
        assert!(!log.contains("]: nlxtp-guest:"), "no doubled name:\n{log}");
        assert!(
            !log.contains("]: <"),
            "priority prefixes are parsed:\n{log}"
        );
    }
}

/// What the boot costs until the script runs, from the guest's clocks.
fn boot_cost(vm: &mut DistroVm, init: Init) -> String {
    let stdout = vm.sh("cat /mnt/nlXTP/nlxtp/stdout.txt").unwrap();
    let script: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("script start uptime "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let unit = match init {
        Init::Systemd => vm
            .sh("systemctl show -p ExecMainStartTimestampMonotonic --value nlxtp-guest")
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .map(|us| us / 1e6),
        Init::Sysvinit => None,
    };
    match unit {
        Some(unit) => format!(
            "daemon exec at uptime {unit:.2} s, script start at {script:.2} s: {:.0} ms",
            (script - unit) * 1e3
        ),
        None => format!("script start at uptime {script:.2} s"),
    }
}

/// The script saved the guest's record when its SIGTERM came: already final.
fn assert_recorded_before_the_script_was_signalled(guest: &DistroGuest) {
    let files = download(guest);
    let at_term = String::from_utf8_lossy(
        files
            .get("at-term.txt")
            .expect("the script got SIGTERM and saved the record"),
    )
    .into_owned();
    assert!(
        at_term.contains("state aborted: stopped by the system (signal 15)"),
        "the record at the script's SIGTERM:\n{at_term}"
    );
}

/// The guest unmounted the shared disk: no failed unmount on the console and the FAT's
/// dirty bit (set by Linux while mounted) is clear.
fn assert_clean_unmount(guest: &DistroGuest, vm: &DistroVm) {
    let console = vm.console();
    assert!(
        !console.contains("Failed unmounting") && !console.contains("target is busy"),
        "an unmount failed:\n{console}"
    );
    let fsck = std::process::Command::new("fsck.vfat")
        .arg("-n")
        .arg(guest.disk())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&fsck.stdout);
    assert!(
        fsck.status.success() && !report.contains("Dirty bit"),
        "the shared disk was not unmounted cleanly:\n{report}"
    );
}

/// Downloads the area and returns its files (path -> content).
fn download(guest: &DistroGuest) -> BTreeMap<String, Vec<u8>> {
    nlxtp_harness::vm::download_files(&guest.area()).unwrap()
}

/// `nlxtp run --image` with a distribution's own disk, kernel and initrd (issue `nlxtp
/// run`): the guest's own init (systemd) starts nlxtp-guest, the job runs there, its
/// output comes back and `nlxtp run` exits with the job's code.
#[test]
fn nlxtp_run_boots_a_debian_image() {
    let image = nlxtp_harness::distro::image(Init::Systemd).unwrap();
    let nlxtp = nlxtp_binary();
    let guest = nlxtp_harness::guest::guest_binary().unwrap();
    let out = std::process::Command::new(&nlxtp)
        .args(["run", "--mem", "512", "--timeout", "240", "--kernel"])
        .arg(&image.vmlinuz)
        .arg("--initrd")
        .arg(&image.initrd)
        .arg("--image")
        .arg(&image.disk)
        .arg("--guest")
        .arg(&guest)
        .args([
            "--",
            "sh",
            "-c",
            "cat /etc/debian_version; cat /proc/1/comm; exit 5",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("12."), "{stdout}");
    assert!(stdout.contains("systemd"), "{stdout}");
}

fn nlxtp_binary() -> std::path::PathBuf {
    nlxtp_harness::host_binary("nlxtp", "").unwrap()
}
