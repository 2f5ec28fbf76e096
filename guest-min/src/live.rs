//! The monitor's side of the live-output ring (`nlxtp/live.bin`, see
//! `nlxtp_core::live`): captured output is cut into blocks, written in place, and
//! flushed to the disk at a bounded interval, so a host can follow it while the guest
//! runs.

use nlxtp_core::live::{encode_block, live_slot, Stream, LIVE_BLOCK_LEN, LIVE_PAYLOAD_MAX};
use rustix::fd::{AsFd, OwnedFd};

use crate::area::pwrite_all;

/// Output not yet in a block, per stream.
struct Pending {
    bytes: heapless::Vec<u8, LIVE_PAYLOAD_MAX>,
    /// Offset in the stream of `bytes[0]`.
    offset: u64,
}

/// The open ring.
pub struct LiveRing {
    fd: OwnedFd,
    next_sequence: u64,
    pending: [Pending; 2],
    dirty: bool,
    failed: bool,
}

impl core::fmt::Debug for LiveRing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LiveRing")
            .field("next_sequence", &self.next_sequence)
            .finish()
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl LiveRing {
    /// A ring over `fd`, a zeroed file of `LIVE_FILE_LEN` bytes.
    pub fn new(fd: OwnedFd) -> LiveRing {
        let empty = || Pending {
            bytes: heapless::Vec::new(),
            offset: 0,
        };
        LiveRing {
            fd,
            next_sequence: 1,
            pending: [empty(), empty()],
            dirty: false,
            failed: false,
        }
    }

    /// Adds `data`, which sits at `offset` in `stream`'s capture file.
    pub fn push(&mut self, stream: Stream, mut offset: u64, mut data: &[u8]) {
        while !data.is_empty() {
            let pending = &mut self.pending[index(stream)];
            if pending.bytes.is_empty() {
                pending.offset = offset;
            }
            let room = LIVE_PAYLOAD_MAX - pending.bytes.len();
            let take = room.min(data.len());
            let _ = pending.bytes.extend_from_slice(&data[..take]);
            data = &data[take..];
            offset += take as u64;
            if pending.bytes.is_full() {
                self.emit(stream);
            }
        }
    }

    /// Whether anything waits to be flushed.
    pub fn has_unflushed(&self) -> bool {
        self.dirty || self.pending.iter().any(|p| !p.bytes.is_empty())
    }

    /// Writes partial blocks and makes everything written reach the disk.
    pub fn flush(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !self.pending[index(stream)].bytes.is_empty() {
                self.emit(stream);
            }
        }
        if self.dirty && !self.failed {
            let _ = rustix::fs::fdatasync(&self.fd);
        }
        self.dirty = false;
    }

    fn emit(&mut self, stream: Stream) {
        let pending = &mut self.pending[index(stream)];
        let mut block = [0u8; LIVE_BLOCK_LEN];
        encode_block(
            &mut block,
            self.next_sequence,
            stream,
            pending.offset,
            &pending.bytes,
        );
        pending.bytes.clear();
        let at = (live_slot(self.next_sequence) * LIVE_BLOCK_LEN) as u64;
        self.next_sequence += 1;
        if self.failed {
            return;
        }
        if let Err(e) = pwrite_all(self.fd.as_fd(), &block, at) {
            // The ring is a convenience: the capture files stay complete without it.
            crate::log!(warning: "live output ring stopped: {e:?}");
            self.failed = true;
        }
        self.dirty = true;
    }
}
