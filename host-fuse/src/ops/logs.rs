//! Following a run's output from the host while the guest runs, through the live ring
//! (`nlxtp/live.bin`, see `nlxtp_core::live`), and the capture files once it has ended.
//!
//! What a follower prints, concatenated per stream, equals the captured output: it
//! takes ring blocks strictly in sequence order and never past a block that is missing
//! or torn. When the ring has lost blocks (output faster than the host reads, or a host
//! that started late), it stops printing live and takes the rest from the capture
//! files when the run has ended, so nothing is skipped or repeated, only delayed.

use std::io;
use std::time::Duration;

use nlxtp_core::layout;
use nlxtp_core::live::{block_at, decode_block, live_slot, Stream, LIVE_FILE_LEN};
use nlxtp_core::StatusRecord;

use super::status::{wait, WaitOutcome};
use crate::area::{AreaError, AreaPath, SharedArea, StatusError};

/// The largest capture file [`Follower::finish`] reads: the guest decides its size, and
/// it is read whole into memory (a guest's default cap is 16 MiB).
pub const MAX_CAPTURE_READ: u64 = 1 << 30;

/// Which output to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// Standard output only.
    Stdout,
    /// Standard error only.
    Stderr,
    /// Both, interleaved in the order the guest captured them.
    Both,
}

