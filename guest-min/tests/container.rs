//! The guest binary against a container-style shared area (a directory): real daemon,
//! monitor and shell scripts, read back through `nlxtp-core` as the host reads them.

mod harness;

use std::fs;
use std::time::{Duration, Instant};

use harness::{kill, manifest, wait_for, Area};
use nlxtp_core::custom::{
    read_custom, status_prefix, CustomText, CUSTOM_SLOT_LEN, CUSTOM_TEXT_MAX,
};
use nlxtp_core::layout;
use nlxtp_core::{AbortReason, DecodeError, Liveness, LivenessPolicy, Manifest, RunState, Verdict};

#[test]
fn exit_code_output_and_environment() {
    let mut area = Area::new();
    let run = area.upload_script("echo \"out $archive_dir $nlxtp_dir $archive_version $NLXTP_RUN_ID\"\necho err >&2\nexit 3\n");
    let out = area.daemon_once(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = area.wait_done(5);
    assert_eq!(rec.state, RunState::Exited(3));
    assert_eq!(rec.run_id, run);
    let dir = area.dir();
    let expected = format!("out {d} {d} 1 {run}\n", d = dir.display());
    assert_eq!(area.read(layout::STDOUT_FILE), expected);
    assert_eq!(area.read(layout::STDERR_FILE), "err\n");
    assert_eq!(rec.stdout.bytes, expected.len() as u64);
    assert_eq!((rec.stderr.bytes, rec.stderr.truncated), (4, false));
    assert!(rec.started_unix.is_some() && rec.finished_unix.is_some());
}

#[test]
fn killed_by_a_signal() {
    let mut area = Area::new();
    area.upload_script("echo before\nkill -KILL $$\necho after\n");
    area.daemon_once(&[]);
    let rec = area.wait_done(5);
    assert_eq!(rec.state, RunState::Signaled(9));
    assert_eq!(area.read(layout::STDOUT_FILE), "before\n");
}

#[test]
fn output_beyond_the_cap_is_cut_and_recorded() {
    let mut area = Area::new();
    area.upload_script("i=0; while [ $i -lt 20000 ]; do echo 0123456789012345678901234567890123456789012345678; i=$((i+1)); done\necho small >&2\n");
    area.daemon_once(&["--output-cap", "100000"]);
    let rec = area.wait_done(30);
    assert_eq!(rec.state, RunState::Exited(0));
    assert_eq!((rec.stdout.bytes, rec.stdout.truncated), (100_000, true));
    assert_eq!(
        fs::metadata(area.path(layout::STDOUT_FILE)).unwrap().len(),
        100_000
    );
    assert_eq!((rec.stderr.bytes, rec.stderr.truncated), (6, false));
}

#[test]
fn output_cap_from_the_manifest_wins() {
    let mut area = Area::new();
    area.upload(
        "echo 0123456789\n",
        Manifest {
            output_cap_bytes: Some(4),
            ..manifest()
        },
    );
    area.daemon_once(&[]);
    let rec = area.wait_done(5);
    assert_eq!((rec.stdout.bytes, rec.stdout.truncated), (4, true));
    assert_eq!(area.read(layout::STDOUT_FILE), "0123");
}

#[test]
fn custom_status_changes_are_seen_while_the_script_runs() {
    let mut area = Area::new();
    area.upload_script("archive_setstatus step one\nsleep 1\nnlxtp-status 'step two'\nsleep 1\nprintf 'multi\\nline' | archive_setstatus -\nsleep 1\n");
    let _daemon = area.daemon(&[]);
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(rec) = area.status() {
            if seen.last().map(String::as_str) != Some(rec.custom.as_str()) {
                seen.push(rec.custom.to_string());
            }
            if rec.state.is_terminal() {
                assert_eq!(rec.state, RunState::Exited(0));
                break;
            }
            assert!(!rec.state.is_terminal() || rec.custom.as_str() == "multi\nline");
        }
        assert!(
            Instant::now() < deadline,
            "run did not finish; saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(seen, ["step one", "step two", "multi\nline"]);
}

#[test]
fn heartbeat_advances_and_liveness_holds() {
    let mut area = Area::new();
    area.upload_script("sleep 2\n");
    let _daemon = area.daemon(&[]);
    let first = area.wait_status(5, |r| r.state == RunState::Running);
    assert_eq!(first.heartbeat_interval_ms, 200);
    let mut live = Liveness::new(LivenessPolicy::default());
    let start = Instant::now();
    let mut last_beat = first.heartbeat;
    loop {
        let rec = area.status().unwrap();
        let verdict = live.observe(start.elapsed().as_millis() as u64, Some(&rec));
        if rec.state.is_terminal() {
            assert_eq!(verdict, Verdict::Done(RunState::Exited(0)));
            break;
        }
        assert!(matches!(verdict, Verdict::Alive { .. }), "{verdict:?}");
        last_beat = rec.heartbeat;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        last_beat >= first.heartbeat + 5,
        "heartbeat went from {} to {last_beat} in ~2 s at 200 ms",
        first.heartbeat
    );
}

#[test]
fn a_killed_monitor_is_seen_as_lost_and_then_recorded_as_aborted() {
    let mut area = Area::new();
    area.upload_script("echo started\nsleep 30\n");
    let daemon = area.daemon(&[]);
    let rec = area.wait_status(5, |r| r.state == RunState::Running);
    kill(daemon.monitor_pid(5), 9);
    let mut live = Liveness::new(LivenessPolicy::default());
    let start = Instant::now();
    let timeout = LivenessPolicy::default().timeout_ms(rec.heartbeat_interval_ms);
    let lost_after = wait_for(10, || {
        let now = start.elapsed().as_millis() as u64;
        match live.observe(now, area.status().ok().as_ref()) {
            Verdict::MonitorLost { .. } => Some(now),
            _ => None,
        }
    });
    assert!(
        lost_after <= timeout + 500,
        "lost after {lost_after} ms, timeout {timeout} ms"
    );
    // The daemon (still running) sees the same silence and closes the run.
    let rec = area.wait_done(15);
    assert_eq!(rec.state, RunState::Aborted(AbortReason::MonitorDied));
}

#[test]
fn a_finished_run_is_not_run_again() {
    let mut area = Area::new();
    area.upload_script("echo ran >> \"$archive_dir/../count\"\n");
    area.daemon_once(&[]);
    let first = area.wait_done(5);
    area.daemon_once(&[]);
    area.daemon_once(&["--boot-id", "00000000000000000000000000000001"]);
    assert_eq!(
        fs::read_to_string(area.root.path().join("count")).unwrap(),
        "ran\n"
    );
    assert_eq!(
        area.status().unwrap(),
        first,
        "nothing rewrote the finished record"
    );
}

#[test]
fn a_crash_mid_run_is_recorded_as_aborted_at_the_next_boot() {
    let mut area = Area::new();
    area.upload_script("echo ran >> \"$archive_dir/../count\"\nsleep 30\n");
    let daemon = area.daemon(&["--boot-id", "000000000000000000000000000000aa"]);
    area.wait_status(5, |r| r.state == RunState::Running);
    drop(daemon); // SIGKILL for the daemon, the monitor and the script: the "VM" died.
    let out = area.daemon_once(&["--boot-id", "000000000000000000000000000000bb"]);
    let rec = area.wait_done(5);
    assert_eq!(
        rec.state,
        RunState::Aborted(AbortReason::GuestRestarted),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rec.boot_id.to_string(), "000000000000000000000000000000bb");
    assert_eq!(
        fs::read_to_string(area.root.path().join("count")).unwrap(),
        "ran\n",
        "not run again"
    );
}

#[test]
fn watch_mode_runs_each_upload_within_a_second() {
    let mut area = Area::new();
    let _daemon = area.daemon(&[]);
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..2 {
        let started = Instant::now();
        let run = area.upload_script(&format!("echo round {round}\n"));
        area.wait_status(5, |r| r.run_id == run);
        let latency = started.elapsed();
        assert!(
            latency < Duration::from_secs(1),
            "round {round}: started after {latency:?}"
        );
        let rec = area.wait_done(5);
        assert_eq!((rec.run_id, rec.state), (run, RunState::Exited(0)));
        assert_eq!(area.read(layout::STDOUT_FILE), format!("round {round}\n"));
    }
}

#[test]
fn a_script_that_is_a_directory_or_a_symlink_is_recorded_not_run() {
    for (make, errno) in [(0, libc_errno::EISDIR), (1, libc_errno::ELOOP)] {
        let mut area = Area::new();
        area.upload_script("echo hi\n");
        let script = area.path(layout::START_SCRIPT);
        fs::remove_file(&script).unwrap();
        if make == 0 {
            fs::create_dir(&script).unwrap();
        } else {
            std::os::unix::fs::symlink("/bin/true", &script).unwrap();
        }
        area.daemon_once(&[]);
        assert_eq!(area.wait_done(5).state, RunState::StartFailed(errno));
    }
}

mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ENOEXEC: i32 = 8;
    pub const EISDIR: i32 = 21;
    pub const ELOOP: i32 = 40;
    pub const EBADMSG: i32 = 74;
}

#[test]
fn children_that_outlive_the_script_do_not_hold_up_the_result() {
    let mut area = Area::new();
    area.upload_script("(sleep 3; echo late) &\necho early\nexit 0\n");
    let _daemon = area.daemon(&[]);
    let started = Instant::now();
    let rec = area.wait_done(10);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "final record after {:?}",
        started.elapsed()
    );
    assert_eq!((rec.state, rec.stdout.bytes), (RunState::Exited(0), 6));
    // The straggler's output is still captured and counted, with the state unchanged.
    let rec = area.wait_status(10, |r| r.stdout.bytes == 11);
    assert_eq!(rec.state, RunState::Exited(0));
    assert_eq!(area.read(layout::STDOUT_FILE), "early\nlate\n");
}

