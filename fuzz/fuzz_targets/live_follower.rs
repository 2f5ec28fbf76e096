//! The live-output follower (`nlxtp logs -f`) on a ring a hostile guest keeps
//! rewriting: valid blocks in and out of order, replays, laps, holes, overlaps,
//! contradicting payloads, torn and garbage bytes, short files. The follower is given
//! a whole live file after each change. No panic, and every byte it emits is the next
//! byte of its stream: the end of a block valid in the file it was given, starting at
//! exactly the offset the stream has reached (never out of order, never twice).
//!
//! The input is a program of one-byte operations and their arguments, read by
//! [`Program`]; running out of bytes ends it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nlxtp_core::live::{
    block_at, decode_block, put_block, Stream, LIVE_BLOCKS, LIVE_BLOCK_LEN, LIVE_FILE_LEN,
    LIVE_PAYLOAD_MAX,
};
use nlxtp_host::ops::logs::{Follower, Streams};

struct Program<'a>(&'a [u8]);

impl Program<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        (self.0.len() >= n).then(|| {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        })
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.bytes(3)?;
        Some(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// What an honest guest would have at `offset` of `stream`: so that most payloads agree
/// with each other and a contradicting one stands out.
fn honest_byte(stream: Stream, offset: u64) -> u8 {
    (offset as u8).wrapping_mul(31) ^ (stream_index(stream) as u8 * 0x55)
}

/// Gives `file` to the follower and checks every emitted piece against the blocks in it.
fn take(follower: &mut Follower, file: &[u8], emitted: &mut [u64; 2], streams: Streams) {
    let was_behind = follower.is_behind();
    // The valid blocks of this file (stream, offset, payload), decoded at the first
    // piece: most takes emit nothing, and decoding the ring costs 256 checksums.
    let mut valid: Option<Vec<(Stream, u64, Vec<u8>)>> = None;
    let mut pieces = 0usize;
    follower.take(file, &mut |stream, bytes| {
        pieces += 1;
        assert!(!bytes.is_empty(), "an empty piece");
        assert!(
            streams == Streams::Both
                || (streams == Streams::Stdout) == (stream == Stream::Stdout),
            "a piece of a stream not followed"
        );
        let at = emitted[stream_index(stream)];
        let end = at + bytes.len() as u64;
        let valid = valid.get_or_insert_with(|| {
            (0..LIVE_BLOCKS)
                .filter_map(|slot| block_at(file, slot).map(decode_block))
                .filter_map(Result::ok)
                .map(|b| (b.stream, b.offset, b.payload.to_vec()))
                .collect()
        });
        let from_a_block = valid.iter().any(|(s, offset, payload)| {
            *s == stream
                && *offset <= at
                && offset + payload.len() as u64 == end
                && payload[(at - offset) as usize..] == *bytes
        });
        assert!(
            from_a_block,
            "{stream:?} bytes {at}..{end} are not the end of a valid block that starts at or before {at}"
        );
        emitted[stream_index(stream)] = end;
    });
    if was_behind {
        assert_eq!(pieces, 0, "a follower that is behind stays silent");
        assert!(follower.is_behind());
    }
    if file.len() != LIVE_FILE_LEN {
        assert_eq!(pieces, 0, "a live file of {} bytes gave output", file.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut program = Program(data);
    let streams = match program.byte().unwrap_or(0) % 3 {
        0 => Streams::Both,
        1 => Streams::Stdout,
        _ => Streams::Stderr,
    };
    let mut follower = Follower::new(streams);
    let mut file = vec![0u8; LIVE_FILE_LEN];
    // The honest guest's next sequence number and stream offsets.
    let mut next_seq = 1u64;
    let mut next_offset = [0u64; 2];
    // Bytes emitted so far, per stream (counted for both, checked only when followed).
    let mut emitted = [0u64; 2];
    let mut steps = 0;
    while let Some(op) = program.byte() {
        steps += 1;
        if steps > 4096 {
            break;
        }
        match op % 6 {
            // A valid block, mostly what an honest guest writes next.
            0 | 1 => {
                let Some(flags) = program.byte() else { break };
                let Some(len) = program.byte() else { break };
                let stream = if flags & 1 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                let s = stream_index(stream);
                let len = (usize::from(len) * 2).min(LIVE_PAYLOAD_MAX);
                let seq = match (flags >> 1) & 7 {
                    0..=3 => next_seq,
                    4 => next_seq + u64::from(flags >> 4) + 1,
                    5 => next_seq.saturating_sub(u64::from(flags >> 4) + 1).max(1),
                    6 => next_seq + LIVE_BLOCKS as u64,
                    _ => match program.u64() {
                        Some(v) => v,
                        None => break,
                    },
                };
                let offset = match flags >> 4 {
                    0..=9 => next_offset[s],
                    10 | 11 => next_offset[s].saturating_sub(u64::from(len as u8 % 64)),
                    12 | 13 => next_offset[s].saturating_add(1 + u64::from(len as u8 % 64)),
                    _ => match program.u64() {
                        Some(v) => v,
                        None => break,
                    },
                };
                let garbled = op % 6 == 1;
                let payload: Vec<u8> = (0..len as u64)
                    .map(|i| honest_byte(stream, offset.wrapping_add(i)) ^ u8::from(garbled))
                    .collect();
                put_block(&mut file, seq, stream, offset, &payload).expect("a whole live file");
                if seq == next_seq {
                    next_seq += 1;
                    next_offset[s] = offset.saturating_add(len as u64);
                }
            }
            // Raw bytes anywhere: a torn block or garbage.
            2 => {
                let Some(at) = program.u24() else { break };
                let Some(n) = program.byte() else { break };
                let Some(bytes) = program.bytes(usize::from(n % 33)) else {
                    break;
                };
                let at = at % LIVE_FILE_LEN;
                let n = bytes.len().min(LIVE_FILE_LEN - at);
                file[at..at + n].copy_from_slice(&bytes[..n]);
            }
            // A block copied to another slot: a replay.
            3 => {
                let Some(from) = program.byte() else { break };
                let Some(to) = program.byte() else { break };
                let (from, to) = (usize::from(from), usize::from(to));
                let block = file[from * LIVE_BLOCK_LEN..(from + 1) * LIVE_BLOCK_LEN].to_vec();
                file[to * LIVE_BLOCK_LEN..(to + 1) * LIVE_BLOCK_LEN].copy_from_slice(&block);
            }
            // The follower reads the whole file.
            4 => take(&mut follower, &file, &mut emitted, streams),
            // The follower reads a file of the wrong length.
            _ => {
                let Some(cut) = program.u24() else { break };
                let cut = cut % (LIVE_FILE_LEN + LIVE_BLOCK_LEN);
                let mut odd = file.clone();
                odd.resize(cut, 0);
                take(&mut follower, &odd, &mut emitted, streams);
            }
        }
    }
    take(&mut follower, &file, &mut emitted, streams);
});
