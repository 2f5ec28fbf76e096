//! The status helper: `nlxtp-guest status set TEXT`, also installed as
//! `archive_setstatus` (the original implementation's name) and `nlxtp-status`.
//!
//! It hands the text to the monitor through the pipe the monitor gave the script
//! (`NLXTP_STATUS_FD`), as one write of `u32 length (LE) | UTF-8 text`. A write of at
//! most PIPE_BUF bytes is atomic, so concurrent helpers never interleave; the monitor
//! writes a record with the new text within 100 ms.

use core::ffi::CStr;

use nlxtp_core::record::CUSTOM_STATUS_MAX;

use crate::spawn::STATUS_FD_VAR;
use crate::sys::{self, CStrList};

/// Exit codes of the helper.
const EXIT_NOT_UNDER_MONITOR: i32 = 1;
const EXIT_USAGE: i32 = 2;

/// Room for the text as given, before invalid UTF-8 is replaced.
const RAW_MAX: usize = CUSTOM_STATUS_MAX + 1;

/// Sets the custom status to the arguments joined by spaces, or to standard input when
/// the only argument is `-`. Returns the exit code.
pub fn set(name: &str, args: &[&CStr], env: CStrList) -> i32 {
    let mut raw = heapless::Vec::<u8, RAW_MAX>::new();
    let too_long = if let [arg] = args {
        if arg.to_bytes() == b"-" {
            read_stdin(&mut raw)
        } else {
            raw.extend_from_slice(arg.to_bytes()).is_err()
        }
    } else {
        args.iter().enumerate().any(|(i, arg)| {
            (i > 0 && raw.push(b' ').is_err()) || raw.extend_from_slice(arg.to_bytes()).is_err()
        })
    };
    let mut text = nlxtp_core::CustomStatus::new();
    let (fits, replaced) = to_utf8_lossy(&raw, &mut text);
    if too_long || !fits {
        crate::log!(
            "{name}: the status text is longer than {CUSTOM_STATUS_MAX} bytes; shorten it, or write the details to a file in the shared directory"
        );
        return EXIT_USAGE;
    }
    if replaced {
        crate::log!(
            "{name}: the status text was not valid UTF-8; invalid bytes were replaced with U+FFFD"
        );
    }
    let fd = env
        .var(STATUS_FD_VAR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let Some(fd) = fd else {
        crate::log!("{name}: not running under the nlxtp monitor ({STATUS_FD_VAR} is not set); the status was not changed");
        return EXIT_NOT_UNDER_MONITOR;
    };
    let mut message = heapless::Vec::<u8, { CUSTOM_STATUS_MAX + 4 }>::new();
    let _ = message.extend_from_slice(&(text.len() as u32).to_le_bytes());
    let _ = message.extend_from_slice(text.as_bytes());
    match sys::write_all(sys::inherited_fd(fd), &message) {
        Ok(()) => 0,
        Err(e) => {
            crate::log!("{name}: cannot reach the monitor ({e:?}); the status was not changed");
            EXIT_NOT_UNDER_MONITOR
        }
    }
}

/// Reads standard input into `raw`; true if there was more than fits.
fn read_stdin(raw: &mut heapless::Vec<u8, RAW_MAX>) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match rustix::io::read(sys::stdin(), &mut buf) {
            Ok(0) | Err(_) => return false,
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
pub fn to_utf8_lossy(mut raw: &[u8], out: &mut nlxtp_core::CustomStatus) -> (bool, bool) {
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