#[test]
fn a_script_that_closes_its_output_early() {
    let mut area = Area::new();
    area.upload_script("echo one\nexec >&-\nsleep 0.2\necho two >&2\nexit 4\n");
    area.daemon_once(&[]);
    let rec = area.wait_done(5);
    assert_eq!(rec.state, RunState::Exited(4));
    assert_eq!(
        (
            area.read(layout::STDOUT_FILE).as_str(),
            area.read(layout::STDERR_FILE).as_str()
        ),
        ("one\n", "two\n")
    );
}

#[test]
fn status_helper_errors_are_clear() {
    let mut area = Area::new();
    let long = "x".repeat(CUSTOM_TEXT_MAX + 1);
    area.upload_script(&format!(
        "archive_setstatus before; echo \"before=$?\"\narchive_setstatus {long}; echo \"long=$?\"\n"
    ));
    area.daemon_once(&[]);
    let rec = area.wait_done(5);
    assert_eq!(area.read(layout::STDOUT_FILE), "before=0\nlong=2\n");
    assert_eq!(
        area.read(layout::STDERR_FILE),
        "nlxtp-guest: archive_setstatus: the status text is longer than 65536 bytes (64 KiB); \
         the custom status was not changed. Shorten it, or write the details to a file in the \
         shared directory\n"
    );
    // The previous text stays, in the record and in the custom status file.
    assert_eq!(rec.custom.as_str(), "before");
    assert_eq!(
        custom_file_text(&area),
        Some((rec.run_id, "before".to_owned()))
    );

    // A helper of a run that is over (a straggler of an earlier upload) is refused; one
    // of this run may still write.
    let helper = |run: String| {
        std::process::Command::new(area.bin.join("archive_setstatus"))
            .arg("late")
            .env("NLXTP_CUSTOM_FILE", area.path(layout::CUSTOM_FILE))
            .env("NLXTP_RUN_ID", run)
            .output()
            .unwrap()
    };
    let out = helper("00000000000000000000000000000001".into());
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("belongs to run") && said.contains("the status was not changed"),
        "{said}"
    );
    assert_eq!(helper(rec.run_id.to_string()).status.code(), Some(0));
    assert_eq!(
        custom_file_text(&area),
        Some((rec.run_id, "late".to_owned()))
    );

    // Outside a monitor the helper says so.
    let out = std::process::Command::new(area.bin.join("archive_setstatus"))
        .arg("hi")
        .env_remove("NLXTP_CUSTOM_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running under the nlxtp monitor"));
}

