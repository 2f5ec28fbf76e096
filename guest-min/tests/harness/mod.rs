//! Shared pieces of the guest's integration tests: a temporary container-style shared
//! area, uploads written the way the host writes them, a daemon process that cannot
//! outlive its test, and deadline-bound waits.
#![allow(dead_code)] // Each test file uses a different subset.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nlxtp_core::layout;
use nlxtp_core::record::MANIFEST_LEN;
use nlxtp_core::{DecodeError, Manifest, RunId, StatusReader, StatusRecord};

pub const GUEST: &str = env!("CARGO_BIN_EXE_nlxtp-guest");

/// A directory removed when dropped. (Not the tempfile crate: it would switch on
/// rustix's std feature for the no_std guest binary built in this workspace.)
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let mut id = [0u8; 8];
        getrandom(&mut id);
        let name = format!("nlxtp-guest-test-{}", u64::from_le_bytes(id));
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A shared area in a temporary directory, with a `bin/` holding the helper's names.
#[derive(Debug)]
pub struct Area {
    pub root: TempDir,
    pub bin: PathBuf,
    reader: StatusReader,
}

impl Area {
    pub fn new() -> Area {
        let root = TempDir::new();
        let bin = root.path().join("bin");
        fs::create_dir(&bin).unwrap();
        for name in ["archive_setstatus", "nlxtp-status"] {
            symlink(GUEST, bin.join(name)).unwrap();
        }
        let area = root.path().join("area");
        fs::create_dir(&area).unwrap();
        Area {
            root,
            bin,
            reader: StatusReader::new(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join("area")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    /// Uploads as the host does: clear, manifest, then the script last (by rename).
    pub fn upload(&self, script: &str, manifest: Manifest) -> RunId {
        let dir = self.dir();
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                fs::remove_dir_all(&path).unwrap();
            } else {
                fs::remove_file(&path).unwrap();
            }
        }
        fs::create_dir(dir.join(layout::PROTOCOL_DIR)).unwrap();
        let mut bytes = [0u8; MANIFEST_LEN];
        manifest.encode(&mut bytes).unwrap();
        fs::write(dir.join(layout::MANIFEST_FILE), bytes).unwrap();
        let tmp = dir.join(".auto_exec.sh.tmp");
        fs::write(&tmp, script).unwrap();
        fs::rename(tmp, dir.join(layout::START_SCRIPT)).unwrap();
        manifest.run_id
    }

    pub fn upload_script(&self, script: &str) -> RunId {
        self.upload(script, manifest())
    }

    /// The newest record, refusing to go back in time.
    pub fn status(&mut self) -> Result<StatusRecord, DecodeError> {
        match fs::read(self.path(layout::STATUS_FILE)) {
            Ok(bytes) => self.reader.read(&bytes),
            Err(_) => Err(DecodeError::NotThereYet),
        }
    }

    /// Waits until the record satisfies `done`; panics with what it saw at the deadline.
    pub fn wait_status(
        &mut self,
        secs: u64,
        mut done: impl FnMut(&StatusRecord) -> bool,
    ) -> StatusRecord {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let status = self.status();
            if let Ok(rec) = &status {
                if done(rec) {
                    return rec.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "gave up after {secs} s; last status {status:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_done(&mut self, secs: u64) -> StatusRecord {
        self.wait_status(secs, |rec| rec.state.is_terminal())
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// Starts the daemon on this area with a fast heartbeat.
    pub fn daemon(&self, extra: &[&str]) -> Daemon {
        Daemon::start(self, extra)
    }

    /// Runs the daemon in `--once` mode to completion.
    pub fn daemon_once(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        let daemon = self.daemon(&args);
        daemon.wait(30)
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        kill_processes_in(&self.dir());
    }
}

pub fn manifest() -> Manifest {
    let mut run_id = RunId::default();
    getrandom(&mut run_id.0);
    Manifest {
        run_id,
        created_unix: 1,
        ..Default::default()
    }
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buf)
        .unwrap();
}

/// A daemon process; killed (with every process working in the area) when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub child: Option<Child>,
    area: PathBuf,
}

impl Daemon {
    fn start(area: &Area, extra: &[&str]) -> Daemon {
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", area.bin.display());
        let child = Command::new(GUEST)
            .arg("daemon")
            .arg("--dir")
            .arg(area.dir())
            .args(["--heartbeat-ms", "200"])
            .args(extra)
            .env_clear()
            .env("PATH", path)
            .env("NLXTP_TEST_MARK", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            area: area.dir(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the daemon to exit; panics after `secs`.
    pub fn wait(mut self, secs: u64) -> std::process::Output {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "daemon still running after {secs} s; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// The daemon's monitor (its child process), once it exists.
    pub fn monitor_pid(&self, secs: u64) -> u32 {
        wait_for(secs, || children_of(self.pid()).into_iter().next())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in children_of(child.id()) {
                kill(pid, 9);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_processes_in(&self.area);
    }
}

/// Polls `probe` until it gives a value; panics after `secs`.
pub fn wait_for<T>(secs: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start after ") ".
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        if rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

pub fn kill(pid: u32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Kills every process whose working directory is inside `dir` (scripts and what they
/// started), so that no test leaves processes behind.
pub fn kill_processes_in(dir: &Path) {
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(dir) {
                kill(pid, 9);
            }
        }
    }
}
