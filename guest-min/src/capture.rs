//! The monitor's readers of the script's output pipes: each drains a non-blocking pipe
//! whenever the monitor's poll wakes up, and closes it once every writer has gone.

use nlxtp_core::live::Stream;
use nlxtp_core::OutputInfo;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;

use crate::live::LiveRing;

/// One captured output stream.
#[derive(Debug)]
pub struct Capture {
    stream: Stream,
    pipe: Option<OwnedFd>,
    file: OwnedFd,
    info: OutputInfo,
    cap: u64,
    dirty: bool,
    failed: bool,
}

impl Capture {
    /// Captures `stream` from `pipe` into `file`, up to `cap` bytes.
    pub fn new(stream: Stream, pipe: OwnedFd, file: OwnedFd, cap: u64) -> Capture {
        Capture {
            stream,
            pipe: Some(pipe),
            file,
            info: OutputInfo::default(),
            cap,
            dirty: false,
            failed: false,
        }
    }

    /// The pipe, until the script's side of it has closed.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|fd| fd.as_fd())
    }

    /// What was captured so far.
    pub fn info(&self) -> OutputInfo {
        self.info
    }

    /// Reads what the pipe has and appends it up to the cap. Past the cap, or once the
    /// disk refused a write, output is read and dropped (so the script never blocks on
    /// a full pipe) and the cut is recorded.
    pub fn pump(&mut self, buf: &mut [u8], live: &mut Option<LiveRing>) {
        let mut pipe = self.pipe.take();
        drain(&mut pipe, buf, |data| self.append(data, live));
        self.pipe = pipe;
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
                    crate::log!(warning: "output capture stopped: {:?}", other.err());
                    self.failed = true;
                    self.info.truncated = true;
                    return;
                }
            }
        }
    }

    /// Makes what was captured reach the disk (before a record counts it).
    pub fn flush(&mut self) {
        if self.dirty {
            let _ = rustix::fs::fdatasync(&self.file);
            self.dirty = false;
        }
    }
}

/// Reads `pipe` until it would block, handing each chunk to `take`. At the end of input
/// (or on an error) the pipe is closed: `pipe` becomes `None`.
fn drain(pipe: &mut Option<OwnedFd>, buf: &mut [u8], mut take: impl FnMut(&[u8])) {
    let Some(fd) = pipe else { return };
    loop {
        match rustix::io::read(&*fd, &mut *buf) {
            Ok(0) => break,
            Ok(n) => take(&buf[..n]),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return,
            Err(_) => break,
        }
    }
    *pipe = None;
}