#[test]
fn invalid_utf8_is_replaced_and_many_words_are_joined() {
    let (rec, out, err) = run_once(
        "printf 'bad \\377 byte' | archive_setstatus -; echo \"bad=$?\"\n\
         archive_setstatus $(seq 1 3000); echo \"words=$?\"\n",
    );
    assert_eq!(out, "bad=0\nwords=0\n");
    assert!(err.contains("not valid UTF-8"), "{err}");
    let words: Vec<String> = (1..=3000).map(|n| n.to_string()).collect();
    let words = words.join(" ");
    assert_eq!(rec.custom.as_str(), status_prefix(&words));
}

#[test]
fn the_full_64_kib_is_kept_and_its_start_is_in_the_record() {
    let mut area = Area::new();
    // Exactly 64 KiB: 'x', 32767 two-byte characters, 'y' (so the record's 3584 bytes
    // end inside a character); then 64 KiB + 1 byte, refused.
    area.upload_script(
        "{ printf x; yes \u{e9} | tr -d '\\n' | head -c 65534; printf y; } | archive_setstatus -; echo \"max=$?\"\n\
         head -c 65537 /dev/zero | tr '\\0' x | archive_setstatus -; echo \"over=$?\"\n",
    );
    area.daemon_once(&[]);
    let rec = area.wait_done(10);
    assert_eq!(area.read(layout::STDOUT_FILE), "max=0\nover=2\n");
    let (run, text) = custom_file_text(&area).unwrap();
    assert_eq!((run, text.len()), (rec.run_id, CUSTOM_TEXT_MAX));
    assert!(text.starts_with("x\u{e9}\u{e9}") && text.ends_with("\u{e9}y"));
    assert_eq!(rec.custom.as_str(), status_prefix(&text));
    assert_eq!(rec.custom.len(), nlxtp_core::record::CUSTOM_STATUS_MAX - 1);
}

