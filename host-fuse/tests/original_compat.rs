//! Areas of the original implementation (`exec_status/`, no checksummed record) and runs
//! cut off by a VM that went off, as a user meets them through the `nlxtp` command: real
//! processes, real directories and images made by mtools.

mod common;

#[path = "common/cli.rs"]
mod cli;

use std::path::Path;
use std::time::{Duration, Instant};

use cli::{job_tar, nlxtp, stderr};
use common::*;
use nlxtp_core::RunState;

/// The original's files: output, heartbeat time, custom status and, if `done`, the flag.
const LEGACY_OUT: &[u8] = b"installing zsh\nSetting up zsh (5.9)\nE: warning on stderr\n";

fn legacy_dir(area: &Path, done: bool) {
    let status = area.join("exec_status");
    std::fs::create_dir_all(&status).unwrap();
    std::fs::write(area.join("auto_exec.sh"), "#!/bin/bash\necho hi\n").unwrap();
    std::fs::write(status.join("out"), LEGACY_OUT).unwrap();
    std::fs::write(status.join("running"), "1700000000\n").unwrap();
    std::fs::write(status.join("custom"), "installed").unwrap();
    if done {
        std::fs::write(status.join("done"), "").unwrap();
    }
}

fn legacy_image(dir: &Path, done: bool) -> std::path::PathBuf {
    let img = make_image(dir, Maker::Mkfs(16));
    mcopy(&img, "auto_exec.sh", b"#!/bin/bash\necho hi\n");
    mmd(&img, "exec_status");
    mcopy(&img, "exec_status/out", LEGACY_OUT);
    mcopy(&img, "exec_status/running", b"1700000000\n");
    mcopy(&img, "exec_status/custom", b"installed");
    if done {
        mcopy(&img, "exec_status/done", b"");
    }
    img
}

#[test]
fn logs_wait_status_and_download_read_a_legacy_area() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let container = dir.path().join("area");
    legacy_dir(&container, true);
    let image = legacy_image(dir.path(), true);
    for target in [&container, &image] {
        let target = target.to_str().unwrap();
        let logs = nlxtp(&["logs", target], &state);
        assert!(logs.status.success(), "{target}: {}", stderr(&logs));
        assert_eq!(
            logs.stdout, LEGACY_OUT,
            "{target}: logs print exec_status/out"
        );

        let started = Instant::now();
        let wait = nlxtp(&["wait", "--quiet", target, "--timeout", "30"], &state);
        assert_eq!(wait.status.code(), Some(0), "{target}: {}", stderr(&wait));
        assert!(
            stderr(&wait).contains("records no exit code"),
            "{}",
            stderr(&wait)
        );
        assert!(started.elapsed() < Duration::from_secs(10), "done at once");

        let status = nlxtp(&["status", "--json", target], &state);
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(json["legacy"]["done"], true, "{json}");
        assert_eq!(json["legacy"]["custom"], "installed", "{json}");
        assert_eq!(json["legacy"]["out_bytes"], LEGACY_OUT.len(), "{json}");
        assert_eq!(json["legacy"]["running_guest_unix"], 1_700_000_000u64);

        let tarball = dir.path().join("down.tar");
        let down = nlxtp(&["download", target, tarball.to_str().unwrap()], &state);
        assert!(down.status.success(), "{target}: {}", stderr(&down));
        let listing = run("tar", &["-tf", tarball.to_str().unwrap()]);
        for name in [
            "exec_status/out",
            "exec_status/done",
            "exec_status/custom",
            "exec_status/running",
        ] {
            assert!(listing.contains(name), "{target}: {name} in\n{listing}");
        }
        std::fs::remove_file(tarball).unwrap();
    }
}

#[test]
fn waiting_on_an_unfinished_legacy_run_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let area = dir.path().join("area");
    legacy_dir(&area, false);
    let wait = nlxtp(
        &[
            "wait",
            "--quiet",
            area.to_str().unwrap(),
            "--timeout",
            "0.5",
        ],
        dir.path(),
    );
    assert_eq!(wait.status.code(), Some(124), "{}", stderr(&wait));
}

