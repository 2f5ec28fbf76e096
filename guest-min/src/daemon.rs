//! The daemon: finds the shared area, decides whether an upload is new, and starts a
//! monitor for it exactly once.
//!
//! In a VM it runs once at boot (uploads only happen while the VM is off). In a
//! container it keeps watching the directory (inotify, and a 1 s poll as a fallback)
//! and reacts to uploads that arrive while it runs.

use core::ffi::CStr;

use nlxtp_core::{
    AbortReason, BootId, Liveness, LivenessPolicy, Manifest, RunId, RunState, StatusRecord, Verdict,
};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::inotify;
use rustix::io::Errno;
use rustix::process::{kill_process, pidfd_open, waitpid, Pid, PidfdFlags, Signal, WaitOptions};

use crate::area::{Area, ManifestRead, ScriptKind};
use crate::clock::{now_ms, sleep_ms, timespec_ms, unix_secs, Uptime};
use crate::monitor::{self, MonitorConfig};
use crate::sys::{take_signal, CStrList};
use nlxtp_core::DecodeError;

/// How the daemon was asked to run.
#[derive(Debug, Clone, Copy)]
pub struct DaemonConfig<'a> {
    /// The shared area's root (a directory, or the mount point of the disk).
    pub area_path: &'a CStr,
    /// Keep watching for new uploads (containers) instead of handling one and exiting.
    pub watch: bool,
    /// Default heartbeat interval, unless the manifest asks for another.
    pub heartbeat_ms: u32,
    /// Default output cap per stream, unless the manifest asks for another.
    pub output_cap: u64,
    /// Overrides the kernel's boot id (a container that wants its own boot identity).
    pub boot_id: Option<BootId>,
}

/// What the daemon should do about the shared area right now.
enum Action {
    /// Nothing to do (no upload, or the upload's run is settled or has a monitor).
    Idle,
    /// Something is in flux (an upload being written, a monitor that may be alive):
    /// look again soon.
    Wait,
    /// A new upload: start its run.
    Start(Manifest),
}

/// A manifest-less start script must be unchanged this long before it counts as whole.
const SETTLE_MS: u64 = 1_000;
/// How long a partial manifest or a torn status file may stay so before it is treated
/// as broken rather than in progress.
const FLUX_LIMIT_MS: u64 = 3_000;
/// How long a monitor that is asked to stop gets to record its end and stop its script
/// (it gives the script 5 s after SIGTERM) before SIGKILL.
const STOP_GRACE_MS: u64 = 10_000;

struct Daemon<'a> {
    config: DaemonConfig<'a>,
    area: Area,
    boot_id: BootId,
    env: CStrList,
    child: Option<(Pid, RunId)>,
    settle: Option<((u64, i64, u64), u64)>,
    in_flux_since: Option<u64>,
    liveness: Liveness,
    /// SIGTERM, SIGINT and SIGHUP, as events: a stop of the service reaches the daemon
    /// first, and goes on to the monitor.
    signals: Option<OwnedFd>,
}

/// Runs the daemon; returns the process exit code.
pub fn run(config: DaemonConfig<'_>, env: CStrList) -> i32 {
    let area = match Area::open(config.area_path) {
        Ok(area) => area,
        Err(e) => {
            crate::log!(error: "cannot open the shared area {:?}: {e:?}", config.area_path);
            return 1;
        }
    };
    let signals = match crate::sys::signalfd_for_termination() {
        Ok(fd) => Some(fd),
        Err(e) => {
            crate::log!(
                warning: "cannot watch for SIGTERM ({e:?}); a stop will end the daemon at once"
            );
            None
        }
    };
    let boot_id = config.boot_id.unwrap_or_else(kernel_boot_id);
    crate::log!(
        "daemon watching {:?} (boot {boot_id}, uptime {})",
        config.area_path,
        Uptime::now()
    );
    let mut daemon = Daemon {
        config,
        area,
        boot_id,
        env,
        child: None,
        settle: None,
        in_flux_since: None,
        liveness: Liveness::new(LivenessPolicy::default()),
        signals,
    };
    let watcher = if config.watch {
        watch(config.area_path)
    } else {
        None
    };
    loop {
        daemon.reap(WaitOptions::NOHANG);
        let action = daemon.decide();
        let settled = match action {
            Action::Start(manifest) => {
                daemon.start(manifest);
                true
            }
            Action::Idle => true,
            Action::Wait => false,
        };
        if !config.watch && settled {
            // A VM handles its one upload per boot, then waits for that run to end.
            daemon.wait_for_run();
            return 0;
        }
        if let Some(signal) = wait_for_change(watcher.as_ref(), daemon.signals.as_ref(), 1_000) {
            daemon.stop_run(signal);
            return 0;
        }
    }
}

