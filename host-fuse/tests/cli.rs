//! The `nlxtp` command as a user runs it: real processes, real directories and images,
//! snapshots of what a person and a script read.

mod common;

#[path = "common/cli.rs"]
mod cli;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cli::{nlxtp, NLXTP};
use nlxtp_core::record::STATUS_SLOT_LEN;
use nlxtp_core::slots::STATUS_FILE_LEN;
use nlxtp_core::{BootId, OutputInfo, RunId, RunState, StatusRecord, StatusWriter};

/// Writes a status file as a guest's monitor would.
fn write_status(area: &Path, state: RunState, interval_ms: u32) {
    std::fs::create_dir_all(area.join("nlxtp")).unwrap();
    std::fs::write(
        area.join("nlxtp/status.bin"),
        status_file(state, interval_ms),
    )
    .unwrap();
    std::fs::write(area.join("auto_exec.sh"), "echo hi\n").unwrap();
}

/// A status file as a guest's monitor writes it.
fn status_file(state: RunState, interval_ms: u32) -> Vec<u8> {
    let mut rec = StatusRecord {
        run_id: RunId::from_hex("0123456789abcdef0123456789abcdef").unwrap(),
        boot_id: BootId([0x11; 16]),
        state,
        heartbeat: 7,
        heartbeat_interval_ms: interval_ms,
        stdout: OutputInfo {
            bytes: 1234,
            truncated: false,
        },
        stderr: OutputInfo {
            bytes: 99,
            truncated: true,
        },
        started_unix: Some(1_700_000_000),
        updated_unix: 1_700_000_010,
        finished_unix: state.is_terminal().then_some(1_700_000_010),
        ..Default::default()
    };
    rec.custom.push_str("step 2/3: compiling").unwrap();
    let mut file = vec![0u8; STATUS_FILE_LEN];
    let mut slot = vec![0u8; STATUS_SLOT_LEN];
    let mut writer = StatusWriter::new();
    for _ in 0..3 {
        let at = writer.encode(&mut rec, &mut slot).unwrap();
        file[at..at + STATUS_SLOT_LEN].copy_from_slice(&slot);
    }
    file
}

fn text(out: &Output, dir: &Path) -> String {
    String::from_utf8_lossy(&out.stdout).replace(&dir.display().to_string(), "[DIR]")
}

#[test]
fn status_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let area = dir.path().join("area");
    write_status(&area, RunState::Exited(3), 2_000);
    let out = nlxtp(&["status", area.to_str().unwrap()], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!("status_text_exited", text(&out, dir.path()));
    let out = nlxtp(&["status", "--json", area.to_str().unwrap()], dir.path());
    insta::assert_snapshot!("status_json_exited", text(&out, dir.path()));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["record"]["exit_code"], 3);
}

#[test]
fn status_of_a_running_guest_says_alive_then_lost() {
    let dir = tempfile::tempdir().unwrap();
    let area = dir.path().join("area");
    // Interval 100 ms: lost after 3 x 100 ms + 2 s of no change.
    write_status(&area, RunState::Running, 100);
    let first = nlxtp(&["status", area.to_str().unwrap()], dir.path());
    insta::assert_snapshot!("status_text_first_look", text(&first, dir.path()));
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let later = nlxtp(&["status", "--json", area.to_str().unwrap()], dir.path());
    let json: serde_json::Value = serde_json::from_slice(&later.stdout).unwrap();
    assert_eq!(json["monitor"]["monitor"], "lost", "{json}");
}

