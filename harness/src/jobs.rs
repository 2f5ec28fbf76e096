//! One job's run in a shared area, as the end-to-end tests of hot-plugged jobs follow it:
//! wait until it has started, until it has ended, read its files, sum up timings.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nlxtp_core::StatusRecord;
use nlxtp_host::area::SharedArea;
use nlxtp_host::ops::{self, WaitOutcome};

/// Waits (up to `deadline`) until the area's record says the run has started; returns
/// when it saw that.
///
/// # Errors
/// When the area cannot be read, or the run has not started by the deadline.
pub fn wait_started(area: &dyn SharedArea, deadline: Duration) -> Result<Instant> {
    let end = Instant::now() + deadline;
    loop {
        if ops::status(area)?.record.is_some() {
            return Ok(Instant::now());
        }
        if Instant::now() > end {
            bail!("the job in {} never started", area.location().display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (up to `deadline`, reading every 20 ms) for the run to end; returns its final
/// record.
///
/// # Errors
/// When the area cannot be read, or the run has not ended by the deadline.
pub fn wait_done(area: &dyn SharedArea, deadline: Duration) -> Result<StatusRecord> {
    match ops::status::wait(area, Some(deadline), Duration::from_millis(20), &mut |_| {
        Ok(())
    })? {
        WaitOutcome::Done(record) => Ok(record),
        other => bail!("the run did not end: {other:?}"),
    }
}

/// The file `name` of a download's `files` as text.
///
/// # Errors
/// When there is no such file.
pub fn text(files: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<String> {
    let content = files
        .get(name)
        .with_context(|| format!("no {name} in {:?}", files.keys()))?;
    Ok(String::from_utf8_lossy(content).into_owned())
}

/// The median of `v` (the upper one of an even count); zero for none.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