/// The newest text in the area's custom status file, and its run.
fn custom_file_text(area: &Area) -> Option<(nlxtp_core::RunId, String)> {
    let bytes = fs::read(area.path(layout::CUSTOM_FILE)).ok()?;
    let text = read_custom(&bytes).ok()?;
    Some((text.run_id, text.text.to_owned()))
}

/// Text number `n` of the concurrency tests: `n` and a newline, over and over, 60 KB.
fn numbered_text(n: u32) -> String {
    let mut text = format!("{n}\n").repeat(60_000);
    text.truncate(60_000);
    text
}

/// Checks a text a reader decoded: one of the numbered texts, whole. Returns its number.
fn check_numbered(text: &str) -> u32 {
    let n: u32 = text
        .split('\n')
        .next()
        .and_then(|first| first.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered text: {:?}", &text[..text.len().min(40)]));
    assert!(text == numbered_text(n), "text {n} is mixed with another");
    n
}

/// Reads the area's status and custom status files as a host does, over and over, until
/// `stop`; checks every text it decodes and the order in which they come. Returns the
/// counts of whole texts and of torn slots and files it met.
fn read_continuously(
    dir: std::path::PathBuf,
    stop: &std::sync::atomic::AtomicBool,
) -> (usize, usize) {
    use std::sync::atomic::Ordering;
    let (mut whole, mut torn) = (0, 0);
    let mut newest = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(bytes) = fs::read(dir.join(layout::CUSTOM_FILE)) else {
            continue;
        };
        // A slot caught mid-write: the file reader then takes the other one.
        torn += bytes
            .chunks(CUSTOM_SLOT_LEN)
            .filter(|slot| CustomText::decode(slot) == Err(DecodeError::Torn))
            .count();
        match read_custom(&bytes) {
            Ok(text) if text.text.is_empty() => {}
            Ok(text) => {
                check_numbered(text.text);
                assert!(
                    text.sequence >= newest,
                    "went back from {newest} to {}",
                    text.sequence
                );
                newest = text.sequence;
                whole += 1;
            }
            Err(DecodeError::Torn | DecodeError::NotThereYet) => torn += 1,
            Err(e) => panic!("custom.bin: {e}"),
        }
    }
    (whole, torn)
}

#[test]
fn a_60_kb_status_set_100_times_is_never_read_mixed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut area = Area::new();
    area.upload_script(
        "for i in $(seq 1 100); do yes $i | head -c 60000 | archive_setstatus - || exit 9; done\n",
    );
    let stop = AtomicBool::new(false);
    let (whole, torn) = std::thread::scope(|scope| {
        let dir = area.dir();
        let reader = scope.spawn(|| read_continuously(dir, &stop));
        area.daemon_once(&[]);
        let rec = area.wait_done(60);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            rec.state,
            RunState::Exited(0),
            "{}",
            area.read(layout::STDERR_FILE)
        );
        // The last text, whole in the file and its start in the final record.
        let (_, text) = custom_file_text(&area).unwrap();
        assert_eq!(check_numbered(&text), 100);
        assert_eq!(rec.custom.as_str(), status_prefix(&text));
        reader.join().unwrap()
    });
    assert!(whole > 0, "the reader saw texts ({torn} torn reads)");
    eprintln!("{whole} whole texts read; {torn} torn slots or files met");
}