#[test]
fn wait_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Option<RunState>, &[&str], i32); 5] = [
        ("exited", Some(RunState::Exited(3)), &[], 3),
        ("signaled", Some(RunState::Signaled(9)), &[], 137),
        (
            "aborted",
            Some(RunState::Aborted(nlxtp_core::AbortReason::GuestRestarted)),
            &[],
            126,
        ),
        (
            "timeout",
            Some(RunState::Running),
            &["--timeout", "0.5"],
            124,
        ),
        ("no-upload", None, &[], 127),
    ];
    for (name, state, extra, code) in cases {
        let area = dir.path().join(name);
        std::fs::create_dir_all(&area).unwrap();
        if let Some(state) = state {
            // A long interval, so "running" stays alive for the timeout case.
            write_status(&area, state, 60_000);
        }
        let mut args = vec!["wait", "--quiet", area.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = nlxtp(&args, dir.path());
        assert_eq!(
            out.status.code(),
            Some(code),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A monitor that stops writing: lost after 3 x 100 ms + 2 s.
    let area = dir.path().join("lost");
    write_status(&area, RunState::Running, 100);
    let out = nlxtp(
        &[
            "wait",
            "--quiet",
            area.to_str().unwrap(),
            "--interval",
            "0.1",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("monitor stopped writing"));
}

#[test]
fn hostile_archives_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    assert!(nlxtp(
        &["create-disk", image.to_str().unwrap(), "--size", "8M"],
        dir.path()
    )
    .status
    .success());
    let before = std::fs::read(&image).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder
        .append_link(&mut header, "auto_exec.sh", "/etc/shadow")
        .unwrap();
    let archive = dir.path().join("evil.tar");
    std::fs::write(&archive, builder.into_inner().unwrap()).unwrap();
    let out = nlxtp(
        &["upload", image.to_str().unwrap(), archive.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("upload_symlink_error", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read(&image).unwrap(),
        before,
        "a refused upload changes nothing"
    );
    std::fs::write(&archive, b"this is not an archive at all, just text").unwrap();
    let out = nlxtp(
        &["upload", image.to_str().unwrap(), archive.to_str().unwrap()],
        dir.path(),
    );
    insta::assert_snapshot!("upload_garbage_error", String::from_utf8_lossy(&out.stderr));
    let out = nlxtp(
        &["status", dir.path().join("missing.img").to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}

#[test]
fn exec_upload_download_round_trip_on_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    let img = image.to_str().unwrap();
    assert!(nlxtp(
        &["create-disk", img, "--size", "16M", "--fat", "16"],
        dir.path()
    )
    .status
    .success());
    let out = nlxtp(
        &[
            "exec",
            img,
            "--json",
            "--",
            "sh",
            "-c",
            "echo 'it''s fine' > out.txt",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["run_id"].as_str().unwrap().len(), 32);
    for name in ["out.tar", "out.tar.gz", "out.tar.zst"] {
        let path = dir.path().join(name);
        let out = nlxtp(&["download", img, path.to_str().unwrap()], dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = Command::new("tar").arg("-taf").arg(&path).output().unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(
            listing.contains("auto_exec.sh") && listing.contains("nlxtp/manifest.bin"),
            "{name}: {listing}"
        );
    }
    // mtools reads what nlxtp wrote.
    let script = Command::new("mtype")
        .args(["-i", img, "::auto_exec.sh"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&script.stdout).contains("sh -c"));
}

#[test]
fn download_from_a_running_vm_waits_for_its_run_or_takes_it_live() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    let img = image.to_str().unwrap();
    assert!(nlxtp(&["create-disk", img, "--size", "8M"], dir.path())
        .status
        .success());
    common::mmd(&image, "nlxtp");
    common::mcopy(
        &image,
        "nlxtp/status.bin",
        &status_file(RunState::Running, 60_000),
    );
    let output = dir.path().join("out.tar");
    let out_tar = output.to_str().unwrap();
    // Held as a running QEMU holds it.
    let vm = nlxtp_host::area::vfat::ImageWriteGuard::acquire(&image).unwrap();

    let out = nlxtp(&["download", img, out_tar], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the VM is running and its run is not done"),
        "{err}"
    );
    assert!(!output.exists() && !dir.path().join("out.partial").exists());

    let out = nlxtp(&["download", "--live", img, out_tar], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: the VM is running"), "{err}");
    assert!(output.is_file() && !dir.path().join("out.partial").exists());

    drop(vm);
    common::mcopy(
        &image,
        "nlxtp/status.bin",
        &status_file(RunState::Exited(0), 60_000),
    );
    let _vm = nlxtp_host::area::vfat::ImageWriteGuard::acquire(&image).unwrap();
    std::fs::remove_file(&output).unwrap();
    let out = nlxtp(&["download", img, out_tar], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("warning"),
        "a run that is done is packed as it is: {err}"
    );
    assert!(output.is_file());
}

/// Runs `nlxtp` with its standard output a pipe whose reader has gone, as in
/// `nlxtp logs T | head -2` once `head` has read its lines.
fn nlxtp_to_closed_pipe(args: &[&str], state: &Path) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(NLXTP)
        .args(args)
        .env("XDG_STATE_HOME", state)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.img");
    let img = image.to_str().unwrap();
    assert!(nlxtp(&["create-disk", img, "--size", "8M"], dir.path())
        .status
        .success());
    common::mmd(&image, "nlxtp");
    common::mcopy(&image, "auto_exec.sh", b"echo hi\n");
    common::mcopy(
        &image,
        "nlxtp/status.bin",
        &status_file(RunState::Exited(3), 60_000),
    );
    // More than a pipe holds.
    let lines = "a line of the script's output\n".repeat(20_000);
    common::mcopy(&image, "nlxtp/stdout.txt", lines.as_bytes());
    common::mcopy(&image, "nlxtp/stderr.txt", lines.as_bytes());

    // Commands whose exit code says only that they worked: 0, whatever was left unread.
    for args in [
        &["logs", img][..],
        &["logs", "--both", img],
        &["status", "--json", img],
        &["status", img],
        &["download", img, "-"],
        &[
            "download",
            "--json",
            img,
            dir.path().join("out.tar").to_str().unwrap(),
        ],
    ] {
        let out = nlxtp_to_closed_pipe(args, dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: nothing on stderr, got {err:?}");
    }
    // Commands whose exit code carries the run's result keep it.
    for args in [
        &["wait", "--quiet", "--json-result", img][..],
        &["logs", "--follow", "--json-result", img],
    ] {
        let out = nlxtp_to_closed_pipe(args, dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: nothing on stderr, got {err:?}");
    }

    // Following a run that goes on stops when the reader goes: no result yet, exit 0.
    let area = dir.path().join("running");
    write_status(&area, RunState::Running, 60_000);
    let mut live = vec![0u8; nlxtp_core::live::LIVE_FILE_LEN];
    nlxtp_core::live::put_block(&mut live, 1, nlxtp_core::live::Stream::Stdout, 0, b"hi\n")
        .unwrap();
    std::fs::write(area.join(nlxtp_core::layout::LIVE_FILE), live).unwrap();
    let started = Instant::now();
    let out = nlxtp_to_closed_pipe(
        &["logs", "-f", "--timeout", "20", area.to_str().unwrap()],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "nothing on stderr, got {err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it stopped at the first write, not at the run's end"
    );
}

#[test]
fn rootfs_resolves_the_area_inside_the_container_without_its_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let rootfs = dir.path().join("rootfs");
    let elsewhere = dir.path().join("another-container/area");
    std::fs::create_dir_all(rootfs.join("nlxtp")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    write_status(&elsewhere, RunState::Running, 1000);
    // The guest points a directory of its root at another container's area.
    std::os::unix::fs::symlink(elsewhere.parent().unwrap(), rootfs.join("mnt")).unwrap();
    let root = rootfs.to_str().unwrap();

    let out = nlxtp(&["--rootfs", root, "status", "/mnt/area"], &state);
    assert!(!out.status.success(), "a planted symlink is not followed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link is on the way"), "{err}");

    let out = nlxtp(&["--rootfs", root, "exec", "/nlxtp", "--", "true"], &state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rootfs.join("nlxtp/auto_exec.sh").is_file());
    let out = nlxtp(&["--rootfs", root, "status", "nlxtp", "--json"], &state);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"upload_present\": true"), "{json}");
}

/// `status TARGET` and `status --json TARGET` skip clap (they are polled in loops); with
/// `--` the same command goes through clap. Both must say and exit the same.
#[test]
fn plain_status_forms_mean_what_clap_makes_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let area = dir.path().join("area");
    write_status(&area, RunState::Exited(3), 2_000);
    let missing = dir.path().join("missing.img");
    for target in [area.to_str().unwrap(), missing.to_str().unwrap()] {
        // (the plain form, the same through clap, whether clap's form logs to stderr)
        for (fast, parsed, logs) in [
            (vec!["status", target], vec!["status", "--", target], false),
            (
                vec!["status", "--json", target],
                vec!["status", "--json", "--", target],
                false,
            ),
            (
                vec!["status", target, "--json"],
                vec!["--verbose", "status", "--json", target],
                true,
            ),
        ] {
            let (a, b) = (nlxtp(&fast, dir.path()), nlxtp(&parsed, dir.path()));
            assert_eq!(a.status.code(), b.status.code(), "{fast:?}");
            assert_eq!(a.stdout, b.stdout, "{fast:?}");
            if !logs {
                assert_eq!(a.stderr, b.stderr, "{fast:?}");
            }
        }
    }
}

/// A run the guest's system stopped (systemctl stop, a shutdown) names the signal.
#[test]
fn a_run_stopped_by_the_guest_system_names_its_signal() {
    let dir = tempfile::tempdir().unwrap();
    let area = dir.path().join("area");
    let stopped = RunState::Aborted(nlxtp_core::AbortReason::StoppedBySystem(15));
    write_status(&area, stopped, 2_000);
    let out = nlxtp(&["status", "--json", area.to_str().unwrap()], dir.path());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["record"]["state"], "aborted", "{json}");
    assert_eq!(json["record"]["signal"], 15, "{json}");
    assert_eq!(json["record"]["done"], true, "{json}");
    let wait = nlxtp(&["wait", "--quiet", area.to_str().unwrap()], dir.path());
    assert_eq!(wait.status.code(), Some(126));
}
