//! The monitor: runs one upload's start script and keeps its status record.
//!
//! One thread, one `poll` loop over the script's output pipes, the status request pipe,
//! a signalfd and a pidfd. It is the only writer of the status file. Promises (see
//! `docs/wire-format.md`): a record at least every heartbeat interval until the run
//! ends; each record written whole and flushed; output captured up to a cap, with the
//! cut recorded; a final record with the exit code or signal.

use core::ffi::CStr;

use nlxtp_core::layout;
use nlxtp_core::live::Stream;
use nlxtp_core::record::CUSTOM_STATUS_MAX;
use nlxtp_core::{OutputInfo, RunState, StatusRecord};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::{kill_process_group, pidfd_open, waitpid, PidfdFlags, Signal, WaitOptions};

use crate::area::{Area, StatusFile};
use crate::clock::{now_ms, timespec_ms, unix_secs};
use crate::live::LiveRing;
use crate::spawn::{start_script, Started};
use crate::sys::{self, CStrList};

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

/// One captured output stream.
struct Capture {
    stream: Stream,
    pipe: Option<OwnedFd>,
    file: OwnedFd,
    info: OutputInfo,
    cap: u64,
    dirty: bool,
    failed: bool,
}

impl Capture {
    /// Reads what the pipe has and appends it up to the cap. Past the cap, or once the
    /// disk refused a write, output is read and dropped (so the script never blocks on
    /// a full pipe) and the cut is recorded.
    fn pump(&mut self, buf: &mut [u8], live: &mut Option<LiveRing>) {
        let Some(pipe) = self.pipe.take() else { return };
        loop {
            match rustix::io::read(&pipe, &mut *buf) {
                // End of output (or a broken pipe): `pipe` is dropped, closing it.
                Ok(0) => return,
                Ok(n) => self.append(&buf[..n], live),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(_) => return,
            }
        }
        self.pipe = Some(pipe);
    }

    fn append(&mut self, mut data: &[u8], live: &mut Option<LiveRing>) {
        let room = self.cap.saturating_sub(self.info.bytes);
        if self.failed || (data.len() as u64) > room {
            self.info.truncated = true;
        }
        if self.failed {
            return;
        }
        data = &data[..data.len().min(room as usize)];
        while !data.is_empty() {
            match rustix::io::write(&self.file, data) {
                Ok(n) if n > 0 => {
                    if let Some(live) = live {
                        live.push(self.stream, self.info.bytes, &data[..n]);
                    }
                    self.info.bytes += n as u64;
                    self.dirty = true;
                    data = &data[n..];
                }
                Err(Errno::INTR) => {}
                other => {
                    // A full disk (or any write error): keep the run going, record the cut.
                    crate::log!("output capture stopped: {:?}", other.err());
                    self.failed = true;
                    self.info.truncated = true;
                    return;
                }
            }
        }
    }

    fn flush(&mut self) {
        if self.dirty {
            let _ = rustix::fs::fdatasync(&self.file);
            self.dirty = false;
        }
    }
}

/// Reassembles `archive_setstatus` messages (`u32` length, little endian, then UTF-8).
struct Requests {
    pipe: Option<OwnedFd>,
    pending: heapless::Vec<u8, { 2 * (CUSTOM_STATUS_MAX + 4) }>,
}