impl Streams {
    fn wants(self, stream: Stream) -> bool {
        matches!(
            (self, stream),
            (Streams::Both, _)
                | (Streams::Stdout, Stream::Stdout)
                | (Streams::Stderr, Stream::Stderr)
        )
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Follows the ring of one run.
#[derive(Debug, Clone)]
pub struct Follower {
    streams: Streams,
    /// Next byte offset to print, per stream.
    next: [u64; 2],
    /// Last block sequence number taken.
    last: u64,
    /// The ring lost blocks this follower had not taken.
    behind: bool,
}

impl Follower {
    /// A follower that has printed nothing.
    pub fn new(streams: Streams) -> Follower {
        Follower {
            streams,
            next: [0, 0],
            last: 0,
            behind: false,
        }
    }

    /// Whether the ring lost output this follower had not taken (the rest then comes
    /// from the capture files at the end).
    pub fn is_behind(&self) -> bool {
        self.behind
    }

    /// Takes every new block from a whole live file, in order, and hands the new bytes
    /// to `emit`.
    pub fn take(&mut self, file: &[u8], emit: &mut dyn FnMut(Stream, &[u8])) {
        if self.behind || file.len() != LIVE_FILE_LEN {
            return;
        }
        loop {
            let wanted = self.last + 1;
            let Some(raw) = block_at(file, live_slot(wanted)) else {
                return;
            };
            let Ok(block) = decode_block(raw) else { return }; // not written yet, or torn
            if block.sequence < wanted {
                return; // not written yet
            }
            if block.sequence > wanted {
                self.behind = true; // overwritten before we read it
                return;
            }
            let at = index(block.stream);
            if block.offset > self.next[at] {
                // A hole in the stream: a hostile or broken guest. Stop live output.
                self.behind = true;
                return;
            }
            // Only now: a guest's offset near u64::MAX would overflow. `next` grows by
            // payloads taken, so `offset <= next` keeps this sum small.
            let end = block.offset + block.payload.len() as u64;
            if end > self.next[at] {
                let skip = (self.next[at] - block.offset) as usize;
                if self.streams.wants(block.stream) {
                    emit(block.stream, &block.payload[skip..]);
                }
                self.next[at] = end;
            }
            self.last = wanted;
        }
    }

    /// After the run has ended: the rest of each followed stream, from its capture file.
    /// An area of the original implementation has no capture files but
    /// `exec_status/out`, standard output and error together: it is shown as standard
    /// output (for [`Streams::Stdout`] and [`Streams::Both`]).
    ///
    /// # Errors
    /// When a capture file cannot be read.
    pub fn finish(
        &mut self,
        area: &(impl SharedArea + ?Sized),
        emit: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<(), AreaError> {
        for (stream, path) in [
            (Stream::Stdout, layout::STDOUT_FILE),
            (Stream::Stderr, layout::STDERR_FILE),
        ] {
            if !self.streams.wants(stream) {
                continue;
            }
            let bytes = match read_capture(area, path)? {
                Some(bytes) => bytes,
                None if stream == Stream::Stdout => {
                    match read_capture(area, layout::legacy::OUT)? {
                        Some(bytes) => bytes,
                        None => continue,
                    }
                }
                None => continue,
            };
            let from = (self.next[index(stream)] as usize).min(bytes.len());
            if from < bytes.len() {
                emit(stream, &bytes[from..]);
            }
            self.next[index(stream)] = bytes.len() as u64;
        }
        Ok(())
    }
}

/// A capture file's bytes, `None` if there is none.
fn read_capture(
    area: &(impl SharedArea + ?Sized),
    path: &str,
) -> Result<Option<Vec<u8>>, AreaError> {
    let path = AreaPath::new(path).expect("protocol path");
    match area.read_file(&path, MAX_CAPTURE_READ) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(AreaError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the live file (empty if there is none yet).
fn read_live(area: &(impl SharedArea + ?Sized)) -> Result<Vec<u8>, AreaError> {
    match area.read_file(
        &AreaPath::new(layout::LIVE_FILE).expect("protocol path"),
        LIVE_FILE_LEN as u64,
    ) {
        Ok(bytes) => Ok(bytes),
        // Not there yet, or being created, or garbage: nothing live to show now.
        Err(
            AreaError::NotFound { .. } | AreaError::TooLarge { .. } | AreaError::NotAFile { .. },
        ) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Follows the output until the run ends (as [`wait`] does), handing each new piece to
/// `emit` as soon as the guest has flushed it; `on_behind` is told once if the live ring
/// lost output (it then arrives when the run ends). An error from `emit` stops the
/// following at once (the reader went away, say).
///
/// # Errors
/// As [`wait`]; when the live or capture files cannot be read; [`AreaError::Sink`] (in
/// [`StatusError::Area`]) with `emit`'s error.
pub fn follow(
    area: &(impl SharedArea + ?Sized),
    streams: Streams,
    timeout: Option<Duration>,
    interval: Duration,
    emit: &mut dyn FnMut(Stream, &[u8]) -> io::Result<()>,
    on_behind: &mut dyn FnMut(),
) -> Result<WaitOutcome, StatusError> {
    follow_until(
        area,
        streams,
        timeout,
        interval,
        emit,
        on_behind,
        &mut || Ok(()),
    )
}

/// [`follow`], asking `go_on` at every poll whether to go on: its error stops the
/// following at once, also while the guest prints nothing (a server's client that went
/// away).
///
/// # Errors
/// As [`follow`]; [`AreaError::Sink`] (in [`StatusError::Area`]) with `go_on`'s error.
pub fn follow_until(
    area: &(impl SharedArea + ?Sized),
    streams: Streams,
    timeout: Option<Duration>,
    interval: Duration,
    emit: &mut dyn FnMut(Stream, &[u8]) -> io::Result<()>,
    on_behind: &mut dyn FnMut(),
    go_on: &mut dyn FnMut() -> io::Result<()>,
) -> Result<WaitOutcome, StatusError> {
    let mut follower = Follower::new(streams);
    let mut run: Option<nlxtp_core::RunId> = None;
    let mut sink = Sink { emit, failed: None };
    let outcome = wait(area, timeout, interval, &mut |record: Option<
        &StatusRecord,
    >| {
        go_on().map_err(AreaError::sink)?;
        if let Some(rec) = record {
            if run.is_some_and(|r| r != rec.run_id) {
                // A new upload replaced the run being followed: stop at its end.
                return Ok(());
            }
            run = Some(rec.run_id);
        }
        let was_behind = follower.is_behind();
        follower.take(&read_live(area)?, &mut |s, b| sink.put(s, b));
        sink.check()?;
        if follower.is_behind() && !was_behind {
            on_behind();
        }
        Ok(())
    })?;
    if let WaitOutcome::Done(_) | WaitOutcome::LegacyDone(_) = outcome {
        // The last blocks the monitor flushed before its final record.
        follower.take(&read_live(area)?, &mut |s, b| sink.put(s, b));
        follower.finish(area, &mut |s, b| sink.put(s, b))?;
        sink.check()?;
    }
    Ok(outcome)
}

/// The caller's `emit`, taking nothing more after its first error.
struct Sink<'a> {
    emit: &'a mut dyn FnMut(Stream, &[u8]) -> io::Result<()>,
    failed: Option<io::Error>,
}

impl Sink<'_> {
    fn put(&mut self, stream: Stream, bytes: &[u8]) {
        if self.failed.is_none() {
            self.failed = (self.emit)(stream, bytes).err();
        }
    }

    fn check(&mut self) -> Result<(), AreaError> {
        self.failed
            .take()
            .map_or(Ok(()), |e| Err(AreaError::sink(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nlxtp_core::live::{put_block, LIVE_BLOCKS, LIVE_BLOCK_LEN};

    fn ring(blocks: &[(u64, Stream, u64, &[u8])]) -> Vec<u8> {
        let mut file = vec![0u8; LIVE_FILE_LEN];
        for &(seq, stream, offset, payload) in blocks {
            put_block(&mut file, seq, stream, offset, payload).expect("a whole live file");
        }
        file
    }

    fn collect(follower: &mut Follower, file: &[u8]) -> Vec<(Stream, Vec<u8>)> {
        let mut out = Vec::new();
        follower.take(file, &mut |s, b| out.push((s, b.to_vec())));
        out
    }

    #[test]
    fn takes_blocks_in_order_once_and_waits_at_a_hole() {
        let mut f = Follower::new(Streams::Both);
        let file = ring(&[
            (1, Stream::Stdout, 0, b"ab"),
            (2, Stream::Stderr, 0, b"E"),
            (4, Stream::Stdout, 4, b"ef"),
        ]);
        assert_eq!(
            collect(&mut f, &file),
            [
                (Stream::Stdout, b"ab".to_vec()),
                (Stream::Stderr, b"E".to_vec())
            ]
        );
        assert_eq!(collect(&mut f, &file), [], "nothing twice");
        // Block 3 arrives (it was still in the guest's cache, or torn): 3 and 4 follow.
        let file = ring(&[
            (1, Stream::Stdout, 0, b"ab"),
            (2, Stream::Stderr, 0, b"E"),
            (3, Stream::Stdout, 2, b"cd"),
            (4, Stream::Stdout, 4, b"ef"),
        ]);
        assert_eq!(
            collect(&mut f, &file),
            [
                (Stream::Stdout, b"cd".to_vec()),
                (Stream::Stdout, b"ef".to_vec())
            ]
        );
        assert!(!f.is_behind());
    }

    #[test]
    fn a_torn_block_is_waited_for_and_an_overwritten_one_means_behind() {
        let mut f = Follower::new(Streams::Stdout);
        let mut file = ring(&[(1, Stream::Stdout, 0, b"ab"), (2, Stream::Stdout, 2, b"cd")]);
        file[LIVE_BLOCK_LEN * 2 + 30] ^= 1; // tear block 2
        assert_eq!(collect(&mut f, &file), [(Stream::Stdout, b"ab".to_vec())]);
        assert!(!f.is_behind());
        // Slot 2 now holds a block one lap newer: block 2 is gone for good.
        let file = ring(&[
            (1, Stream::Stdout, 0, b"ab"),
            (2 + LIVE_BLOCKS as u64, Stream::Stdout, 9, b"zz"),
        ]);
        assert_eq!(collect(&mut f, &file), []);
        assert!(f.is_behind());
    }

    #[test]
    fn one_stream_only_skips_the_other() {
        let mut f = Follower::new(Streams::Stderr);
        let file = ring(&[
            (1, Stream::Stdout, 0, b"out"),
            (2, Stream::Stderr, 0, b"err"),
        ]);
        assert_eq!(collect(&mut f, &file), [(Stream::Stderr, b"err".to_vec())]);
    }
}
