//! Status and wait: the record, read from outside the guest, and what it means.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nlxtp_core::custom::{custom_text, CUSTOM_FILE_LEN};
use nlxtp_core::record::CUSTOM_STATUS_MAX;
use nlxtp_core::{
    layout, AbortReason, BootId, Liveness, LivenessPolicy, RunId, RunState, Seen, StatusReader,
    StatusRecord, Verdict,
};
use serde::Serialize;

use crate::area::{
    read_status_from, AreaError, AreaKind, AreaPath, AreaSnapshot, LegacyFiles, Patience,
    SharedArea, StatusError,
};

/// Everything `nlxtp status` says about an area.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The image or directory.
    pub target: PathBuf,
    /// The kind of area: "vfat-image" or "directory".
    pub backend: AreaKind,
    /// Whether a VM holds the image now (always false for a directory).
    pub vm_running: bool,
    /// Whether the area holds an upload (an `auto_exec.sh`).
    pub upload_present: bool,
    /// The newest status record, if the guest has written one.
    pub record: Option<RecordView>,
    /// What the monitor is doing, as far as the host can tell.
    pub monitor: Monitor,
    /// Status files of the original implementation (no checksum), when there is no record.
    pub legacy: Option<LegacyStatus>,
}

/// A status record, for people and scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordView {
    /// Run id, 32 hex digits.
    pub run_id: String,
    /// Guest boot id, 32 hex digits.
    pub boot_id: String,
    /// "pending", "running", "exited", "signaled", "timed-out", "aborted", "start-failed" or "unknown".
    pub state: &'static str,
    /// Whether the run has ended.
    pub done: bool,
    /// The script's exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the script, if one did (for an aborted run: the signal with
    /// which the guest's system stopped it, if it did).
    pub signal: Option<i32>,
    /// The state in words.
    pub description: String,
    /// The script's custom status text.
    pub custom: String,
    /// Bytes of captured standard output.
    pub stdout_bytes: u64,
    /// Whether standard output went over the cap.
    pub stdout_truncated: bool,
    /// Bytes of captured standard error.
    pub stderr_bytes: u64,
    /// Whether standard error went over the cap.
    pub stderr_truncated: bool,
    /// Record sequence number.
    pub sequence: u64,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// The monitor's promised interval.
    pub heartbeat_interval_ms: u32,
    /// Guest clock, informative.
    pub started_unix: Option<u64>,
    /// Guest clock, informative.
    pub updated_unix: u64,
    /// Guest clock, informative.
    pub finished_unix: Option<u64>,
}

impl RecordView {
    /// The view of a record, with the custom status the record carries (a prefix of a
    /// longer text: [`record_view`] reads the whole).
    pub fn new(rec: &StatusRecord) -> RecordView {
        let (state, signal) = match rec.state {
            RunState::Pending => ("pending", None),
            RunState::Running => ("running", None),
            RunState::Exited(_) => ("exited", None),
            RunState::Signaled(sig) => ("signaled", Some(sig)),
            RunState::TimedOut(sig) => ("timed-out", Some(sig)),
            // A stop by the guest's system names the signal that stopped it.
            RunState::Aborted(AbortReason::StoppedBySystem(sig)) => ("aborted", Some(sig)),
            RunState::Aborted(_) => ("aborted", None),
            RunState::StartFailed(_) => ("start-failed", None),
            RunState::Unknown { .. } => ("unknown", None),
        };
        RecordView {
            run_id: rec.run_id.to_string(),
            boot_id: rec.boot_id.to_string(),
            state,
            done: rec.state.is_terminal(),
            exit_code: rec.state.exit_code(),
            signal,
            description: rec.state.to_string(),
            custom: rec.custom.to_string(),
            stdout_bytes: rec.stdout.bytes,
            stdout_truncated: rec.stdout.truncated,
            stderr_bytes: rec.stderr.bytes,
            stderr_truncated: rec.stderr.truncated,
            sequence: rec.sequence,
            heartbeat: rec.heartbeat,
            heartbeat_interval_ms: rec.heartbeat_interval_ms,
            started_unix: rec.started_unix,
            updated_unix: rec.updated_unix,
            finished_unix: rec.finished_unix,
        }
    }
}

/// The view of `rec`, read from `area`, with its whole custom status (see
/// [`full_custom`]).
///
/// # Errors
/// When the custom status file cannot be read at all.
pub fn record_view(
    area: &(impl SharedArea + ?Sized),
    rec: &StatusRecord,
) -> Result<RecordView, AreaError> {
    let mut view = RecordView::new(rec);
    view.custom = full_custom(area, rec)?;
    Ok(view)
}

