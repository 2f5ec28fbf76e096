//! The status helper: `nlxtp-guest status set TEXT`, also installed as
//! `archive_setstatus` (the original implementation's name) and `nlxtp-status`.
//!
//! It writes the text, whole, into the run's custom status file itself
//! (`NLXTP_CUSTOM_FILE`, see `nlxtp_core::custom`): under an exclusive `flock` on the
//! file, it reads both slots, writes the next one in one piece and flushes it to the
//! disk before it exits. So concurrent helpers take turns, a host sees the new text as
//! soon as the helper has returned, and a helper killed half way leaves the previous
//! text readable. The monitor notices the change and puts the text's start into the
//! status record. Only environment variables lead the helper to the file, so it works
//! from any program the script starts (Python's `subprocess` closes inherited
//! descriptors by default).

use core::ffi::CStr;

use nlxtp_core::custom::CUSTOM_TEXT_MAX;
use nlxtp_core::custom::{read_custom, CustomWriter, CUSTOM_FILE_LEN, CUSTOM_SLOT_LEN};
use nlxtp_core::layout::env;
use nlxtp_core::RunId;
use rustix::fd::AsFd;
use rustix::fs::{self, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::sys::{self, CStrList};

/// Exit codes of the helper.
const EXIT_NOT_UNDER_MONITOR: i32 = 1;
const EXIT_USAGE: i32 = 2;

/// Room for the text as given, before invalid UTF-8 is replaced.
const RAW_MAX: usize = CUSTOM_TEXT_MAX + 1;

/// The text, as UTF-8.
type Text = heapless::String<CUSTOM_TEXT_MAX>;

/// Sets the custom status to the arguments joined by spaces, or to standard input when
/// the only argument is `-`. Returns the exit code.
pub fn set<'a>(name: &str, args: impl Iterator<Item = &'a CStr> + Clone, env: CStrList) -> i32 {
    let mut raw = heapless::Vec::<u8, RAW_MAX>::new();
    let mut probe = args.clone();
    let from_stdin =
        matches!((probe.next(), probe.next()), (Some(arg), None) if arg.to_bytes() == b"-");
    let too_long = if from_stdin {
        read_stdin(&mut raw)
    } else {
        args.enumerate().any(|(i, arg)| {
            (i > 0 && raw.push(b' ').is_err()) || raw.extend_from_slice(arg.to_bytes()).is_err()
        })
    };
    let mut text = Text::new();
    let (fits, replaced) = to_utf8_lossy(&raw, &mut text);
    if too_long || !fits {
        crate::log!(
            error: "{name}: the status text is longer than {CUSTOM_TEXT_MAX} bytes (64 KiB); the custom status was not changed. Shorten it, or write the details to a file in the shared directory"
        );
        return EXIT_USAGE;
    }
    if replaced {
        crate::log!(
            warning: "{name}: the status text was not valid UTF-8; invalid bytes were replaced with U+FFFD"
        );
    }
    let path = env.var(env::CUSTOM_FILE).filter(|p| !p.is_empty());
    let run = env
        .var(env::RUN_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(RunId::from_hex);
    let (Some(path), Some(run)) = (path, run) else {
        crate::log!(
            error: "{name}: not running under the nlxtp monitor ({} or {} is not set); the status was not changed",
            env::CUSTOM_FILE,
            env::RUN_ID
        );
        return EXIT_NOT_UNDER_MONITOR;
    };
    match write_text(path, run, &text) {
        Ok(()) => 0,
        Err(failure) => {
            crate::log!(error: "{name}: {failure}; the status was not changed");
            EXIT_NOT_UNDER_MONITOR
        }
    }
}

/// Why the text did not reach the custom status file.
enum Failure<'a> {
    Open(&'a CStr, Errno),
    Size(&'a CStr, usize),
    OtherRun(RunId),
    Write(Errno),
}

impl core::fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Open(path, e) => write!(
                f,
                "cannot open the custom status file {path:?} (errno {})",
                e.raw_os_error()
            ),
            Failure::Size(path, len) => write!(
                f,
                "{path:?} is not a custom status file ({len} bytes, not {CUSTOM_FILE_LEN})"
            ),
            Failure::OtherRun(run) => write!(
                f,
                "the custom status file belongs to run {run}: this script's run is over"
            ),
            Failure::Write(e) => write!(
                f,
                "cannot write the custom status file (errno {})",
                e.raw_os_error()
            ),
        }
    }
}

/// Writes `text` of run `run` as the next slot of the custom status file at `path`.
fn write_text<'a>(path: &'a CStr, run: RunId, text: &str) -> Result<(), Failure<'a>> {
    let fd = fs::open(
        path,
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| Failure::Open(path, e))?;
    // Released when `fd` closes, also when the helper is killed.
    retry(|| fs::flock(&fd, FlockOperation::LockExclusive)).map_err(Failure::Write)?;
    let mut file = [0u8; CUSTOM_FILE_LEN + 1];
    let len = crate::area::read_fd(fd.as_fd(), &mut file).map_err(Failure::Write)?;
    if len != CUSTOM_FILE_LEN {
        return Err(Failure::Size(path, len));
    }
    let file = &mut file[..len];
    if let Ok(newest) = read_custom(file) {
        if newest.run_id != run {
            return Err(Failure::OtherRun(newest.run_id));
        }
    }
    let mut writer = CustomWriter::resume(file);
    let at = writer.next_offset();
    let slot = &mut file[at..at + CUSTOM_SLOT_LEN];
    // The text is within the cap, and the slot is one slot long.
    writer
        .encode(run, text, slot)
        .map_err(|_| Failure::Write(Errno::INVAL))?;
    crate::area::pwrite_all(fd.as_fd(), slot, at as u64).map_err(Failure::Write)?;
    retry(|| fs::fdatasync(&fd)).map_err(Failure::Write)
}

fn retry(mut call: impl FnMut() -> Result<(), Errno>) -> Result<(), Errno> {
    loop {
        match call() {
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}

/// Reads standard input into `raw`; true if there was more than fits.
fn read_stdin(raw: &mut heapless::Vec<u8, RAW_MAX>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::read(sys::stdin(), &mut buf) {
            Ok(0) => return false,
            Err(Errno::INTR) => {}
            Err(_) => return false,
            Ok(n) => {
                if raw.extend_from_slice(&buf[..n]).is_err() {
                    return true;
                }
            }
        }
    }
}

/// Copies `raw` into `out`, replacing each invalid UTF-8 sequence with U+FFFD.
/// Returns (whether it fit, whether anything was replaced).
fn to_utf8_lossy(mut raw: &[u8], out: &mut Text) -> (bool, bool) {
    let mut replaced = false;
    loop {
        match core::str::from_utf8(raw) {
            Ok(valid) => return (out.push_str(valid).is_ok(), replaced),
            Err(e) => {
                let (valid, rest) = raw.split_at(e.valid_up_to());
                // `valid_up_to` marks a valid prefix.
                let valid = core::str::from_utf8(valid).unwrap_or_default();
                if out.push_str(valid).is_err() || out.push('\u{FFFD}').is_err() {
                    return (false, true);
                }
                replaced = true;
                raw = &rest[e.error_len().unwrap_or(rest.len())..];
            }
        }
    }
}