impl Daemon<'_> {
    fn decide(&mut self) -> Action {
        let script = self.area.script();
        if script == ScriptKind::Missing {
            self.settle = None;
            return Action::Idle;
        }
        let manifest = match self.area.read_manifest() {
            ManifestRead::Valid(manifest) => manifest,
            ManifestRead::Partial if !self.flux_timed_out() => return Action::Wait,
            other => match self.adopt_script(other) {
                Some(manifest) => manifest,
                None => return Action::Wait,
            },
        };
        if self.child.is_some_and(|(_, run)| run == manifest.run_id) {
            self.in_flux_since = None;
            return Action::Idle;
        }
        match self.area.read_status() {
            Ok(record) if record.run_id == manifest.run_id => {
                self.in_flux_since = None;
                self.settle_old_run(record)
            }
            Ok(_) | Err(DecodeError::NotThereYet) => {
                self.in_flux_since = None;
                match script {
                    ScriptKind::Unusable(errno) => {
                        self.record_unstartable(&manifest, errno);
                        Action::Idle
                    }
                    _ => Action::Start(manifest),
                }
            }
            Err(DecodeError::Torn) if !self.flux_timed_out() => Action::Wait,
            Err(e) => {
                // A status file we cannot read may belong to this upload: running it again
                // could run it twice. Record why it does not run, and leave it.
                crate::log!(
                    error: "status file unreadable ({e}); not starting run {} again",
                    manifest.run_id
                );
                self.in_flux_since = None;
                self.record_unstartable(&manifest, Errno::BADMSG);
                Action::Idle
            }
        }
    }

    /// A status record of this upload exists: the run happened or is happening.
    fn settle_old_run(&mut self, record: StatusRecord) -> Action {
        if record.state.is_terminal() {
            return Action::Idle;
        }
        if record.boot_id != self.boot_id {
            crate::log!(
                warning: "run {} was cut off by a restart; recording it as aborted",
                record.run_id
            );
            self.close_run(record, AbortReason::GuestRestarted);
            return Action::Idle;
        }
        // Same boot and not our child: a monitor from an earlier daemon may still be
        // alive. Watch its heartbeat before declaring it dead.
        match self.liveness.observe(now_ms(), Some(&record)) {
            Verdict::MonitorLost { .. } => {
                crate::log!(
                    warning: "run {}: its monitor died; recording it as aborted",
                    record.run_id
                );
                self.close_run(record, AbortReason::MonitorDied);
                Action::Idle
            }
            _ => Action::Wait,
        }
    }

    fn close_run(&mut self, mut record: StatusRecord, reason: AbortReason) {
        record.state = RunState::Aborted(reason);
        record.boot_id = self.boot_id;
        record.updated_unix = unix_secs();
        record.finished_unix = Some(unix_secs());
        let written = self
            .area
            .open_status()
            .and_then(|mut status| status.write(&mut record));
        if let Err(e) = written {
            crate::log!(error: "cannot record the aborted run: {e:?}");
        }
    }

    fn record_unstartable(&mut self, manifest: &Manifest, errno: Errno) {
        let mut record = self.fresh_record(manifest);
        record.state = RunState::StartFailed(errno.raw_os_error());
        record.finished_unix = Some(unix_secs());
        crate::log!(warning: "run {} cannot start: {}", manifest.run_id, record.state);
        if let Err(e) = self.area.create_status(&mut record) {
            crate::log!(error: "cannot write the status file: {e:?}");
        }
    }

    /// An `auto_exec.sh` without a usable manifest (dropped in by hand, or by the
    /// original implementation's host): once it has stopped changing, give it a manifest
    /// with a fresh run id so that it, too, runs exactly once.
    fn adopt_script(&mut self, manifest: ManifestRead) -> Option<Manifest> {
        let now = now_ms();
        let print = self.area.script_fingerprint()?;
        match self.settle {
            Some((seen, since)) if seen == print && now >= since + SETTLE_MS => {}
            Some((seen, _)) if seen == print => return None,
            _ => {
                self.settle = Some((print, now));
                return None;
            }
        }
        self.settle = None;
        if let ManifestRead::Corrupt(e) = manifest {
            crate::log!(
                warning: "manifest unreadable ({e}); treating auto_exec.sh as a new upload"
            );
        }
        let mut run_id = RunId::default();
        if rustix::rand::getrandom(&mut run_id.0, rustix::rand::GetRandomFlags::empty()).is_err() {
            // No entropy source: time and pid still make the id unique on this guest.
            run_id.0[..8].copy_from_slice(&now.to_le_bytes());
            run_id.0[8..12].copy_from_slice(
                &rustix::process::getpid()
                    .as_raw_nonzero()
                    .get()
                    .to_le_bytes(),
            );
        }
        let manifest = Manifest {
            run_id,
            created_unix: unix_secs(),
            ..Default::default()
        };
        match self.area.write_manifest(&manifest) {
            Ok(()) => Some(manifest),
            Err(e) => {
                crate::log!(error: "cannot write a manifest: {e:?}");
                None
            }
        }
    }

    fn flux_timed_out(&mut self) -> bool {
        let now = now_ms();
        let since = *self.in_flux_since.get_or_insert(now);
        now >= since + FLUX_LIMIT_MS
    }

    fn fresh_record(&self, manifest: &Manifest) -> StatusRecord {
        StatusRecord {
            run_id: manifest.run_id,
            boot_id: self.boot_id,
            state: RunState::Pending,
            heartbeat_interval_ms: manifest
                .heartbeat_interval_ms
                .unwrap_or(self.config.heartbeat_ms),
            updated_unix: unix_secs(),
            ..Default::default()
        }
    }

    fn start(&mut self, manifest: Manifest) {
        if let Some((pid, run)) = self.child.take() {
            crate::log!("a new upload replaces run {run}; stopping it");
            stop(pid, Signal::TERM);
        }
        let mut record = self.fresh_record(&manifest);
        // The pending record on disk is the "seen" mark: from here on this upload is
        // never started again, whatever happens to the guest.
        let status = match self.area.create_status(&mut record) {
            Ok(status) => status,
            Err(e) => {
                crate::log!(
                    error: "cannot create the status file ({e:?}); run {} not started",
                    manifest.run_id
                );
                return;
            }
        };
        let config = MonitorConfig {
            heartbeat_ms: record.heartbeat_interval_ms,
            output_cap: manifest.output_cap_bytes.unwrap_or(self.config.output_cap),
            timeout_ms: manifest.timeout_secs.map(|s| u64::from(s) * 1_000),
        };
        match crate::sys::fork() {
            Ok(None) => {
                // The monitor watches for signals itself.
                drop(self.signals.take());
                let code = monitor::run(
                    &self.area,
                    self.config.area_path,
                    record,
                    status,
                    config,
                    self.env,
                );
                crate::sys::exit_now(code);
            }
            Ok(Some(pid)) => self.child = Some((pid, manifest.run_id)),
            Err(e) => {
                crate::log!(error: "cannot fork the monitor: {e:?}");
                let mut status = status;
                record.state = RunState::StartFailed(e.raw_os_error());
                let _ = status.write(&mut record);
            }
        }
    }

    fn reap(&mut self, options: WaitOptions) {
        if let Some((pid, _)) = self.child {
            if !matches!(waitpid(Some(pid), options), Ok(None)) {
                self.child = None;
            }
        }
    }

    /// After a VM's one start: waits until the run has ended. A stop signal meanwhile
    /// goes on to the monitor, which records the stop before it stops the script.
    fn wait_for_run(&mut self) {
        let Some((pid, _)) = self.child else { return };
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).ok();
        loop {
            self.reap(WaitOptions::NOHANG);
            if self.child.is_none() {
                return;
            }
            let mut fds: heapless::Vec<PollFd<'_>, 2> = heapless::Vec::new();
            for fd in [pidfd.as_ref(), self.signals.as_ref()]
                .into_iter()
                .flatten()
            {
                let _ = fds.push(PollFd::new(fd, PollFlags::IN));
            }
            // Without a pidfd (kernels before 5.3), ask waitpid every 100 ms.
            let ms = if pidfd.is_some() { 60_000 } else { 100 };
            let _ = poll(&mut fds, Some(&timespec_ms(ms)));
            drop(fds);
            let signal = self.signals.as_ref().and_then(|fd| take_signal(fd.as_fd()));
            if let Some(signal) = signal {
                self.stop_run(signal);
                return;
            }
        }
    }

    /// The daemon got `signal` (a stop of the service, a shutdown): the monitor gets it
    /// too, and the daemon waits (bounded) until it has recorded the stop and ended.
    fn stop_run(&mut self, signal: i32) {
        let Some((pid, run)) = self.child.take() else {
            crate::log!("stopping (signal {signal}); no run in progress");
            return;
        };
        crate::log!("stopping (signal {signal}); the monitor of run {run} records the stop");
        stop(pid, Signal::from_named_raw(signal).unwrap_or(Signal::TERM));
    }
}

