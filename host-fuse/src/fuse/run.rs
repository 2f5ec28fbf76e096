//! The mount process: checks, the FUSE session, its threads (signals, control socket,
//! background commits), the event loop that reloads and unmounts, and the end.

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::config::{self, VmSpec};
use super::control::{self, Reply, Request};
use super::error::{chain, KeptError};
use super::fs::Fs;
use super::mountinfo::{comm, is_stale, is_view, mounted, normalize, unmount_now, users_of};
use super::view::View;
use super::{ConfigError, MountError, MountOptions};
use crate::area::AreaError;

/// How long an unmount waits for files the kernel is still closing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the mount process reacts to.
enum Event {
    Signal(i32),
    Control(Request, mpsc::Sender<Reply>),
    SessionEnded(io::Result<()>),
}

/// Runs the mount process in the foreground until it is unmounted.
pub(crate) fn serve(opts: &MountOptions) -> Result<(), MountError> {
    let cli: Vec<VmSpec> = opts
        .vms
        .iter()
        .map(|a| config::parse_vm_arg(a))
        .collect::<Result<_, _>>()?;
    let specs = config::collect_vms(&cli, &opts.libvirt, opts.config.as_deref())?;
    let mountpoint = check_mountpoint(&opts.mountpoint)?;
    let stage_dir = opts.stage_dir.clone().unwrap_or_else(std::env::temp_dir);
    let view = Arc::new(View::new(stage_dir));
    for spec in &specs {
        let area = spec.open().map_err(|source| MountError::Target {
            name: spec.name.clone(),
            source,
        })?;
        view.add_vm(&spec.name, &spec.shown(), area);
    }
    let socket = control::socket_path(&mountpoint);
    let listener = control::bind(&socket, &mountpoint)?;
    let session = fuser::Session::new(Fs(Arc::clone(&view)), &mountpoint, &fuse_config(opts))
        .map_err(|source| {
            let _ = std::fs::remove_file(&socket);
            MountError::Fuse {
                path: mountpoint.clone(),
                source,
            }
        })?;
    let notifier = session.notifier();
    let (session_thread, rx) = start_threads(session, listener, &socket)?;
    let ticker = Ticker::start(Arc::clone(&view));

    say(&format!(
        "nlxtp: mounted {} VM(s) at {} (pid {}); unmount with: nlxtp umount {}",
        specs.len(),
        mountpoint.display(),
        std::process::id(),
        mountpoint.display()
    ));
    let mut mount = Mount {
        view,
        opts,
        cli,
        notifier,
        mountpoint,
        ending: false,
    };
    let (result, session_ended) = mount.run(&rx);
    tracing::debug!(
        "the session ended ({result:?}), unmount requested: {}",
        mount.ending
    );
    ticker.stop();
    if session_ended {
        let _ = session_thread.join();
    }
    mount.finish(&socket, result)
}

/// The threads that feed the event loop: the FUSE session's, the signals', the control
/// socket's.
fn start_threads(
    session: fuser::Session<Fs>,
    listener: UnixListener,
    socket: &Path,
) -> Result<(JoinHandle<()>, mpsc::Receiver<Event>), MountError> {
    let (tx, rx) = mpsc::channel();
    let control_err = |source| MountError::Control {
        path: socket.to_owned(),
        source,
    };
    let session_tx = tx.clone();
    let session_thread = std::thread::Builder::new()
        .name("nlxtp-fuse".into())
        .spawn(move || {
            let _ = session_tx.send(Event::SessionEnded(session.run()));
        })
        .map_err(control_err)?;
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(control_err)?;
    let signal_tx = tx.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_tx.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        control::serve(&listener, |request| {
            let (reply_tx, reply_rx) = mpsc::channel();
            tx.send(Event::Control(request, reply_tx)).ok()?;
            reply_rx.recv().ok()
        });
    });
    Ok((session_thread, rx))
}

