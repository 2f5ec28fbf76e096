//! `nlxtp mount --daemon`: the mount process started in the background, and its parent
//! returning once it reports the mount (or with what it said if it ends before).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::error::DaemonMessages;
use super::{MountError, MountOptions};

/// How long the parent waits for the mount process's ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the mount process in the background and returns once it is mounted.
pub(crate) fn spawn_daemon(opts: &MountOptions) -> Result<(), MountError> {
    let spawn_failed = |source| MountError::DaemonSpawn { source };
    let exe = std::env::current_exe().map_err(spawn_failed)?;
    let mut child = foreground_command(exe, opts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(spawn_failed)?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    // Its messages until it is mounted; after that nobody reads them (it must not mind).
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        let _ = err_tx.send(text);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) if !line.is_empty() => {
            print!("{line}");
            Ok(())
        }
        // Its stdout closed without a report: it is ending. Its messages say why (they
        // are complete once it has exited and its stderr closed too).
        Ok(_) => {
            let messages = err_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_default();
            Err(MountError::DaemonEnded {
                how: how_it_ended(&mut child),
                source: DaemonMessages(messages.trim().to_owned()),
            })
        }
        Err(_) => Err(MountError::DaemonTimeout),
    }
}

/// The same `nlxtp mount` in the foreground.
fn foreground_command(exe: std::path::PathBuf, opts: &MountOptions) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(&opts.mountpoint);
    for vm in &opts.vms {
        cmd.arg("--vm").arg(vm);
    }
    for uri in &opts.libvirt {
        cmd.arg("--libvirt").arg(uri);
    }
    if let Some(config) = &opts.config {
        cmd.arg("--config")
            .arg(std::path::absolute(config).unwrap_or(config.clone()));
    }
    if let Some(dir) = &opts.stage_dir {
        cmd.arg("--stage-dir").arg(dir);
    }
    if opts.allow_other {
        cmd.arg("--allow-other");
    }
    cmd
}

/// "exited (STATUS)" once `child` has exited (waiting up to 5 s), else "ended".
fn how_it_ended(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(status) => break status,
            Err(_) => break None,
        }
    };
    status.map_or_else(|| "ended".to_owned(), |s| format!("exited ({s})"))
}