#[test]
fn concurrent_helpers_take_turns() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut area = Area::new();
    area.upload_script(
        "for i in $(seq 1 20); do (yes $i | head -c 60000 | archive_setstatus - || echo \"failed $i\") & done\nwait\n",
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let dir = area.dir();
        let reader = scope.spawn(|| read_continuously(dir, &stop));
        area.daemon_once(&[]);
        let rec = area.wait_done(60);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(area.read(layout::STDOUT_FILE), "", "every helper succeeded");
        let bytes = fs::read(area.path(layout::CUSTOM_FILE)).unwrap();
        let newest = read_custom(&bytes).unwrap();
        check_numbered(newest.text);
        assert_eq!(
            newest.sequence, 21,
            "20 texts after the run's empty one: none lost"
        );
        assert_eq!(rec.custom.as_str(), status_prefix(newest.text));
        reader.join().unwrap();
    });
}

#[test]
fn a_python_script_sets_a_long_status_through_the_helper() {
    let mut area = Area::new();
    // subprocess closes inherited descriptors by default: the helper needs none.
    area.upload_script(
        "#!/usr/bin/env python3\n\
         import os, subprocess, time\n\
         text = ''.join('http://deb.example/pool/p%04d.deb p%04d.deb 1234 MD5Sum:abc\\n' % (i, i) for i in range(160))\n\
         subprocess.run(['archive_setstatus', text], check=True)\n\
         open(os.path.join(os.environ['archive_dir'], '..', 'set'), 'w').close()\n\
         time.sleep(3)\n",
    );
    let expected: String = (0..160)
        .map(|i| format!("http://deb.example/pool/p{i:04}.deb p{i:04}.deb 1234 MD5Sum:abc\n"))
        .collect();
    assert!(expected.len() > 9_000);
    let _daemon = area.daemon(&[]);
    let flag = area.root.path().join("set");
    wait_for(10, || flag.exists().then_some(()));
    // The helper has returned: the whole text is in the file now, its start in the
    // record within a second.
    let (_, text) = custom_file_text(&area).unwrap();
    assert_eq!(text, expected);
    let set_at = Instant::now();
    let rec = area.wait_status(1, |r| !r.custom.is_empty());
    assert_eq!(rec.custom.as_str(), status_prefix(&expected));
    assert!(set_at.elapsed() < Duration::from_secs(1));
    let rec = area.wait_done(10);
    assert_eq!(
        rec.state,
        RunState::Exited(0),
        "{}",
        area.read(layout::STDERR_FILE)
    );
}

#[test]
fn a_corrupt_status_file_is_never_taken_as_permission_to_run_again() {
    let mut area = Area::new();
    area.upload_script("echo ran >> \"$archive_dir/../count\"\n");
    let mut junk = vec![0x5au8; 8192];
    junk[..4].copy_from_slice(b"NLXS");
    fs::write(area.path(layout::STATUS_FILE), &junk).unwrap();
    area.daemon_once(&[]);
    let rec = area.wait_done(10);
    assert_eq!(rec.state, RunState::StartFailed(libc_errno::EBADMSG));
    assert!(!area.root.path().join("count").exists());
}