/// The mount point as it will be mounted (normalized), if it can be.
fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    if is_stale(path) {
        return Err(MountError::Stale {
            path: path.to_owned(),
        });
    }
    let bad_point = |source| MountError::MountPoint {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(bad_point)?.is_dir() {
        return Err(MountError::NotADirectory {
            path: path.to_owned(),
        });
    }
    let mountpoint = normalize(path).map_err(bad_point)?;
    if mounted(&mountpoint).is_some_and(|(t, s)| is_view(&t, &s)) {
        return Err(MountError::AlreadyMounted { path: mountpoint });
    }
    Ok(mountpoint)
}

/// fuser's options for the view.
fn fuse_config(opts: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(super::mountinfo::FS_NAME.into()),
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
    config
}

/// The background commits: [`View::tick`] every 100 ms until stopped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Ticker {
    fn start(view: Arc<View>) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                view.tick();
            }
        });
        Ticker { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// A mount being served.
struct Mount<'a> {
    view: Arc<View>,
    opts: &'a MountOptions,
    /// The VMs of the command line (a reload keeps them).
    cli: Vec<VmSpec>,
    notifier: fuser::Notifier,
    mountpoint: PathBuf,
    /// An unmount was asked for and has begun.
    ending: bool,
}

impl Mount<'_> {
    /// Handles events until the session ends (or, detached, a signal ends it): the
    /// session's result, and whether the session thread has ended.
    fn run(&mut self, events: &mpsc::Receiver<Event>) -> (io::Result<()>, bool) {
        loop {
            let Ok(event) = events.recv() else {
                return (Ok(()), false);
            };
            match event {
                Event::Signal(SIGHUP) => match self.reload() {
                    Ok(report) => tracing::warn!("reloaded: {report}"),
                    Err(e) => tracing::error!("reload failed, nothing changed: {}", chain(&e)),
                },
                // Detached (--lazy) and still serving open files: a signal ends it now;
                // what was written is committed, and the open files then fail.
                Event::Signal(signal) if self.ending => {
                    tell(&format!(
                        "signal {signal}: ending with files still open; committing what they wrote"
                    ));
                    return (Ok(()), false);
                }
                Event::Signal(signal) => self.on_signal(signal),
                Event::Control(request, reply) => {
                    let _ = reply.send(self.answer(request));
                }
                Event::SessionEnded(result) => {
                    // The kernel ends a session with ENODEV (fuser maps it to Ok) or, when
                    // the connection is torn down as the last user of a detached mount
                    // goes, with ECONNABORTED: both are an unmount, not a failure.
                    return match result {
                        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => (Ok(()), true),
                        other => (other, true),
                    };
                }
            }
        }
    }

    /// `SIGINT` or `SIGTERM`: unmount, unless files are open.
    fn on_signal(&mut self, signal: i32) {
        match self.unmount(false) {
            Reply::Unmounted { message } | Reply::Detached { message } => {
                tell(&format!("signal {signal}: {message}"));
            }
            Reply::Busy { message } | Reply::Failed { message } => tell(&format!(
                "signal {signal}: not unmounting {}: {message}\n  close them and signal again, or run: nlxtp umount --lazy {}",
                self.mountpoint.display(),
                self.mountpoint.display()
            )),
            other => unreachable!("an unmount does not answer {other:?}"),
        }
    }

    /// The answer to a control request.
    fn answer(&mut self, request: Request) -> Reply {
        match request {
            Request::Umount { .. } if self.ending => Reply::AlreadyUnmounting,
            Request::Umount { lazy } => self.unmount(lazy),
            Request::Reload => match self.reload() {
                Ok(report) => Reply::Reloaded {
                    report: report.to_string(),
                },
                Err(e) => Reply::Failed { message: chain(&e) },
            },
            Request::Ping => Reply::Pid {
                pid: std::process::id(),
            },
        }
    }

    /// Commits everything, then unmounts, unless files are open (and not `lazy`) or a
    /// commit fails: [`Reply::Unmounted`] or [`Reply::Detached`] (then the mount is
    /// ending), [`Reply::Busy`] or [`Reply::Failed`].
    fn unmount(&mut self, lazy: bool) -> Reply {
        let reply = unmount(&self.view, &self.mountpoint, lazy);
        if matches!(reply, Reply::Unmounted { .. } | Reply::Detached { .. }) {
            self.ending = true;
        }
        reply
    }

    /// Adds and removes VMs to match the command line and the config file now.
    fn reload(&self) -> Result<Reload, ConfigError> {
        let wanted =
            config::collect_vms(&self.cli, &self.opts.libvirt, self.opts.config.as_deref())?;
        let mut changes = Vec::new();
        for (name, target) in self.view.vm_list() {
            if wanted.iter().any(|w| w.name == name && w.shown() == target) {
                continue;
            }
            match self.view.remove_vm(&name) {
                Ok(()) => {
                    self.forget(&name);
                    changes.push(VmChange::Removed(name));
                }
                Err(why) => changes.push(VmChange::Kept(name, why)),
            }
        }
        let have = self.view.vm_list();
        for spec in wanted {
            if have.iter().any(|(n, _)| *n == spec.name) {
                continue;
            }
            match spec.open() {
                Ok(area) => {
                    self.view.add_vm(&spec.name, &spec.shown(), area);
                    self.forget(&spec.name);
                    changes.push(VmChange::Added(spec.name));
                }
                Err(e) => changes.push(VmChange::NotAdded(spec.name, e)),
            }
        }
        Ok(Reload(changes))
    }

    /// Tells the kernel that the root's entry `name` changed.
    fn forget(&self, name: &str) {
        let _ = self
            .notifier
            .inval_entry(fuser::INodeNo::ROOT, OsStr::new(name));
    }

    /// After the session: commits what is left, removes the socket, says what happened.
    fn finish(self, socket: &Path, result: io::Result<()>) -> Result<(), MountError> {
        let failed = self.view.commit_all();
        let _ = std::fs::remove_file(socket);
        for f in &failed {
            tell(&format!("lost uncommitted changes: {f}"));
        }
        if !self.ending {
            tell(&format!(
                "{} was unmounted from outside; everything pending was committed",
                self.mountpoint.display()
            ));
        }
        result.map_err(|source| MountError::Fuse {
            path: self.mountpoint,
            source,
        })
    }
}

