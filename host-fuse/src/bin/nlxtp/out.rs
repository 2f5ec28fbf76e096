//! Where the commands write. Everything for standard output, a run's output on standard
//! error, and every message goes through here, so that a reader that goes away
//! (`nlxtp logs T | head -2`) ends the output quietly, as it ends a Unix tool's: no
//! message, no panic.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with `BrokenPipe`. [`Out`]
//! remembers that the reader has gone ([`reader_gone`]); the command then stops writing,
//! and a failure that the gone reader caused ends the process with 0 (as ripgrep does).
//! A command whose exit code carries a result it already knows (`nlxtp wait`) keeps that
//! code: [`print()`] and [`json`] take a gone reader for the end of the output, not for an
//! error.

use std::io::{self, Stderr, StdoutLock, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use nlxtp_core::live::Stream;

static GONE: AtomicBool = AtomicBool::new(false);

/// Whether the reader of the command's output has gone away.
pub fn reader_gone() -> bool {
    GONE.load(Ordering::Relaxed)
}

/// Whether `error` is a write to a reader that has gone.
pub fn is_gone(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::BrokenPipe
}

/// Standard output or standard error, noting a reader that has gone.
pub struct Out<W>(W);

impl<W: Write> Write for Out<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).inspect_err(note_gone)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().inspect_err(note_gone)
    }
}

fn note_gone(error: &io::Error) {
    if is_gone(error) {
        GONE.store(true, Ordering::Relaxed);
    }
}

/// Standard output, for results: reports, archives, a run's output.
pub fn stdout() -> Out<StdoutLock<'static>> {
    Out(io::stdout().lock())
}

/// `text` on standard output. A reader that has gone is not an error: the output ends.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = stdout();
    ended(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// `value` as pretty JSON and a newline on standard output, as [`print()`].
pub fn json(value: &impl serde::Serialize) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    print(&(text + "\n"))
}

/// `result`, with a reader that has gone taken for the end of the output.
pub fn ended(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if is_gone(&e) => Ok(()),
        other => other,
    }
}

/// A message for the user on standard error, a line. It is lost if no one reads
/// standard error any more; the command goes on.
pub fn write_note(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{message}");
}

/// [`write_note`] with `format!` arguments, as `eprintln!` but never a panic.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::out::write_note(format_args!($($arg)*))
    };
}
pub(crate) use note;

/// A run's output, written to ours: its standard output to standard output, its standard
/// error to standard error. Once a reader has gone, nothing more is written.
pub struct RunOutput {
    stdout: Out<StdoutLock<'static>>,
    stderr: Out<Stderr>,
    /// Flush standard output after each piece (following a run as it goes).
    flush: bool,
}

impl RunOutput {
    pub fn new(flush: bool) -> RunOutput {
        RunOutput {
            stdout: stdout(),
            stderr: Out(io::stderr()),
            flush,
        }
    }

    /// Writes one piece of a run's output.
    ///
    /// # Errors
    /// The write's error: see [`is_gone`] for a reader that has gone (the first time).
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        if reader_gone() {
            return Ok(());
        }
        match stream {
            Stream::Stdout if self.flush => self
                .stdout
                .write_all(bytes)
                .and_then(|()| self.stdout.flush()),
            Stream::Stdout => self.stdout.write_all(bytes),
            Stream::Stderr => self.stderr.write_all(bytes),
        }
    }

    /// Flushes standard output.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn flush(&mut self) -> io::Result<()> {
        if reader_gone() {
            return Ok(());
        }
        self.stdout.flush()
    }
}