/// The whole custom status of `rec` (docs/wire-format.md, the custom status file): a
/// record carries at most [`CUSTOM_STATUS_MAX`] bytes of it, so a text that long may go
/// on in `nlxtp/custom.bin`, which is then read (only then: a shorter text is all there
/// is). A file caught torn is read again for up to a second; one that cannot be read
/// gives the record's own text.
///
/// # Errors
/// When the file cannot be read at all.
pub fn full_custom(
    area: &(impl SharedArea + ?Sized),
    rec: &StatusRecord,
) -> Result<String, AreaError> {
    // A prefix cut at a character boundary is at least the limit less 3 bytes long.
    if rec.custom.len() + 3 < CUSTOM_STATUS_MAX {
        return Ok(rec.custom.to_string());
    }
    let path = AreaPath::new(layout::CUSTOM_FILE).expect("a protocol path");
    let patience = Patience::default();
    let started = Instant::now();
    loop {
        let bytes = match area.read_file(&path, CUSTOM_FILE_LEN as u64) {
            Ok(bytes) => bytes,
            Err(
                AreaError::NotFound { .. }
                | AreaError::NotAFile { .. }
                | AreaError::TooLarge { .. },
            ) => Vec::new(),
            Err(e) => return Err(e),
        };
        match custom_text(rec, &bytes) {
            Ok(text) => return Ok(text.to_owned()),
            Err(e) if e.is_retryable() && started.elapsed() < patience.give_up_after => {
                std::thread::sleep(patience.pause);
            }
            Err(_) => return Ok(rec.custom.to_string()),
        }
    }
}

/// Is the guest's monitor alive?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "monitor", rename_all = "kebab-case")]
pub enum Monitor {
    /// No record: no upload, or the guest has not started it (a VM that is off).
    NoStatus,
    /// The run has ended.
    Done,
    /// The record changed recently enough.
    Alive {
        /// Host milliseconds since the record last changed.
        silent_ms: u64,
        /// Silence after which the monitor counts as lost.
        timeout_ms: u64,
        /// This host had not seen this record before: the silence counts from now.
        first_look: bool,
    },
    /// The record has not changed for longer than the monitor promised.
    Lost {
        /// Host milliseconds since the record last changed.
        silent_ms: u64,
    },
    /// The record says the run goes on, but the guest verifiably does not hold the area
    /// (no QEMU holds the image: the VM is off). The run was cut off (the VM was killed
    /// or powered off in the middle of it) and will not finish; the guest marks it
    /// aborted when it next starts.
    CutOff,
}

/// The original implementation's `exec_status/` files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegacyStatus {
    /// Always true: marks this as the unchecksummed legacy format.
    pub unchecksummed: bool,
    /// `exec_status/done` exists.
    pub done: bool,
    /// Guest Unix time from `exec_status/running`.
    pub running_guest_unix: Option<u64>,
    /// `exec_status/custom`.
    pub custom: String,
    /// Size of `exec_status/out` (stdout and stderr together).
    pub out_bytes: Option<u64>,
}

/// Reads the area's status once. The monitor's liveness needs two looks in time: the
/// last change seen is remembered between calls (in `~/.local/state/nlxtp`), so a
/// series of `nlxtp status` calls tells "alive" from "lost" as `wait` does.
///
/// # Errors
/// [`StatusError`] when the record cannot be read (after retrying torn reads).
pub fn status(area: &(impl SharedArea + ?Sized)) -> Result<StatusReport, StatusError> {
    // One look at the area; the record is read again only if that look caught it torn.
    let AreaSnapshot {
        status_file,
        busy,
        script_present,
        legacy,
    } = area.snapshot()?;
    let record = read_status_from(
        area,
        &mut StatusReader::new(),
        Patience::default(),
        status_file,
    )?;
    let memory = LivenessMemory::for_target(area.location());
    let previous = memory.as_ref().and_then(LivenessMemory::load);
    let mut liveness = Liveness::resume(LivenessPolicy::default(), previous);
    let verdict = liveness.observe(boottime_ms(), record.as_ref());
    // Written only when the record changed: a status call in a tight loop writes nothing.
    if let (Some(memory), Some(seen)) = (&memory, liveness.last_change()) {
        if previous != Some(seen) {
            memory.store(seen);
        }
    }
    let first_look = previous.is_none() || previous != liveness.last_change();
    let monitor = match verdict {
        _ if cut_off(area, busy, record.as_ref()) => Monitor::CutOff,
        Verdict::NoStatus => Monitor::NoStatus,
        Verdict::Done(_) => Monitor::Done,
        Verdict::Alive {
            silent_ms,
            timeout_ms,
            ..
        } => Monitor::Alive {
            silent_ms,
            timeout_ms,
            first_look: first_look && silent_ms == 0,
        },
        Verdict::MonitorLost { silent_ms, .. } => Monitor::Lost { silent_ms },
    };
    Ok(StatusReport {
        target: area.location().to_path_buf(),
        backend: area.kind(),
        vm_running: busy,
        // A record means the guest has seen an upload.
        upload_present: record.is_some() || script_present,
        legacy: legacy.filter(|_| record.is_none()).map(LegacyStatus::new),
        record: record
            .as_ref()
            .map(|rec| record_view(area, rec))
            .transpose()?,
        monitor,
    })
}