/// Asks a monitor to stop with `signal` (it records the end of its run), then makes sure.
fn stop(pid: Pid, signal: Signal) {
    let _ = kill_process(pid, signal);
    let until = now_ms() + STOP_GRACE_MS;
    while now_ms() < until {
        if !matches!(waitpid(Some(pid), WaitOptions::NOHANG), Ok(None)) {
            return;
        }
        sleep_ms(20);
    }
    let _ = kill_process(pid, Signal::KILL);
    let _ = waitpid(Some(pid), WaitOptions::empty());
}

fn watch(path: &CStr) -> Option<OwnedFd> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
    let mask = inotify::WatchFlags::CLOSE_WRITE
        | inotify::WatchFlags::MOVED_TO
        | inotify::WatchFlags::CREATE
        | inotify::WatchFlags::DELETE;
    match inotify::add_watch(&fd, path, mask) {
        Ok(_) => Some(fd),
        Err(e) => {
            crate::log!(warning: "inotify unavailable ({e:?}); polling every second");
            None
        }
    }
}

/// Waits for a change in the area's root, or a stop signal, or `ms` at most; returns
/// the signal.
fn wait_for_change(watcher: Option<&OwnedFd>, signals: Option<&OwnedFd>, ms: u64) -> Option<i32> {
    let mut fds: heapless::Vec<PollFd<'_>, 2> = heapless::Vec::new();
    for fd in [watcher, signals].into_iter().flatten() {
        let _ = fds.push(PollFd::new(fd, PollFlags::IN));
    }
    if fds.is_empty() {
        sleep_ms(ms);
        return None;
    }
    let _ = poll(&mut fds, Some(&timespec_ms(ms)));
    if let Some(signal) = signals.and_then(|fd| take_signal(fd.as_fd())) {
        return Some(signal);
    }
    let fd = watcher?;
    // Drain the events: what changed is read from the area itself.
    let mut buf = [0u8; 4096];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
    // Let a writer finish the burst of changes it is in the middle of.
    sleep_ms(20);
    None
}

/// The kernel's id for this boot (`/proc/sys/kernel/random/boot_id`), or a random one.
fn kernel_boot_id() -> BootId {
    let mut buf = [0u8; 64];
    let from_kernel = rustix::fs::open(
        "/proc/sys/kernel/random/boot_id",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
    .and_then(|fd| crate::area::read_fd(fd.as_fd(), &mut buf).ok())
    .and_then(|n| core::str::from_utf8(&buf[..n]).ok())
    .and_then(|text| BootId::from_hex(text.trim()));
    from_kernel.unwrap_or_else(|| {
        let mut id = BootId::default();
        let _ = rustix::rand::getrandom(&mut id.0, rustix::rand::GetRandomFlags::empty());
        id
    })
}