#[test]
fn a_timeout_kills_the_script_and_says_so() {
    let mut area = Area::new();
    area.upload(
        "echo start\nsleep 30\n",
        Manifest {
            timeout_secs: Some(1),
            ..manifest()
        },
    );
    let started = Instant::now();
    area.daemon_once(&[]);
    let rec = area.wait_done(10);
    assert_eq!(rec.state, RunState::TimedOut(15));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_script_without_a_manifest_gets_one_and_runs_once() {
    let mut area = Area::new();
    fs::write(
        area.path(layout::START_SCRIPT),
        "echo ran >> \"$archive_dir/../count\"\n",
    )
    .unwrap();
    area.daemon_once(&[]);
    let rec = area.wait_done(5);
    assert_eq!(rec.state, RunState::Exited(0));
    let manifest = Manifest::decode(&fs::read(area.path(layout::MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(manifest.run_id, rec.run_id);
    area.daemon_once(&[]);
    assert_eq!(
        fs::read_to_string(area.root.path().join("count")).unwrap(),
        "ran\n"
    );
}

#[test]
fn a_full_shared_area_cuts_the_output_and_keeps_the_final_record() {
    let mut area = Area::new();
    // A 256 KiB tmpfs as the shared area: the script's output fills it.
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=256k",
            "nlxtp-full",
            area.dir().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            harness::kill_processes_in(&self.0);
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(area.dir());
    area.upload_script("i=0; while [ $i -lt 3000 ]; do echo 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789; i=$((i+1)); done\necho still-running >&2\nexit 5\n");
    let out = area.daemon_once(&[]);
    let rec = area.wait_done(30);
    assert_eq!(
        rec.state,
        RunState::Exited(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rec.stdout.truncated, "the cut is recorded");
    let on_disk = fs::metadata(area.path(layout::STDOUT_FILE)).unwrap().len();
    assert_eq!(
        rec.stdout.bytes, on_disk,
        "the record counts exactly what reached the disk"
    );
    assert!(on_disk < 300_000);
    assert!(String::from_utf8_lossy(&out.stderr).contains("output capture stopped"));
}

#[test]
fn help_is_printed_whole() {
    let out = std::process::Command::new(harness::GUEST)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.len() > 1024, "longer than the old fixed buffer");
    for part in [
        "nlxtp-guest daemon",
        "--boot-id HEX",
        "nlxtp-guest status set TEXT... | -",
        "archive_setstatus and nlxtp-status",
        "nlxtp-guest status show [DIR]",
        "nlxtp-guest stop [--timeout SECS] [PID]",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    assert!(text.ends_with("to stop.\n"), "cut off:\n{text}");
}

/// Runs `script` once to its end; the final record, standard output and standard error.
fn run_once(script: &str) -> (nlxtp_core::StatusRecord, String, String) {
    let mut area = Area::new();
    area.upload_script(script);
    let out = area.daemon_once(&[]);
    let rec = area.wait_done(10);
    let daemon_log = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = area.read(layout::STDOUT_FILE);
    let stderr = area.read(layout::STDERR_FILE);
    assert!(out.status.success(), "daemon: {daemon_log}");
    (rec, stdout, stderr)
}

#[test]
fn a_bash_script_runs_under_bash() {
    let (rec, out, err) = run_once(
        r#"#!/bin/bash
set -o pipefail
trap 'echo "trapped at $LINENO" >&2' ERR
arr=(one two three)
echo "len=${#arr[@]} second=${arr[1]}"
n=0; for i in {1..100}; do n=$((n+i)); done; echo "sum=$n"
if [[ "abc" == a* && -n "$BASH_VERSION" ]]; then echo "double-brackets"; fi
false | true; echo "pipefail=$?"
archive_setstatus "bash ${BASH_VERSINFO[0]}" || echo "helper failed"
readlink /proc/$$/exe
"#,
    );
    assert_eq!(rec.state, RunState::Exited(0), "stderr: {err}");
    let bash = fs::canonicalize("/bin/bash").unwrap();
    assert_eq!(
        out,
        format!(
            "len=3 second=two\nsum=5050\ndouble-brackets\npipefail=1\n{}\n",
            bash.display()
        )
    );
    assert_eq!(
        err, "trapped at 8\n",
        "the ERR trap fired for the failed pipeline"
    );
    assert!(rec.custom.starts_with("bash "), "{:?}", rec.custom);
}

#[test]
fn one_argument_from_the_line_and_blanks_around_it() {
    // As the kernel: blanks after #! and around the argument are dropped.
    let (rec, out, _) = run_once("#! /bin/sh -e \t\necho one\nfalse\necho two\n");
    assert_eq!(rec.state, RunState::Exited(1));
    assert_eq!(out, "one\n");
    // Blanks inside the argument are kept: it is one argument, then the script's name.
    let (rec, out, _) = run_once("#!/bin/echo  one  two \nignored\n");
    assert_eq!(rec.state, RunState::Exited(0));
    assert_eq!(out, "one  two auto_exec.sh\n");
}

#[test]
fn a_script_without_a_line_runs_under_bin_sh() {
    let (rec, out, _) = run_once("readlink /proc/$$/exe\necho \"$0\"\n");
    assert_eq!(rec.state, RunState::Exited(0));
    let sh = fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(out, format!("{}\nauto_exec.sh\n", sh.display()));
    // `#!` with nothing after it: the same.
    let (rec, out, _) = run_once("#!\nreadlink /proc/$$/exe\n");
    assert_eq!(rec.state, RunState::Exited(0));
    assert_eq!(out, format!("{}\n", sh.display()));
}

#[test]
fn a_python_script_runs_under_python() {
    let (rec, out, err) = run_once(
        "#!/usr/bin/env python3\nimport sys\nprint('python', sys.version_info[0], sys.argv[0])\nsys.exit(7)\n",
    );
    assert_eq!(rec.state, RunState::Exited(7), "stderr: {err}");
    assert_eq!(out, "python 3 auto_exec.sh\n");
}

#[test]
fn a_missing_interpreter_is_a_recorded_failure() {
    let (rec, out, err) = run_once("#!/nonexistent/sh\necho ran\n");
    assert_eq!(rec.state, RunState::StartFailed(libc_errno::ENOENT));
    assert_eq!(out, "", "not run by another shell");
    assert_eq!(
        err,
        "nlxtp-guest: the interpreter /nonexistent/sh named by the #! line of auto_exec.sh \
         does not exist in this guest (install it, or change the #! line) (errno 2); the \
         script did not run\n"
    );
    assert_eq!(rec.stderr.bytes, err.len() as u64);
}

#[test]
fn windows_line_endings_in_the_line_are_refused_with_the_fix() {
    let (rec, out, err) = run_once("#!/bin/sh\r\necho ran\r\n");
    assert_eq!(rec.state, RunState::StartFailed(libc_errno::ENOENT));
    assert_eq!(out, "");
    assert!(err.contains("Windows line endings (CR LF)"), "{err}");
    assert!(err.contains("dos2unix auto_exec.sh"), "{err}");
}

#[test]
fn an_overlong_line_is_refused() {
    let (rec, _, err) = run_once(&format!("#!/bin/sh {}\necho ran\n", "x".repeat(300)));
    assert_eq!(rec.state, RunState::StartFailed(libc_errno::ENOEXEC));
    assert!(err.contains("longer than 255 bytes"), "{err}");
}

#[test]
fn a_relative_area_path_reaches_the_script_absolute() {
    let mut area = Area::new();
    area.upload_script("cd /\necho \"$archive_dir\"\narchive_setstatus set from /\n");
    let out = std::process::Command::new(harness::GUEST)
        .current_dir(area.root.path())
        .args(["daemon", "--dir", "area", "--once"])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", area.bin.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = area.wait_done(5);
    assert_eq!(rec.state, RunState::Exited(0));
    assert_eq!(
        area.read(layout::STDOUT_FILE),
        format!("{}\n", area.dir().display())
    );
    assert_eq!(rec.custom.as_str(), "set from /");
}

/// A script that waits to be stopped; at its SIGTERM it saves the record the guest holds
/// at that moment (`at-term.txt`).
fn waits_to_be_stopped() -> String {
    format!(
        "trap '{} status show \"$archive_dir\" > \"$archive_dir/at-term.txt\" 2>&1; exit 143' TERM\narchive_setstatus waiting\nsleep 30\n",
        harness::GUEST
    )
}

/// A stop of the service during a run (SIGTERM to the daemon: what `systemctl stop`, a
/// shutdown and `start-stop-daemon --stop` send), in a VM's `--once` mode and a
/// container's watch mode: the monitor records "stopped by the system" before the
/// script gets its SIGTERM, and the daemon exits 0 once the monitor has ended.
#[test]
fn a_stop_is_recorded_before_the_script_is_signalled() {
    for mode in [&["--once"][..], &[]] {
        let mut area = Area::new();
        area.upload_script(&waits_to_be_stopped());
        let daemon = area.daemon(mode);
        area.wait_status(5, |r| r.custom.as_str() == "waiting");
        kill(daemon.pid(), 15);
        let out = daemon.wait(15);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode:?}: {log}");
        let rec = area.wait_done(1);
        assert_eq!(
            rec.state,
            RunState::Aborted(AbortReason::StoppedBySystem(15)),
            "{mode:?}"
        );
        let at_term = area.read("at-term.txt");
        assert!(
            at_term.contains("state aborted: stopped by the system (signal 15)"),
            "{mode:?}: the record when the script got SIGTERM:\n{at_term}"
        );
        assert!(
            log.contains("stopped by the system (signal 15): recorded"),
            "{log}"
        );
    }
}

/// `nlxtp-guest stop PID` (systemd's ExecStop) returns once the daemon has exited, the
/// stop recorded; with no PID, or a process that is gone, there is nothing to stop.
#[test]
fn stop_waits_for_the_daemon() {
    let mut area = Area::new();
    area.upload_script(&waits_to_be_stopped());
    let daemon = area.daemon(&["--once"]);
    area.wait_status(5, |r| r.custom.as_str() == "waiting");
    let started = Instant::now();
    let stop = std::process::Command::new(harness::GUEST)
        .args(["stop", "--timeout", "20"])
        .arg(daemon.pid().to_string())
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let out = daemon.wait(1);
    assert!(out.status.success());
    assert_eq!(
        area.wait_done(1).state,
        RunState::Aborted(AbortReason::StoppedBySystem(15))
    );
    let exited = std::process::Command::new("true").spawn().unwrap();
    let gone = exited.id();
    drop(exited.wait_with_output());
    for args in [&["stop"][..], &["stop", &gone.to_string()]] {
        let out = std::process::Command::new(harness::GUEST)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
    }
}

/// A process the script starts and leaves running (a service) is not the monitor's to
/// stop: it still runs after the run has been recorded and the daemon has exited.
#[test]
fn a_process_the_script_leaves_running_outlives_the_run() {
    let mut area = Area::new();
    area.upload_script(
        "sleep 60 </dev/null >/dev/null 2>&1 &\necho $! > \"$archive_dir/bg.pid\"\n",
    );
    // Not through harness::Daemon: its drop kills every process working in the area.
    let status = std::process::Command::new(harness::GUEST)
        .args(["daemon", "--once", "--dir"])
        .arg(area.dir())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(area.wait_done(1).state, RunState::Exited(0));
    let pid = area.read("bg.pid");
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
    assert!(
        matches!(state, Some("S" | "R")),
        "the script's background process is gone: {stat:?}"
    );
    // Area's drop kills it (its working directory is in the area).
}

/// Under systemd (standard error is the journal, named in JOURNAL_STREAM) a line is
/// `<PRIORITY>TEXT`: the journal adds the program's name itself. Anywhere else, and when
/// JOURNAL_STREAM names another stream, `nlxtp-guest: TEXT`.
#[test]
fn log_lines_under_the_journal_carry_priorities_and_no_name() {
    use std::os::unix::fs::MetadataExt;
    let run = |journal: Option<bool>, dir: &std::path::Path| -> String {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let pipe = fs::File::from(std::os::fd::OwnedFd::from(writer));
        let meta = pipe.metadata().unwrap();
        let mut command = std::process::Command::new(harness::GUEST);
        command
            .arg("daemon")
            .arg("--dir")
            .arg(dir)
            .arg("--once")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stderr(pipe);
        match journal {
            Some(true) => command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
            Some(false) => command.env(
                "JOURNAL_STREAM",
                format!("{}:{}", meta.dev(), meta.ino() + 1),
            ),
            None => &mut command,
        };
        let mut child = command.spawn().unwrap();
        drop(command);
        let mut log = String::new();
        std::io::Read::read_to_string(&mut reader, &mut log).unwrap();
        child.wait().unwrap();
        log
    };
    let mut area = Area::new();
    area.upload_script("echo hi\n");
    let log = run(Some(true), &area.dir());
    area.wait_done(5);
    assert!(log.lines().all(|l| l.starts_with("<6>")), "{log}");
    assert!(
        log.contains("<6>daemon watching") && !log.contains("nlxtp-guest:"),
        "{log}"
    );
    let missing = area.dir().join("missing");
    assert!(run(Some(true), &missing).starts_with("<3>cannot open the shared area"));
    for journal in [Some(false), None] {
        let log = run(journal, &missing);
        assert!(
            log.starts_with("nlxtp-guest: cannot open the shared area"),
            "{log}"
        );
    }
}