/// Whether `record` is of a run that was cut off: it has not ended, the area is one the
/// guest takes only when it starts (a VM's image) and the guest does not hold it now. A
/// VM that is verifiably off runs nothing.
fn cut_off(area: &(impl SharedArea + ?Sized), busy: bool, record: Option<&StatusRecord>) -> bool {
    !busy && !area.capabilities().live && record.is_some_and(|r| !r.state.is_terminal())
}

impl LegacyStatus {
    fn new(files: LegacyFiles) -> LegacyStatus {
        let text = |bytes: Option<Vec<u8>>| bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
        LegacyStatus {
            unchecksummed: true,
            done: files.done,
            running_guest_unix: text(files.running).and_then(|t| t.trim().parse().ok()),
            custom: text(files.custom).unwrap_or_default(),
            out_bytes: files.out_len,
        }
    }
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The run ended (any terminal state).
    Done(StatusRecord),
    /// The monitor stopped writing: the VM died or hung, or the monitor was killed.
    MonitorLost(StatusRecord),
    /// The run was cut off: the VM is verifiably off (see [`Monitor::CutOff`]).
    CutOff(StatusRecord),
    /// The wait's own timeout passed first.
    TimedOut(Option<StatusRecord>),
    /// There is no upload to wait for.
    NoUpload,
    /// A run of the original implementation ended (`exec_status/done` exists). It
    /// records no exit code.
    LegacyDone(LegacyStatus),
}

/// Polls the area every `interval` until the run ends, the monitor is lost, or `timeout`
/// passes. `on_poll` is called after every read with the record read (for progress
/// output, or to follow the live output); its error ends the wait. An area of the
/// original implementation (`exec_status/`, no record) is waited for until its `done`
/// file appears.
///
/// # Errors
/// [`StatusError`] when the area or its status cannot be read, or `on_poll` fails.
pub fn wait(
    area: &(impl SharedArea + ?Sized),
    timeout: Option<Duration>,
    interval: Duration,
    on_poll: &mut dyn FnMut(Option<&StatusRecord>) -> Result<(), StatusError>,
) -> Result<WaitOutcome, StatusError> {
    let started = Instant::now();
    let mut reader = StatusReader::new();
    let mut liveness = Liveness::new(LivenessPolicy::default());
    let mut checked_upload = false;
    loop {
        let look = area.snapshot()?;
        let busy = look.busy;
        let record = read_status_from(area, &mut reader, Patience::default(), look.status_file)?;
        on_poll(record.as_ref())?;
        if cut_off(area, busy, record.as_ref()) {
            return Ok(WaitOutcome::CutOff(
                record.expect("cut off implies a record"),
            ));
        }
        match liveness.observe(started.elapsed().as_millis() as u64, record.as_ref()) {
            Verdict::Done(_) => {
                return Ok(WaitOutcome::Done(record.expect("done implies a record")))
            }
            Verdict::MonitorLost { .. } => {
                return Ok(WaitOutcome::MonitorLost(
                    record.expect("lost implies a record"),
                ))
            }
            Verdict::NoStatus => match look.legacy.map(LegacyStatus::new) {
                Some(legacy) if legacy.done => return Ok(WaitOutcome::LegacyDone(legacy)),
                // The original's monitor is at work: its `done` file ends the wait.
                Some(_) => {}
                None if !checked_upload => {
                    if !look.script_present {
                        return Ok(WaitOutcome::NoUpload);
                    }
                    // An upload the guest has not started yet (a VM that is off): wait on.
                    checked_upload = true;
                }
                None => {}
            },
            _ => {}
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Ok(WaitOutcome::TimedOut(record));
        }
        std::thread::sleep(interval);
    }
}

/// Milliseconds on `CLOCK_BOOTTIME`: one clock for every process of this host boot, so
/// observations can be compared across `nlxtp status` calls.
fn boottime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Where the last change seen for one target is kept between `nlxtp status` calls.
struct LivenessMemory {
    file: PathBuf,
}

