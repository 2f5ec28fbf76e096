//! The monitor: runs one upload's start script and keeps its status record.
//!
//! One thread, one `poll` loop over the script's output pipes, the status request pipe,
//! a signalfd and a pidfd. It is the only writer of the status file. Promises (see
//! `docs/wire-format.md`): a record at least every heartbeat interval until the run
//! ends; each record written whole and flushed; output captured up to a cap, with the
//! cut recorded; a final record with the exit code or signal.
//!
//! A stop (SIGTERM, SIGINT or SIGHUP: `systemctl stop`, a shutdown, the daemon passing
//! one on) while the script runs: the final record, "stopped by the system" with the
//! signal, is written first; only then does the script's process group get SIGTERM (and
//! SIGKILL after `KILL_GRACE_MS`). Processes the script leaves running when it exits by
//! itself are not the monitor's to stop: they outlive the run.

use core::ffi::CStr;

use nlxtp_core::layout;
use nlxtp_core::live::Stream;
use nlxtp_core::{AbortReason, RunState, StatusRecord};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::{
    kill_process_group, pidfd_open, waitpid, Pid, PidfdFlags, Signal, WaitOptions, WaitStatus,
};

use crate::area::{Area, StatusFile};
use crate::capture::Capture;
use crate::clock::{now_ms, timespec_ms, unix_secs, Uptime};
use crate::custom::{self, CustomWatch};
use crate::live::LiveRing;
use crate::shebang::Command;
use crate::spawn::{start_script, StartError, Started};
use crate::sys::{self, take_signal, CStrList};

/// How the monitor behaves; defaults come from the daemon, the manifest may override.
#[derive(Debug, Clone, Copy)]
pub struct MonitorConfig {
    /// Promised interval between records while the run goes on.
    pub heartbeat_ms: u32,
    /// Cap on each captured output stream.
    pub output_cap: u64,
    /// Kill the script after this long.
    pub timeout_ms: Option<u64>,
}

/// After SIGTERM, how long the script's process group gets before SIGKILL.
const KILL_GRACE_MS: u64 = 5_000;
/// After the script exits, how long to keep reading output its children still write.
const DRAIN_GRACE_MS: u64 = 2_000;
/// The least time between two records (custom status changes are coalesced).
const MIN_WRITE_GAP_MS: u64 = 100;
/// How often new output in the live ring is flushed to the disk: the host sees output
/// within about this long plus its poll interval.
const LIVE_FLUSH_MS: u64 = 500;

/// Runs the script of the run described by `record` (already on disk as pending) and
/// returns the process exit code for the monitor (0 when the run was recorded).
pub fn run(
    area: &Area,
    area_path: &CStr,
    mut record: StatusRecord,
    mut status: StatusFile,
    config: MonitorConfig,
    env: CStrList,
) -> i32 {
    sys::ignore_sigpipe();
    let signals = match sys::signalfd_for_termination() {
        Ok(fd) => Some(fd),
        Err(e) => {
            crate::log!(warning: "cannot watch for SIGTERM ({e:?}); a stop will not be recorded");
            None
        }
    };
    let captures = (
        area.create_output(layout::STDOUT_FILE),
        area.create_output(layout::STDERR_FILE),
    );
    let files = match captures {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            let why = format_args!("cannot create output files (errno {})", e.raw_os_error());
            return finish_early(&mut status, &mut record, e, why, None);
        }
    };
    let command = match Command::read(area.dir()) {
        Ok(command) => command,
        Err(problem) => {
            let errno = problem.errno();
            let why = format_args!("{problem}");
            return finish_early(&mut status, &mut record, errno, why, Some(&files.1));
        }
    };
    if let Err(e) = area.create_custom(record.run_id) {
        crate::log!(
            warning: "cannot create the custom status file ({e:?}); archive_setstatus will fail"
        );
    }
    // Watched before the script starts: its first helper's write is not missed.
    let custom = CustomWatch::new(record.run_id, area_path);
    let started = match start_script(area.dir(), area_path, record.run_id, &command, env) {
        Ok(started) => started,
        Err(StartError::Exec(e)) => {
            let why = format_args!("{}", command.exec_failure(e));
            return finish_early(&mut status, &mut record, e, why, Some(&files.1));
        }
        Err(StartError::System(e)) => {
            let why = format_args!("cannot start auto_exec.sh (errno {})", e.raw_os_error());
            return finish_early(&mut status, &mut record, e, why, Some(&files.1));
        }
    };
    let mut run = Run::new(
        area, started, files, signals, status, record, custom, &config,
    );
    let state = run.supervise(area);
    run.finish(area, state);
    0
}

