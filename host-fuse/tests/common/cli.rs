//! The `nlxtp` command as a test runs it (only for tests that require the `cli` feature,
//! which builds the binary).
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const NLXTP: &str = env!("CARGO_BIN_EXE_nlxtp");

/// Runs `nlxtp args` with its liveness memory in `state`.
pub fn nlxtp(args: &[&str], state: &Path) -> Output {
    Command::new(NLXTP)
        .args(args)
        .env("XDG_STATE_HOME", state)
        .output()
        .unwrap()
}

/// What a run said on standard error.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tar archive `dir/job.tar` of the directory `dir/job-src`, made with these files.
pub fn job_tar(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let src = dir.join("job-src");
    for (name, bytes) in files {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let job = dir.join("job.tar");
    crate::common::run(
        "tar",
        &[
            "-cf",
            job.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            ".",
        ],
    );
    job
}