impl LivenessMemory {
    fn for_target(target: &std::path::Path) -> Option<LivenessMemory> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
        let canonical = std::fs::canonicalize(target).ok()?;
        let hash = crate::stable_hash::of_path(&canonical);
        Some(LivenessMemory {
            file: base.join("nlxtp/liveness").join(format!("{hash:016x}")),
        })
    }

    fn load(&self) -> Option<Seen> {
        let text = std::fs::read_to_string(&self.file).ok()?;
        let mut words = text.split_whitespace();
        Some(Seen {
            run_id: RunId::from_hex(words.next()?)?,
            boot_id: BootId::from_hex(words.next()?)?,
            sequence: words.next()?.parse().ok()?,
            changed_at_ms: words.next()?.parse().ok()?,
        })
    }

    fn store(&self, seen: Seen) {
        // Best effort: without it, each call is a first look.
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.file.with_extension("tmp");
        let text = format!(
            "{} {} {} {}\n",
            seen.run_id, seen.boot_id, seen.sequence, seen.changed_at_ms
        );
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(tmp, &self.file);
        }
    }
}

/// The report as text for a person, one fact a line.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let what = match (report.backend, report.vm_running) {
        (AreaKind::Directory, _) => "container directory",
        (AreaKind::VfatImage, true) => "vFAT image, held by a running VM",
        (AreaKind::VfatImage, false) => "vFAT image, VM not running",
        (AreaKind::LibvirtVolume, true) => "libvirt volume, domain running",
        (AreaKind::LibvirtVolume, false) => "libvirt volume, domain not running",
    };
    let _ = writeln!(out, "target     {} ({what})", report.target.display());
    let monitor = monitor_line(report);
    if let Some(rec) = &report.record {
        render_record(&mut out, rec, &monitor);
    } else {
        let _ = writeln!(out, "monitor    {monitor}");
    }
    if let Some(legacy) = &report.legacy {
        let _ = writeln!(
            out,
            "legacy     exec_status/ of the original implementation (no checksum, no exit code)"
        );
        let _ = writeln!(out, "  done     {}", if legacy.done { "yes" } else { "no" });
        let _ = writeln!(out, "  custom   {}", legacy.custom.trim_end());
        if let Some(t) = legacy.running_guest_unix {
            let _ = writeln!(out, "  running  guest time {t}");
        }
    }
    out
}

/// What the monitor is doing, in words.
fn monitor_line(report: &StatusReport) -> String {
    let secs = |ms: u64| ms as f64 / 1000.0;
    match report.monitor {
        Monitor::NoStatus if report.upload_present => {
            "no status yet: the guest has not started the upload".to_string()
        }
        Monitor::NoStatus => "no upload".to_string(),
        Monitor::Done => "done".to_string(),
        Monitor::Alive {
            first_look: true,
            timeout_ms,
            ..
        } => format!(
            "alive as far as one look can tell (lost if unchanged for {:.1} s)",
            secs(timeout_ms)
        ),
        Monitor::Alive {
            silent_ms,
            timeout_ms,
            ..
        } => format!(
            "alive (last change {:.1} s ago; lost after {:.1} s)",
            secs(silent_ms),
            secs(timeout_ms)
        ),
        Monitor::CutOff => "cut off: the VM is off (no QEMU holds the image) but the run had not ended; it will not finish".to_string(),
        Monitor::Lost { silent_ms } => format!(
            "LOST: no change for {:.1} s (the VM stopped or hung, or the monitor died)",
            secs(silent_ms)
        ),
    }
}

/// The record's lines of the report.
fn render_record(out: &mut String, rec: &RecordView, monitor: &str) {
    use std::fmt::Write;
    let custom = if rec.custom.is_empty() {
        "-"
    } else {
        &rec.custom
    };
    let cut = |t: bool| if t { " (truncated at the cap)" } else { "" };
    let _ = writeln!(out, "run        {}", rec.run_id);
    let _ = writeln!(out, "state      {}", rec.description);
    let _ = writeln!(out, "monitor    {monitor}");
    let _ = writeln!(out, "custom     {custom}");
    let _ = writeln!(
        out,
        "stdout     {} bytes{}",
        rec.stdout_bytes,
        cut(rec.stdout_truncated)
    );
    let _ = writeln!(
        out,
        "stderr     {} bytes{}",
        rec.stderr_bytes,
        cut(rec.stderr_truncated)
    );
    let _ = writeln!(
        out,
        "heartbeat  {} (every {} ms), record {}",
        rec.heartbeat, rec.heartbeat_interval_ms, rec.sequence
    );
}