/// Every deadline of the monitor's loop, in milliseconds on the monotonic clock.
struct Timers {
    heartbeat_ms: u64,
    /// When the run times out, if it has a timeout.
    deadline: Option<u64>,
    next_beat: u64,
    /// When SIGTERM went to the script's process group (timeout or stop request).
    term_sent: Option<u64>,
    kill_sent: bool,
    /// SIGTERM was the timeout's: a death by signal is recorded as a timeout.
    timed_out: bool,
    /// How the script ended and when that was seen; from then on only output drains.
    exited: Option<(RunState, u64)>,
    /// The run was stopped by the system and recorded so (with the signal).
    stopped: Option<RunState>,
    /// A record is owed, held back until `MIN_WRITE_GAP_MS` after the last one.
    want_write: bool,
    last_write: u64,
    last_live_flush: u64,
    /// Without inotify: when the custom status file was last looked at.
    last_custom_poll: Option<u64>,
}

impl Timers {
    /// The timers of a run that started at `start` and wrote its first record then.
    fn new(start: u64, config: &MonitorConfig) -> Timers {
        Timers {
            heartbeat_ms: u64::from(config.heartbeat_ms),
            deadline: config.timeout_ms.map(|t| start.saturating_add(t)),
            next_beat: start + u64::from(config.heartbeat_ms),
            term_sent: None,
            kill_sent: false,
            timed_out: false,
            exited: None,
            stopped: None,
            want_write: false,
            last_write: start,
            last_live_flush: start,
            last_custom_poll: None,
        }
    }

    /// Whether the timeout has passed before any SIGTERM; if so, marks SIGTERM as sent
    /// now, for the timeout.
    fn take_timeout(&mut self, now: u64) -> bool {
        let due = self.deadline.is_some_and(|d| now >= d) && self.term_sent.is_none();
        if due {
            self.timed_out = true;
            self.term_sent = Some(now);
        }
        due
    }

    /// Whether SIGTERM has had its grace period and SIGKILL is due; if so, marks it sent.
    fn take_kill(&mut self, now: u64) -> bool {
        let due = self.term_sent.is_some_and(|t| now >= t + KILL_GRACE_MS) && !self.kill_sent;
        self.kill_sent |= due;
        due
    }

    /// A stop request sent SIGTERM at `now` (a timeout's earlier SIGTERM keeps its time).
    fn stop_requested(&mut self, now: u64) {
        self.term_sent.get_or_insert(now);
    }