/// An image whose record says "running", as a VM killed in the middle of a run leaves it.
fn cut_off_image(dir: &Path) -> std::path::PathBuf {
    let img = make_image(dir, Maker::Mkfs(16));
    mcopy(&img, "auto_exec.sh", b"sleep 600\n");
    mmd(&img, "nlxtp");
    let rec = record(7, RunState::Running, "half way");
    mcopy(&img, "nlxtp/status.bin", &status_file(3, &rec));
    img
}

#[test]
fn a_running_record_on_an_image_no_vm_holds_is_a_cut_off_run() {
    let dir = tempfile::tempdir().unwrap();
    let img = cut_off_image(dir.path());
    let target = img.to_str().unwrap();

    let status = nlxtp(&["status", "--json", target], dir.path());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["vm_running"], false, "{json}");
    assert_eq!(json["monitor"]["monitor"], "cut-off", "{json}");
    let text = nlxtp(&["status", target], dir.path());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("cut off") && !text.contains("alive"),
        "{text}"
    );

    // Known at once: no liveness timeout to sit out.
    let started = Instant::now();
    let wait = nlxtp(&["wait", "--quiet", target], dir.path());
    assert_eq!(wait.status.code(), Some(126), "{}", stderr(&wait));
    assert!(stderr(&wait).contains("cut off"), "{}", stderr(&wait));
    assert!(started.elapsed() < Duration::from_secs(2));

    // An upload goes in without --force and says what it replaced.
    let job = job_tar(dir.path(), &[("auto_exec.sh", b"echo again\n")]);
    let up = nlxtp(&["upload", target, job.to_str().unwrap()], dir.path());
    assert!(up.status.success(), "{}", stderr(&up));
    assert!(stderr(&up).contains("cut off"), "{}", stderr(&up));
    assert_eq!(mtype(&img, "auto_exec.sh"), b"echo again\n");
}

#[test]
fn a_running_record_in_a_container_still_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let area = dir.path().join("area");
    std::fs::create_dir_all(area.join("nlxtp")).unwrap();
    let rec = record(7, RunState::Running, "half way");
    std::fs::write(area.join("nlxtp/status.bin"), status_file(3, &rec)).unwrap();
    std::fs::write(area.join("auto_exec.sh"), "sleep 600\n").unwrap();
    let job = job_tar(dir.path(), &[("auto_exec.sh", b"echo again\n")]);
    let up = nlxtp(
        &["upload", area.to_str().unwrap(), job.to_str().unwrap()],
        dir.path(),
    );
    assert!(!up.status.success());
    assert!(stderr(&up).contains("--force"), "{}", stderr(&up));
}

#[test]
fn a_download_uploaded_again_is_refused_unless_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let img = cut_off_image(dir.path());
    let legacy = dir.path().join("legacy");
    legacy_dir(&legacy, true);
    for source in [img.as_path(), legacy.as_path()] {
        let name = source.file_name().unwrap().to_str().unwrap();
        let download = dir.path().join(format!("{name}.tar.gz"));
        let down = nlxtp(
            &[
                "download",
                source.to_str().unwrap(),
                download.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(down.status.success(), "{}", stderr(&down));

        let target = dir.path().join(format!("{name}-target"));
        std::fs::create_dir_all(&target).unwrap();
        let (target, download) = (target.to_str().unwrap(), download.to_str().unwrap());
        let refused = nlxtp(&["upload", target, download], dir.path());
        assert_eq!(refused.status.code(), Some(1), "{name}");
        let why = stderr(&refused);
        assert!(
            why.contains("earlier run") && why.contains("--run-again"),
            "{name}: {why}"
        );
        assert!(
            std::fs::read_dir(target).unwrap().next().is_none(),
            "{name}: a refused upload changes nothing"
        );

        let again = nlxtp(&["upload", "--run-again", target, download], dir.path());
        assert!(again.status.success(), "{name}: {}", stderr(&again));
        let area = Path::new(target);
        assert!(area.join("auto_exec.sh").is_file(), "{name}");
        assert!(
            area.join("nlxtp/manifest.bin").is_file(),
            "{name}: a fresh run"
        );
        assert!(
            !area.join("nlxtp/status.bin").exists(),
            "{name}: old status left out"
        );
        assert!(
            !area.join("exec_status").exists(),
            "{name}: old status left out"
        );
    }
}