/// What a reload changed.
struct Reload(Vec<VmChange>);

/// One VM's change in a reload.
enum VmChange {
    Removed(String),
    Kept(String, KeptError),
    Added(String),
    NotAdded(String, AreaError),
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no change");
        }
        for (i, change) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match change {
                VmChange::Removed(name) => write!(f, "removed {name}")?,
                VmChange::Kept(name, why) => write!(f, "kept {name}: {}", chain(why))?,
                VmChange::Added(name) => write!(f, "added {name}")?,
                VmChange::NotAdded(name, e) => write!(f, "could not add {name}: {}", chain(e))?,
            }
        }
        Ok(())
    }
}

/// Commits everything, then unmounts, unless files are open (and not `lazy`) or a
/// commit fails.
fn unmount(view: &View, mountpoint: &Path, lazy: bool) -> Reply {
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
        return Reply::Busy {
            message: format!("files are open:\n  {}", files.join("\n  ")),
        };
    }
    let failed = view.commit_all();
    if !failed.is_empty() {
        return Reply::Failed {
            message: format!(
                "changes could not be committed (the mount stays, so they are not lost):\n  {}",
                failed.join("\n  ")
            ),
        };
    }
    match unmount_now(mountpoint, lazy) {
        Ok(()) if lazy && !open.is_empty() => Reply::Detached {
            message: format!(
                "detached {}; {} open file(s) keep the mount process running, and what is written to them is committed when they are closed",
                mountpoint.display(),
                open.len()
            ),
        },
        Ok(()) => Reply::Unmounted {
            message: format!("committed everything and unmounted {}", mountpoint.display()),
        },
        Err(Errno::EBUSY) => {
            let users = users_of(mountpoint);
            Reply::Busy {
                message: if users.is_empty() {
                    "the kernel says the mount is in use".into()
                } else {
                    format!("in use:\n  {}", users.join("\n  "))
                },
            }
        }
        Err(e) => Reply::Failed {
            message: format!("unmounting failed: {e}"),
        },
    }
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