    /// Notes that the script ended at `now` with `status`.
    fn note_exit(&mut self, status: WaitStatus, now: u64) {
        let state = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => RunState::Exited(code),
            (None, Some(sig)) if self.timed_out => RunState::TimedOut(sig),
            (None, Some(sig)) => RunState::Signaled(sig),
            (None, None) => RunState::Exited(-1),
        };
        self.exited = Some((state, now));
    }

    /// How the run ended, once the script has exited and its output is closed
    /// (`output_open` false) or has had its drain grace. A recorded stop stays the end,
    /// whatever the script's exit.
    fn ended(&self, now: u64, output_open: bool) -> Option<RunState> {
        let (state, at) = self.exited?;
        let state = self.stopped.unwrap_or(state);
        (!output_open || now >= at + DRAIN_GRACE_MS).then_some(state)
    }

    /// Whether a heartbeat is due; if so, schedules the next one and owes a record.
    fn take_heartbeat(&mut self, now: u64) -> bool {
        let due = now >= self.next_beat;
        if due {
            self.next_beat = now + self.heartbeat_ms;
            self.want_write = true;
        }
        due
    }

    /// Without inotify, whether it is time to look at the custom status file; if so,
    /// notes the look.
    fn take_custom_poll(&mut self, now: u64, polled: bool) -> bool {
        let due = polled
            && self
                .last_custom_poll
                .is_none_or(|at| now >= at + custom::POLL_MS);
        if due {
            self.last_custom_poll = Some(now);
        }
        due
    }

    fn live_flush_due(&self, now: u64) -> bool {
        now >= self.last_live_flush + LIVE_FLUSH_MS
    }

    fn write_due(&self, now: u64) -> bool {
        self.want_write && now >= self.last_write + MIN_WRITE_GAP_MS
    }

    fn wrote(&mut self, now: u64) {
        self.last_write = now;
        self.want_write = false;
    }

    /// When the loop must wake up even if nothing happens: the earliest deadline still
    /// pending. Without a pidfd, every 100 ms to ask waitpid. After a recorded stop no
    /// record is due any more: only the kill, the drain and the output.
    fn next_wake(&self, now: u64, live_unflushed: bool, have_pidfd: bool) -> u64 {
        let recording = self.stopped.is_none();
        let mut wake = if recording {
            self.next_beat
        } else {
            now + 1_000
        };
        if self.want_write && recording {
            wake = wake.min(self.last_write + MIN_WRITE_GAP_MS);
        }
        if let Some(d) = self.deadline.filter(|_| self.term_sent.is_none()) {
            wake = wake.min(d);
        }
        if let Some(t) = self.term_sent.filter(|_| !self.kill_sent) {
            wake = wake.min(t + KILL_GRACE_MS);
        }
        if live_unflushed {
            wake = wake.min(self.last_live_flush + LIVE_FLUSH_MS);
        }
        if let Some(at) = self.last_custom_poll.filter(|_| recording) {
            wake = wake.min(at + custom::POLL_MS);
        }
        if let Some((_, at)) = self.exited {
            wake = wake.min(at + DRAIN_GRACE_MS);
        } else if !have_pidfd {
            wake = wake.min(now + 100);
        }
        wake
    }
}

/// A started script and everything the monitor keeps about it.
struct Run {
    pid: Pid,
    /// Without pidfd (kernels before 5.3) the loop wakes often and asks waitpid.
    pidfd: Option<OwnedFd>,
    signals: Option<OwnedFd>,
    status: StatusFile,
    record: StatusRecord,
    out: Capture,
    err: Capture,
    custom: CustomWatch,
    live: Option<LiveRing>,
    timers: Timers,
    /// A stop signal came after the script had ended.
    told_to_stop: bool,
}

