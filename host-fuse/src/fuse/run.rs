//! The mount process (session, signals, control socket, reload, unmount) and the
//! `nlxtp umount` client.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::config::{self, VmSpec};
use super::fs::Fs;
use super::view::View;
use super::{MountError, MountOptions, UmountError};

/// The source the view shows in /proc/mounts (its type is `fuse`, or `fuse.nlxtp` when
/// mounted through fusermount3).
const FS_NAME: &str = "nlxtp";
/// How long an unmount waits for files the kernel is still closing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long `nlxtp umount` waits for the mount process's answer (commits take time).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// The absolute form of `mountpoint` with its parent's symbolic links resolved: the
/// mount point itself is not resolved, since a stale mount cannot be.
pub(crate) fn normalize(mountpoint: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(mountpoint)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
        _ => Ok(abs),
    }
}

fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NLXTP_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/nlxtp");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("nlxtp"),
        None => PathBuf::from(format!("/tmp/nlxtp-{uid}")),
    }
}

/// The control socket of the mount at `mountpoint` (normalized).
pub(crate) fn socket_path(mountpoint: &Path) -> PathBuf {
    let hash = crate::stable_hash::of_path(mountpoint);
    runtime_dir().join(format!("mount-{hash:016x}.sock"))
}

/// `\040`-style escapes of /proc/self/mountinfo undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|b| (b'0'..=b'7').contains(b))
                .then(|| d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0')))
        });
        match (bytes[i], octal) {
            (b'\\', Some(v)) if v < 256 => {
                out.push(v as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What is mounted at `mountpoint` (normalized), if anything: (type, source).
pub(crate) fn mounted(mountpoint: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_string_lossy();
    text.lines().rev().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let point = unescape(head.split(' ').nth(4)?);
        let mut fields = tail.split(' ');
        let fstype = fields.next()?.to_owned();
        let source = unescape(fields.next().unwrap_or(""));
        (point == want).then_some((fstype, source))
    })
}

/// Whether a mount of this type and source is an nlxtp view.
fn is_view(fstype: &str, source: &str) -> bool {
    fstype.starts_with("fuse") && source == FS_NAME
}

fn is_stale(mountpoint: &Path) -> bool {
    matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(Errno::ENOTCONN as i32))
}

/// Processes whose working directory, root or an open file is under `mountpoint`.
fn users_of(mountpoint: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let base = entry.path();
        let mut links = vec![base.join("cwd"), base.join("root")];
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            links.extend(fds.flatten().take(4096).map(|fd| fd.path()));
        }
        for link in links {
            let Ok(target) = std::fs::read_link(&link) else {
                continue;
            };
            if target.starts_with(mountpoint) {
                let what = match link.file_name().and_then(OsStr::to_str) {
                    Some("cwd") => "working directory",
                    Some("root") => "root directory",
                    _ => "open file",
                };
                out.push(format!("{} (pid {pid}, {what})", target.display(),) + &comm(&pid));
                break;
            }
        }
        if out.len() >= 20 {
            break;
        }
    }
    out
}

/// " by NAME" for a process, or nothing if it is gone.
fn comm(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| format!(" by {}", c.trim()))
        .unwrap_or_default()
}

/// Unmounts `mountpoint`: at once, or detached (`lazy`). Falls back to fusermount3 for
/// a user who may not unmount.
fn unmount_now(mountpoint: &Path, lazy: bool) -> Result<(), Errno> {
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    match umount2(mountpoint, flags) {
        Err(Errno::EPERM) => {
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u").arg("-q");
            if lazy {
                cmd.arg("-z");
            }
            let ok = cmd
                .arg("--")
                .arg(mountpoint)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                Ok(())
            } else {
                Err(Errno::EBUSY)
            }
        }
        other => other,
    }
}

/// What an unmount request came to.
enum Outcome {
    /// Unmounted; the session ends now.
    Unmounted(String),
    /// Detached; the session ends when the last open file is closed.
    Detached(String),
    /// Nothing changed.
    Refused { busy: bool, message: String },
}