impl Requests {
    /// Reads what is there; returns the newest complete text, if any.
    fn pump(&mut self, custom: &mut nlxtp_core::CustomStatus) -> bool {
        let Some(pipe) = self.pipe.take() else {
            return false;
        };
        let mut changed = false;
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(&pipe, &mut buf) {
                // Every writer has gone: `pipe` is dropped, closing it.
                Ok(0) => return changed,
                Err(Errno::AGAIN) => break,
                Ok(n) => {
                    if self.pending.extend_from_slice(&buf[..n]).is_err() {
                        // Garbage no helper writes: drop it and resynchronise.
                        self.pending.clear();
                    }
                    changed |= self.take(custom);
                }
                Err(Errno::INTR) => {}
                Err(_) => return changed,
            }
        }
        self.pipe = Some(pipe);
        changed
    }

    fn take(&mut self, custom: &mut nlxtp_core::CustomStatus) -> bool {
        let mut changed = false;
        while self.pending.len() >= 4 {
            let len = u32::from_le_bytes([
                self.pending[0],
                self.pending[1],
                self.pending[2],
                self.pending[3],
            ]) as usize;
            if len > CUSTOM_STATUS_MAX {
                self.pending.clear();
                break;
            }
            if self.pending.len() < 4 + len {
                break;
            }
            if let Ok(text) = core::str::from_utf8(&self.pending[4..4 + len]) {
                custom.clear();
                let _ = custom.push_str(text);
                changed = true;
            }
            let rest = self.pending.len() - (4 + len);
            self.pending.copy_within(4 + len.., 0);
            self.pending.truncate(rest);
        }
        changed
    }
}

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
            crate::log!("cannot watch for SIGTERM ({e:?}); a stop will not be recorded");
            None
        }
    };
    let captures = (
        area.create_output(layout::STDOUT_FILE),
        area.create_output(layout::STDERR_FILE),
    );
    let (out_file, err_file) = match captures {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            return finish_early(&mut status, &mut record, e, "cannot create output files")
        }
    };
    let started = match start_script(area.dir(), area_path, record.run_id, env) {
        Ok(started) => started,
        Err(e) => return finish_early(&mut status, &mut record, e, "cannot start auto_exec.sh"),
    };
    let Started {
        pid,
        stdout,
        stderr,
        requests,
    } = started;
    let mut live = match area.create_live() {
        Ok(fd) => Some(LiveRing::new(fd)),
        Err(e) => {
            crate::log!("no live output ring ({e:?}); output is still captured");
            None
        }
    };
    crate::log!(
        "run {} started (pid {})",
        record.run_id,
        pid.as_raw_nonzero()
    );
    let mut out = Capture {
        stream: Stream::Stdout,
        pipe: Some(stdout),
        file: out_file,
        info: OutputInfo::default(),
        cap: config.output_cap,
        dirty: false,
        failed: false,
    };
    let mut err = Capture {
        stream: Stream::Stderr,
        pipe: Some(stderr),
        file: err_file,
        info: OutputInfo::default(),
        cap: config.output_cap,
        dirty: false,
        failed: false,
    };
    let mut reqs = Requests {
        pipe: Some(requests),
        pending: heapless::Vec::new(),
    };
    // Without pidfd (kernels before 5.3) the loop wakes often and asks waitpid.
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).ok();

    let start = now_ms();
    record.state = RunState::Running;
    record.heartbeat_interval_ms = config.heartbeat_ms;
    record.started_unix = Some(unix_secs());
    let mut last_write = write(&mut status, &mut record, &mut out, &mut err, start);

    let deadline = config.timeout_ms.map(|t| start.saturating_add(t));
    let mut next_beat = start + u64::from(config.heartbeat_ms);
    let mut term_sent: Option<u64> = None;
    let mut kill_sent = false;
    let mut timed_out = false;
    let mut exited: Option<(RunState, u64)> = None;
    let mut want_write = false;
    let mut last_live_flush = start;
    let mut buf = [0u8; 16 * 1024];

    loop {
        let now = now_ms();
        if exited.is_none() {
            if deadline.is_some_and(|d| now >= d) && term_sent.is_none() {
                crate::log!("run {} timed out; stopping it", record.run_id);
                timed_out = true;
                term_sent = Some(now);
                let _ = kill_process_group(pid, Signal::TERM);
            }
            if term_sent.is_some_and(|t| now >= t + KILL_GRACE_MS) && !kill_sent {
                kill_sent = true;
                let _ = kill_process_group(pid, Signal::KILL);
            }
            if let Ok(Some((_, st))) = waitpid(Some(pid), WaitOptions::NOHANG) {
                let state = match (st.exit_status(), st.terminating_signal()) {
                    (Some(code), _) => RunState::Exited(code),
                    (None, Some(sig)) if timed_out => RunState::TimedOut(sig),
                    (None, Some(sig)) => RunState::Signaled(sig),
                    (None, None) => RunState::Exited(-1),
                };
                exited = Some((state, now));
            }
        }
        if let Some((_, at)) = exited {
            if (out.pipe.is_none() && err.pipe.is_none()) || now >= at + DRAIN_GRACE_MS {
                break;
            }
        }
        if now >= next_beat {
            record.heartbeat += 1;
            next_beat = now + u64::from(config.heartbeat_ms);
            want_write = true;
        }
        if live.as_ref().is_some_and(LiveRing::has_unflushed)
            && now >= last_live_flush + LIVE_FLUSH_MS
        {
            if let Some(live) = &mut live {
                live.flush();
            }
            last_live_flush = now;
        }
        if want_write && now >= last_write + MIN_WRITE_GAP_MS {
            last_write = write(&mut status, &mut record, &mut out, &mut err, now);
            want_write = false;
        }

        let mut wake = next_beat;
        if want_write {
            wake = wake.min(last_write + MIN_WRITE_GAP_MS);
        }
        if let Some(d) = deadline.filter(|_| term_sent.is_none()) {
            wake = wake.min(d);
        }
        if let Some(t) = term_sent.filter(|_| !kill_sent) {
            wake = wake.min(t + KILL_GRACE_MS);
        }
        if live.as_ref().is_some_and(LiveRing::has_unflushed) {
            wake = wake.min(last_live_flush + LIVE_FLUSH_MS);
        }
        if let Some((_, at)) = exited {
            wake = wake.min(at + DRAIN_GRACE_MS);
        } else if pidfd.is_none() {
            wake = wake.min(now + 100);
        }
        let timeout = timespec_ms(wake.saturating_sub(now));

        let watched: [Option<BorrowedFd<'_>>; 5] = [
            out.pipe.as_ref().map(|f| f.as_fd()),
            err.pipe.as_ref().map(|f| f.as_fd()),
            reqs.pipe.as_ref().map(|f| f.as_fd()),
            signals.as_ref().map(|f| f.as_fd()),
            pidfd
                .as_ref()
                .filter(|_| exited.is_none())
                .map(|f| f.as_fd()),
        ];
        let mut fds: heapless::Vec<PollFd<'_>, 5> = heapless::Vec::new();
        for fd in watched.iter().flatten() {
            let _ = fds.push(PollFd::new(fd, PollFlags::IN));
        }
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                crate::log!("poll failed: {e:?}");
                crate::clock::sleep_ms(100);
            }
        }
        drop(fds);
        out.pump(&mut buf, &mut live);
        err.pump(&mut buf, &mut live);
        if reqs.pump(&mut record.custom) {
            want_write = true;
        }
        if let Some(sigfd) = &signals {
            let mut info = [0u8; 128];
            if matches!(rustix::io::read(sigfd, &mut info), Ok(n) if n > 0) && exited.is_none() {
                crate::log!("monitor asked to stop; stopping run {}", record.run_id);
                let _ = kill_process_group(pid, Signal::TERM);
                term_sent.get_or_insert(now_ms());
            }
        }
    }

    let (state, _) = exited.unwrap_or((RunState::Exited(-1), now_ms()));
    if let Some(live) = &mut live {
        live.flush();
    }
    // Results the script wrote into the shared area reach the disk before "done" does.
    let _ = area.sync();
    record.state = state;
    record.finished_unix = Some(unix_secs());
    write(&mut status, &mut record, &mut out, &mut err, now_ms());
    crate::log!("run {} {}", record.run_id, state);
    linger(
        &mut status,
        &mut record,
        &mut out,
        &mut err,
        signals.as_ref(),
        &mut live,
    );
    0
}