impl Run {
    /// Takes over the started script and writes the first "running" record.
    #[allow(clippy::too_many_arguments)] // One caller; each is a separate part of the run.
    fn new(
        area: &Area,
        started: Started,
        (out_file, err_file): (OwnedFd, OwnedFd),
        signals: Option<OwnedFd>,
        status: StatusFile,
        mut record: StatusRecord,
        custom: CustomWatch,
        config: &MonitorConfig,
    ) -> Run {
        let live = match area.create_live() {
            Ok(fd) => Some(LiveRing::new(fd)),
            Err(e) => {
                crate::log!(warning: "no live output ring ({e:?}); output is still captured");
                None
            }
        };
        let pid = started.pid;
        crate::log!(
            "run {} started (pid {}, uptime {})",
            record.run_id,
            pid.as_raw_nonzero(),
            Uptime::now()
        );
        let out = Capture::new(Stream::Stdout, started.stdout, out_file, config.output_cap);
        let err = Capture::new(Stream::Stderr, started.stderr, err_file, config.output_cap);
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).ok();
        let start = now_ms();
        record.state = RunState::Running;
        record.heartbeat_interval_ms = config.heartbeat_ms;
        record.started_unix = Some(unix_secs());
        let mut run = Run {
            pid,
            pidfd,
            signals,
            status,
            record,
            out,
            err,
            custom,
            live,
            timers: Timers::new(start, config),
            told_to_stop: false,
        };
        run.write_record();
        run
    }

    /// The main loop, until the script has exited and its output is drained; returns
    /// how the run ended.
    fn supervise(&mut self, area: &Area) -> RunState {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let now = now_ms();
            if self.timers.exited.is_none() {
                self.watch_script(now);
            }
            if let Some(state) = self.timers.ended(now, self.output_open()) {
                return state;
            }
            self.keep_promises(now, area);
            self.wait(now);
            match self.take_input(&mut buf) {
                Some(signal) if self.timers.exited.is_none() => self.stop(area, signal),
                // The script has ended by itself: the run's end stands, and the monitor
                // does not linger for output.
                Some(_) => self.told_to_stop = true,
                None => {}
            }
        }
    }

    /// The system stops the run (`signal` came while the script runs): records that as
    /// the run's end, then stops the script's process group, SIGTERM first.
    fn stop(&mut self, area: &Area, signal: i32) {
        if self.timers.stopped.is_some() {
            return;
        }
        if let Some(live) = &mut self.live {
            live.flush();
        }
        let _ = area.sync();
        self.custom.refresh(area, &mut self.record.custom);
        let state = RunState::Aborted(AbortReason::StoppedBySystem(signal));
        self.record.state = state;
        self.record.finished_unix = Some(unix_secs());
        self.write_record();
        self.timers.stopped = Some(state);
        crate::log!(
            warning: "run {} {state}: recorded; stopping the script",
            self.record.run_id
        );
        let _ = kill_process_group(self.pid, Signal::TERM);
        self.timers.stop_requested(now_ms());
    }

    /// Enforces the timeout (SIGTERM, then SIGKILL) and notices the script's exit.
    fn watch_script(&mut self, now: u64) {
        if self.timers.take_timeout(now) {
            crate::log!(warning: "run {} timed out; stopping it", self.record.run_id);
            let _ = kill_process_group(self.pid, Signal::TERM);
        }
        if self.timers.take_kill(now) {
            let _ = kill_process_group(self.pid, Signal::KILL);
        }
        if let Ok(Some((_, st))) = waitpid(Some(self.pid), WaitOptions::NOHANG) {
            self.timers.note_exit(st, now);
        }
    }

    /// The heartbeat, the custom status, the live-output flush and the owed record,
    /// each when due. After a recorded stop, only the output: the record is final.
    fn keep_promises(&mut self, now: u64, area: &Area) {
        if self.timers.stopped.is_some() {
            if let Some(live) = self.live.as_mut().filter(|l| l.has_unflushed()) {
                live.flush();
            }
            return;
        }
        let beat = self.timers.take_heartbeat(now);
        if beat {
            self.record.heartbeat += 1;
        }
        let polled = self.timers.take_custom_poll(now, self.custom.polled());
        // Also at each heartbeat: a missed event (a full inotify queue) costs one beat.
        if (self.custom.due() || polled || beat)
            && self.custom.refresh(area, &mut self.record.custom)
        {
            self.timers.want_write = true;
        }
        if self.live_unflushed() && self.timers.live_flush_due(now) {
            if let Some(live) = &mut self.live {
                live.flush();
            }
            self.timers.last_live_flush = now;
        }
        if self.timers.write_due(now) {
            self.write_record();
            self.timers.wrote(now);
        }
    }

    /// Sleeps until there is output, a status request, a signal or the script's exit,
    /// or until the next deadline.
    fn wait(&self, now: u64) {
        let wake = self
            .timers
            .next_wake(now, self.live_unflushed(), self.pidfd.is_some());
        let pidfd = self.pidfd.as_ref().filter(|_| self.timers.exited.is_none());
        let watched = [
            self.out.fd(),
            self.err.fd(),
            self.custom.fd(),
            borrow(self.signals.as_ref()),
            borrow(pidfd),
        ];
        match poll_in(&watched, wake.saturating_sub(now)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                crate::log!(error: "poll failed: {e:?}");
                crate::clock::sleep_ms(100);
            }
        }
    }

    /// Reads the script's output and custom status events; returns a stop signal.
    fn take_input(&mut self, buf: &mut [u8]) -> Option<i32> {
        self.out.pump(buf, &mut self.live);
        self.err.pump(buf, &mut self.live);
        self.custom.pump();
        take_signal(self.signals.as_ref()?.as_fd())
    }

    /// Records how the run ended, then keeps capturing what is still written. After a
    /// recorded stop: the final byte counts only, and no lingering (the system is
    /// stopping).
    fn finish(&mut self, area: &Area, state: RunState) {
        if let Some(live) = &mut self.live {
            live.flush();
        }
        // Results the script wrote into the shared area reach the disk before "done" does.
        let _ = area.sync();
        if self.timers.stopped.is_some() {
            self.write_record();
            return;
        }
        self.custom.refresh(area, &mut self.record.custom);
        self.record.state = state;
        self.record.finished_unix = Some(unix_secs());
        self.write_record();
        crate::log!("run {} {}", self.record.run_id, state);
        self.linger();
    }

    /// Children of the script that still hold its output open: keep capturing until
    /// they close it (or the monitor is told to stop), then record the final byte
    /// counts with the same terminal state.
    fn linger(&mut self) {
        if !self.output_open() || self.told_to_stop {
            return;
        }
        let counted = (self.record.stdout, self.record.stderr);
        let mut buf = [0u8; 16 * 1024];
        while self.output_open() {
            let watched = [self.out.fd(), self.err.fd(), borrow(self.signals.as_ref())];
            let stop = matches!(poll_in(&watched, 1_000), Ok(ready) if ready[2]);
            self.out.pump(&mut buf, &mut self.live);
            self.err.pump(&mut buf, &mut self.live);
            if let Some(live) = &mut self.live {
                live.flush();
            }
            if stop {
                break;
            }
        }
        if (self.out.info(), self.err.info()) != counted {
            self.write_record();
        }
    }

    fn output_open(&self) -> bool {
        self.out.fd().is_some() || self.err.fd().is_some()
    }

    fn live_unflushed(&self) -> bool {
        self.live.as_ref().is_some_and(LiveRing::has_unflushed)
    }

    /// Flushes the captured output, then writes the record.
    fn write_record(&mut self) {
        self.out.flush();
        self.err.flush();
        self.record.stdout = self.out.info();
        self.record.stderr = self.err.info();
        self.record.updated_unix = unix_secs();
        if let Err(e) = self.status.write(&mut self.record) {
            crate::log!(error: "cannot write the status file: {e:?}");
        }
    }
}