/// Commits everything, then unmounts, unless files are open (and not `lazy`) or a
/// commit fails.
fn unmount(view: &View, mountpoint: &Path, lazy: bool) -> Outcome {
    let start = Instant::now();
    let mut open = view.open_files();
    while !open.is_empty() && start.elapsed() < CLOSE_GRACE {
        std::thread::sleep(Duration::from_millis(20));
        open = view.open_files();
    }
    if !open.is_empty() && !lazy {
        let files: Vec<String> = open
            .iter()
            .map(|f| {
                format!(
                    "{}/{} (pid {}{}{})",
                    mountpoint.display(),
                    f.path,
                    f.pid,
                    comm(&f.pid.to_string()),
                    if f.write { ", open for writing" } else { "" }
                )
            })
            .collect();
        return Outcome::Refused {
            busy: true,
            message: format!("files are open:\n  {}", files.join("\n  ")),
        };
    }
    let failed = view.commit_all();
    if !failed.is_empty() {
        return Outcome::Refused {
            busy: false,
            message: format!(
                "changes could not be committed (the mount stays, so they are not lost):\n  {}",
                failed.join("\n  ")
            ),
        };
    }
    match unmount_now(mountpoint, lazy) {
        Ok(()) if lazy && !open.is_empty() => Outcome::Detached(format!(
            "detached {}; {} open file(s) keep the mount process running, and what is written to them is committed when they are closed",
            mountpoint.display(),
            open.len()
        )),
        Ok(()) => Outcome::Unmounted(format!(
            "committed everything and unmounted {}",
            mountpoint.display()
        )),
        Err(Errno::EBUSY) => {
            let users = users_of(mountpoint);
            Outcome::Refused {
                busy: true,
                message: if users.is_empty() {
                    "the kernel says the mount is in use".into()
                } else {
                    format!("in use:\n  {}", users.join("\n  "))
                },
            }
        }
        Err(e) => Outcome::Refused {
            busy: false,
            message: format!("unmounting failed: {e}"),
        },
    }
}

/// What the mount process reacts to.
enum Event {
    Signal(i32),
    Control(String, mpsc::Sender<String>),
    SessionEnded(io::Result<()>),
}

/// Adds and removes VMs to match the command line and the config file now.
fn reload(
    view: &View,
    opts: &MountOptions,
    cli: &[VmSpec],
    notifier: &fuser::Notifier,
) -> Result<String, String> {
    let wanted = config::collect(cli, opts.config.as_deref()).map_err(|e| e.to_string())?;
    let mut report = Vec::new();
    for (name, target) in view.vm_list() {
        if wanted.iter().any(|w| w.name == name && w.shown() == target) {
            continue;
        }
        match view.remove_vm(&name) {
            Ok(()) => {
                let _ = notifier.inval_entry(fuser::INodeNo::ROOT, OsStr::new(&name));
                report.push(format!("removed {name}"));
            }
            Err(why) => report.push(format!("kept {name}: {why}")),
        }
    }
    let have = view.vm_list();
    for spec in wanted {
        if have.iter().any(|(n, _)| *n == spec.name) {
            continue;
        }
        match spec.open() {
            Ok(area) => {
                view.add_vm(&spec.name, &spec.shown(), area);
                let _ = notifier.inval_entry(fuser::INodeNo::ROOT, OsStr::new(&spec.name));
                report.push(format!("added {}", spec.name));
            }
            Err(e) => report.push(format!("could not add {}: {e}", spec.name)),
        }
    }
    if report.is_empty() {
        report.push("no change".into());
    }
    Ok(report.join("; "))
}