/// Children of the script that still hold its output open: keep capturing until they
/// close it (or the monitor is told to stop), then record the final byte counts with
/// the same terminal state.
fn linger(
    status: &mut StatusFile,
    record: &mut StatusRecord,
    out: &mut Capture,
    err: &mut Capture,
    signals: Option<&OwnedFd>,
    live: &mut Option<LiveRing>,
) {
    if out.pipe.is_none() && err.pipe.is_none() {
        return;
    }
    let counted = (record.stdout, record.stderr);
    let mut buf = [0u8; 16 * 1024];
    while out.pipe.is_some() || err.pipe.is_some() {
        let watched = [
            out.pipe.as_ref().map(|f| f.as_fd()),
            err.pipe.as_ref().map(|f| f.as_fd()),
            signals.map(|f| f.as_fd()),
        ];
        let mut fds: heapless::Vec<PollFd<'_>, 3> = heapless::Vec::new();
        for fd in watched.iter().flatten() {
            let _ = fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let _ = poll(&mut fds, Some(&timespec_ms(1_000)));
        let stop = fds
            .last()
            .is_some_and(|fd| signals.is_some() && fd.revents().contains(PollFlags::IN));
        drop(fds);
        out.pump(&mut buf, live);
        err.pump(&mut buf, live);
        if let Some(live) = live {
            live.flush();
        }
        if stop {
            break;
        }
    }
    if (out.info, err.info) != counted {
        write(status, record, out, err, now_ms());
    }
}

/// Flushes the captured output, then writes the record. Returns the time written.
fn write(
    status: &mut StatusFile,
    record: &mut StatusRecord,
    out: &mut Capture,
    err: &mut Capture,
    now: u64,
) -> u64 {
    out.flush();
    err.flush();
    record.stdout = out.info;
    record.stderr = err.info;
    record.updated_unix = unix_secs();
    if let Err(e) = status.write(record) {
        crate::log!("cannot write the status file: {e:?}");
    }
    now
}

fn finish_early(
    status: &mut StatusFile,
    record: &mut StatusRecord,
    errno: Errno,
    what: &str,
) -> i32 {
    crate::log!("{what}: {errno:?}");
    record.state = RunState::StartFailed(errno.raw_os_error());
    record.finished_unix = Some(unix_secs());
    record.updated_unix = unix_secs();
    match status.write(record) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