fn borrow(fd: Option<&OwnedFd>) -> Option<BorrowedFd<'_>> {
    fd.map(|fd| fd.as_fd())
}

/// The most descriptors the monitor polls at once.
const WATCHED_MAX: usize = 5;

/// Polls the descriptors of `watched` that are there for input, for at most `ms`;
/// says which of them have some.
fn poll_in(watched: &[Option<BorrowedFd<'_>>], ms: u64) -> Result<[bool; WATCHED_MAX], Errno> {
    let mut fds: heapless::Vec<PollFd<'_>, WATCHED_MAX> = heapless::Vec::new();
    for fd in watched.iter().flatten() {
        let _ = fds.push(PollFd::new(fd, PollFlags::IN));
    }
    poll(&mut fds, Some(&timespec_ms(ms)))?;
    let mut ready = [false; WATCHED_MAX];
    let mut polled = fds.iter();
    for (ready, fd) in ready.iter_mut().zip(watched) {
        if fd.is_some() {
            *ready = polled
                .next()
                .is_some_and(|fd| fd.revents().contains(PollFlags::IN));
        }
    }
    Ok(ready)
}

/// Records a run that could not start, with `errno` in the record and `why` in the
/// daemon's log and, when there is one, in the captured standard error the host reads.
fn finish_early(
    status: &mut StatusFile,
    record: &mut StatusRecord,
    errno: Errno,
    why: core::fmt::Arguments<'_>,
    stderr: Option<&OwnedFd>,
) -> i32 {
    crate::log!(warning: "run {}: {why}", record.run_id);
    if let Some(file) = stderr {
        use core::fmt::Write as _;
        let mut line = sys::Line::new();
        let _ = writeln!(line, "nlxtp-guest: {why}");
        if sys::write_all(file.as_fd(), line.0.as_bytes()).is_ok() {
            record.stderr.bytes = line.0.len() as u64;
            let _ = rustix::fs::fdatasync(file);
        }
    }
    record.state = RunState::StartFailed(errno.raw_os_error());
    record.finished_unix = Some(unix_secs());
    record.updated_unix = unix_secs();
    match status.write(record) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