/// Binds the control socket, unless a live mount process answers on it.
fn bind_control(path: &Path, mountpoint: &Path) -> Result<UnixListener, MountError> {
    let err = |source| MountError::Control {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(MountError::AlreadyMounted {
            path: mountpoint.to_owned(),
        });
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(err)
}

/// One line on standard output (the ready line).
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One message on standard error; never fails (a `--daemon` parent has gone away).
fn tell(message: &str) {
    let _ = writeln!(io::stderr().lock(), "nlxtp: {message}");
}

/// Runs the mount process in the foreground until it is unmounted.
pub(crate) fn serve(opts: &MountOptions) -> Result<(), MountError> {
    let cli: Vec<VmSpec> = opts
        .vms
        .iter()
        .map(|a| config::parse_vm_arg(a))
        .collect::<Result<_, _>>()?;
    let specs = config::collect(&cli, opts.config.as_deref())?;
    let bad_point = |reason: String| MountError::MountPoint {
        path: opts.mountpoint.clone(),
        reason,
    };
    if is_stale(&opts.mountpoint) {
        return Err(MountError::Stale {
            path: opts.mountpoint.clone(),
        });
    }
    match std::fs::metadata(&opts.mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad_point("it is not a directory".into())),
        Err(e) => return Err(bad_point(e.to_string())),
    }
    let mountpoint = normalize(&opts.mountpoint).map_err(|e| bad_point(e.to_string()))?;
    if mounted(&mountpoint).is_some_and(|(t, s)| is_view(&t, &s)) {
        return Err(MountError::AlreadyMounted { path: mountpoint });
    }
    let stage_dir = opts.stage_dir.clone().unwrap_or_else(std::env::temp_dir);
    let view = Arc::new(View::new(stage_dir));
    for spec in &specs {
        let area = spec.open().map_err(|source| MountError::Target {
            name: spec.name.clone(),
            source,
        })?;
        view.add_vm(&spec.name, &spec.shown(), area);
    }
    let socket = socket_path(&mountpoint);
    let listener = bind_control(&socket, &mountpoint)?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(FS_NAME.into()),
        fuser::MountOption::Subtype("nlxtp".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    // Several threads, so one VM's commit does not stall the others.
    config.n_threads = Some(4);
    let session = match fuser::Session::new(Fs(Arc::clone(&view)), &mountpoint, &config) {
        Ok(s) => s,
        Err(source) => {
            let _ = std::fs::remove_file(&socket);
            return Err(MountError::Fuse {
                path: mountpoint,
                source,
            });
        }
    };
    let notifier = session.notifier();
    let (tx, rx) = mpsc::channel();

    let session_tx = tx.clone();
    let session_thread = std::thread::Builder::new()
        .name("nlxtp-fuse".into())
        .spawn(move || {
            let _ = session_tx.send(Event::SessionEnded(session.run()));
        })
        .map_err(|source| MountError::Control {
            path: socket.clone(),
            source,
        })?;

    let signal_tx = tx.clone();
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|source| {
            MountError::Control {
                path: socket.clone(),
                source,
            }
        })?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_tx.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    });

    let control_tx = tx;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            if let Err(e) = reader.read_line(&mut line) {
                tracing::warn!("unreadable control request: {e}");
                continue;
            }
            let (reply_tx, reply_rx) = mpsc::channel();
            if control_tx
                .send(Event::Control(line.trim().to_owned(), reply_tx))
                .is_err()
            {
                break;
            }
            if let Ok(answer) = reply_rx.recv() {
                let _ = (&stream).write_all(answer.as_bytes());
            }
        }
    });

    let stop_ticks = Arc::new(AtomicBool::new(false));
    let ticker = {
        let view = Arc::clone(&view);
        let stop = Arc::clone(&stop_ticks);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                view.tick();
            }
        })
    };

    say(&format!(
        "nlxtp: mounted {} VM(s) at {} (pid {}); unmount with: nlxtp umount {}",
        specs.len(),
        mountpoint.display(),
        std::process::id(),
        mountpoint.display()
    ));

    let mut ending = false;
    let mut session_ended = false;
    let result = loop {
        let Ok(event) = rx.recv() else {
            break Ok(());
        };
        match event {
            Event::Signal(SIGHUP) => match reload(&view, opts, &cli, &notifier) {
                Ok(report) => tracing::warn!("reloaded: {report}"),
                Err(e) => tracing::error!("reload failed, nothing changed: {e}"),
            },
            // Detached (--lazy) and still serving open files: a signal ends it now; what
            // was written is committed, and the open files then fail.
            Event::Signal(signal) if ending => {
                tell(&format!(
                    "signal {signal}: ending with files still open; committing what they wrote"
                ));
                break Ok(());
            }
            Event::Signal(signal) => match unmount(&view, &mountpoint, false) {
                Outcome::Unmounted(m) | Outcome::Detached(m) => {
                    tell(&format!("signal {signal}: {m}"));
                    ending = true;
                }
                Outcome::Refused { message, .. } => tell(&format!(
                    "signal {signal}: not unmounting {}: {message}\n  close them and signal again, or run: nlxtp umount --lazy {}",
                    mountpoint.display(),
                    mountpoint.display()
                )),
            },
            Event::Control(request, reply) => {
                let answer = match request.as_str() {
                    "umount" | "umount lazy" if ending => "ok\nalready unmounting\n".to_owned(),
                    "umount" | "umount lazy" => {
                        match unmount(&view, &mountpoint, request.ends_with("lazy")) {
                            Outcome::Unmounted(m) | Outcome::Detached(m) => {
                                ending = true;
                                format!("ok\n{m}\n")
                            }
                            Outcome::Refused {
                                busy: true,
                                message,
                            } => format!("busy\n{message}\n"),
                            Outcome::Refused { message, .. } => format!("failed\n{message}\n"),
                        }
                    }
                    "reload" => match reload(&view, opts, &cli, &notifier) {
                        Ok(report) => format!("ok\n{report}\n"),
                        Err(e) => format!("failed\n{e}\n"),
                    },
                    "ping" => format!("ok\n{}\n", std::process::id()),
                    other => format!("failed\nunknown request {other:?}\n"),
                };
                tracing::debug!("control request {request:?}: {answer:?}");
                let _ = reply.send(answer);
            }
            Event::SessionEnded(result) => {
                session_ended = true;
                // The kernel ends a session with ENODEV (fuser maps it to Ok) or, when the
                // connection is torn down as the last user of a detached mount goes, with
                // ECONNABORTED: both are an unmount, not a failure.
                break match result {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => Ok(()),
                    other => other,
                };
            }
        }
    };
    tracing::debug!("the session ended ({result:?}), unmount requested: {ending}");
    stop_ticks.store(true, Ordering::SeqCst);
    let _ = ticker.join();
    if session_ended {
        let _ = session_thread.join();
    }
    let failed = view.commit_all();
    let _ = std::fs::remove_file(&socket);
    for f in &failed {
        tell(&format!("lost uncommitted changes: {f}"));
    }
    if !ending {
        tell(&format!(
            "{} was unmounted from outside; everything pending was committed",
            mountpoint.display()
        ));
    }
    result.map_err(|source| MountError::Fuse {
        path: mountpoint,
        source,
    })
}

