//! Watching a run: `status`, `wait` and `logs`.

use std::process::ExitCode;

use nlxtp_core::RunState;
use nlxtp_host::area::SharedArea;
use nlxtp_host::ops::logs::Streams;
use nlxtp_host::ops::{self, WaitOutcome};

use crate::args::{Target, WaitArgs};
use crate::out::{self, note, RunOutput};
use crate::{with_code, Failure};

/// `nlxtp status`.
pub fn status(target: &Target, json: bool) -> Result<ExitCode, Failure> {
    let area = target.open()?;
    let report = ops::status(area.as_ref())?;
    if json {
        out::json(&report)?;
    } else {
        out::print(&ops::status::render(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `nlxtp wait`, and `nlxtp exec --wait` after its upload.
pub fn wait(target: &Target, args: &WaitArgs) -> Result<ExitCode, Failure> {
    let area = target.open().map_err(|e| with_code(125)(e.into()))?;
    let mut last_line = String::new();
    let quiet = args.quiet;
    let outcome = ops::wait(
        area.as_ref(),
        args.timeout(),
        args.interval(),
        &mut |record| {
            if let Some(rec) = record.filter(|_| !quiet) {
                let line = match rec.custom.as_str() {
                    "" => rec.state.to_string(),
                    custom => format!("{}: {custom}", rec.state),
                };
                if line != last_line {
                    note!("nlxtp: {line}");
                    last_line = line;
                }
            }
            Ok(())
        },
    )
    .map_err(|e| with_code(125)(e.into()))?;
    finish_wait(area.as_ref(), target, args, &outcome)
}

/// `nlxtp logs`: the output captured so far, or with `--follow`, as it comes until the
/// run ends (then as `nlxtp wait`).
pub fn logs(
    target: &Target,
    follow: bool,
    streams: Streams,
    wait: &WaitArgs,
) -> Result<ExitCode, Failure> {
    if follow {
        return follow_logs(target, streams, wait);
    }
    let area = target.open()?;
    let mut follower = ops::logs::Follower::new(streams);
    let mut output = RunOutput::new(false);
    let mut failed = None;
    follower.finish(area.as_ref(), &mut |stream, bytes| {
        let written = out::ended(output.write(stream, bytes));
        failed = failed.take().or(written.err());
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out::ended(output.flush())?;
    Ok(ExitCode::SUCCESS)
}

/// Follows the output (`nlxtp logs --follow`), then ends as `nlxtp wait` does.
fn follow_logs(target: &Target, streams: Streams, wait: &WaitArgs) -> Result<ExitCode, Failure> {
    let area = target.open().map_err(|e| with_code(125)(e.into()))?;
    let mut output = RunOutput::new(true);
    let followed = ops::logs::follow(
        area.as_ref(),
        streams,
        wait.timeout(),
        wait.interval(),
        &mut |stream, bytes| match output.write(stream, bytes) {
            // The reader has gone while the run goes on: stop following here, as
            // SIGPIPE stops a C program.
            Err(e) if out::is_gone(&e) && !has_ended(area.as_ref()) => Err(e),
            // Other errors are ignored, as the output keeps coming.
            _ => Ok(()),
        },
        &mut || {
            note!("nlxtp: the output comes faster than the live ring keeps it; the rest is printed when the run ends")
        },
    );
    let outcome = match followed {
        // No result is known yet, so the exit is 0.
        Err(_) if out::reader_gone() => return Ok(ExitCode::SUCCESS),
        other => other.map_err(|e| with_code(125)(e.into()))?,
    };
    finish_wait(area.as_ref(), target, wait, &outcome)
}

/// The exit code and messages of a finished wait (documented in `EXIT_CODES`).
fn finish_wait(
    area: &dyn SharedArea,
    target: &Target,
    args: &WaitArgs,
    outcome: &WaitOutcome,
) -> Result<ExitCode, Failure> {
    let (code, record) = match outcome {
        WaitOutcome::Done(rec) => (state_code(rec.state), Some(rec)),
        WaitOutcome::MonitorLost(rec) => {
            note!("nlxtp: the monitor stopped writing (the VM stopped or hung, or the monitor died); the run will not finish");
            (126, Some(rec))
        }
        WaitOutcome::CutOff(rec) => {
            note!("nlxtp: the VM is off (no QEMU holds the image) and its run had not ended: it was cut off and will not finish");
            (126, Some(rec))
        }
        WaitOutcome::LegacyDone(_) => {
            note!("nlxtp: the run of the original implementation is done (exec_status/done); it records no exit code, so 0 says only that it finished");
            (0, None)
        }
        WaitOutcome::TimedOut(rec) => {
            note!(
                "nlxtp: gave up waiting after {:.1} s; the run goes on",
                args.timeout.unwrap_or(0.0)
            );
            (124, rec.as_ref())
        }
        WaitOutcome::NoUpload => {
            note!(
                "nlxtp: there is no upload in {} (no auto_exec.sh): nothing to wait for",
                target.path.display()
            );
            (127, None)
        }
    };
    if args.json_result {
        // The whole custom status, as `nlxtp status` shows it.
        let view = record
            .map(|rec| ops::status::record_view(area, rec))
            .transpose()
            .map_err(|e| with_code(125)(e.into()))?;
        out::json(&serde_json::json!({ "exit": code, "record": view }))?;
    }
    Ok(ExitCode::from(code))
}

/// The exit code for a run that ended in `state` (documented in `EXIT_CODES`).
pub fn state_code(state: RunState) -> u8 {
    match state {
        RunState::Exited(c) => u8::try_from(c.clamp(0, 255)).unwrap_or(255),
        RunState::Signaled(sig) => 128u8.saturating_add(sig.clamp(0, 127) as u8),
        _ => 126,
    }
}

/// Whether the run has ended (so a follow that goes on ends with its result at once).
fn has_ended(area: &dyn SharedArea) -> bool {
    ops::status(area).is_ok_and(|report| report.record.is_some_and(|r| r.done))
}