/// Starts the mount process in the background and returns once it is mounted.
pub(crate) fn spawn_daemon(opts: &MountOptions) -> Result<(), MountError> {
    use std::os::unix::process::CommandExt;
    let fail = |reason: String| MountError::Daemon { reason };
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount").arg(&opts.mountpoint);
    for vm in &opts.vms {
        cmd.arg("--vm").arg(vm);
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
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
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
    match rx.recv_timeout(Duration::from_secs(60)) {
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
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let status = loop {
                match child.try_wait() {
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(status) => break status,
                    Err(_) => break None,
                }
            };
            let how = status.map_or_else(|| "ended".to_owned(), |s| format!("exited ({s})"));
            Err(fail(format!(
                "the mount process {how} before mounting: {}",
                messages.trim()
            )))
        }
        Err(_) => Err(fail(
            "the mount process did not report a mount within 60 s".into(),
        )),
    }
}

/// Asks the mount process of `mountpoint` to unmount; cleans a stale mount itself.
pub(crate) fn umount(mountpoint: &Path, lazy: bool) -> Result<String, UmountError> {
    let normalized = normalize(mountpoint).map_err(|_| UmountError::NotMounted {
        path: mountpoint.to_owned(),
    })?;
    let socket = socket_path(&normalized);
    if let Ok(mut stream) = UnixStream::connect(&socket) {
        let io_err = |source| UmountError::Io {
            action: "talk to the mount process of",
            path: normalized.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(io_err)?;
        let request = if lazy { "umount lazy\n" } else { "umount\n" };
        stream.write_all(request.as_bytes()).map_err(io_err)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).map_err(io_err)?;
        if answer.is_empty() && mounted(&normalized).is_none() {
            let _ = std::fs::remove_file(&socket);
            return Ok(format!(
                "{} is unmounted (its mount process ended before it answered)",
                normalized.display()
            ));
        }
        let (status, message) = answer.split_once('\n').unwrap_or((&answer, ""));
        let message = message.trim_end().to_owned();
        return match status {
            "ok" => {
                // The session ends at once after a plain unmount; wait for the socket to go.
                let start = Instant::now();
                while !lazy && socket.exists() && start.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(message)
            }
            "busy" => Err(UmountError::Busy {
                path: normalized,
                details: message,
            }),
            _ => Err(UmountError::Failed {
                path: normalized,
                details: if message.is_empty() {
                    "the mount process ended without an answer".into()
                } else {
                    message
                },
            }),
        };
    }
    let Some((fstype, source)) = mounted(&normalized) else {
        let _ = std::fs::remove_file(&socket);
        return Err(UmountError::NotMounted { path: normalized });
    };
    if !fstype.starts_with("fuse") {
        return Err(UmountError::NotOurs {
            path: normalized,
            fstype,
        });
    }
    if is_stale(&normalized) {
        unmount_now(&normalized, true).map_err(|e| UmountError::Io {
            action: "detach",
            path: normalized.clone(),
            source: e.into(),
        })?;
        let _ = std::fs::remove_file(&socket);
        return Ok(format!(
            "cleaned up the stale mount at {}: its mount process had died (killed?), so changes it had not committed are lost; every image holds its last committed content, old or new, never a mix",
            normalized.display()
        ));
    }
    if !is_view(&fstype, &source) {
        return Err(UmountError::NotOurs {
            path: normalized,
            fstype,
        });
    }
    // A live nlxtp mount without its socket: unmount; the process commits when it sees it.
    match unmount_now(&normalized, lazy) {
        Ok(()) => Ok(format!(
            "unmounted {} (its mount process did not answer on {}; it commits what is pending as it ends)",
            normalized.display(),
            socket.display()
        )),
        Err(Errno::EBUSY) => Err(UmountError::Busy {
            details: format!("in use:\n  {}", users_of(&normalized).join("\n  ")),
            path: normalized,
        }),
        Err(e) => Err(UmountError::Io {
            action: "unmount",
            path: normalized,
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape(r"/x\9"), r"/x\9");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn socket_names_are_stable_and_distinct() {
        let a = socket_path(Path::new("/mnt/a"));
        assert_eq!(a, socket_path(Path::new("/mnt/a")));
        assert_ne!(a, socket_path(Path::new("/mnt/b")));
        assert!(a.as_os_str().len() < 100, "fits sun_path");
    }

    #[test]
    fn root_is_mounted_and_a_temp_dir_is_not() {
        assert!(mounted(Path::new("/")).is_some());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mounted(&normalize(dir.path()).unwrap()), None);
        assert!(is_view("fuse", "nlxtp") && is_view("fuse.nlxtp", "nlxtp"));
        assert!(!is_view("fuse.sshfs", "host:") && !is_view("ext4", "nlxtp"));
    }
}
