//! Live output as Server-Sent Events: `ops::logs::follow_until` on the blocking pool,
//! each piece an `output` event whose id is the byte offsets reached per stream
//! (`STDOUT.STDERR`), so a client resumes with `Last-Event-ID` (or `?from=`); an `end`
//! event with the run's outcome when it ends.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use axum::extract::{Path, Query, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use nlxtp_core::live::Stream;

use super::api::{operator, vm};
use super::error::{chain, ApiError};
use super::State;
use crate::ops::logs::{follow_until, Streams};
use crate::ops::status::RecordView;
use crate::ops::WaitOutcome;

/// The largest piece of output in one event.
const PIECE: usize = 32 * 1024;

#[derive(Debug, serde::Deserialize)]
pub(super) struct OutputQuery {
    access_token: Option<String>,
    streams: Option<String>,
    from: Option<String>,
}

/// One stream's bytes as text: a character split between two pieces waits for its
/// end; bytes that are not UTF-8 become U+FFFD. Offsets count the stream's bytes.
#[derive(Debug, Default)]
struct Utf8Stream {
    /// Bytes already delivered to this client before (resume).
    skip: u64,
    /// Bytes of the stream seen so far (skipped ones included).
    seen: u64,
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The offset up to which text has been delivered.
    fn position(&self) -> u64 {
        self.seen - self.pending.len() as u64
    }

    fn push(&mut self, mut bytes: &[u8]) -> String {
        if self.seen < self.skip {
            let dropped = (self.skip - self.seen).min(bytes.len() as u64) as usize;
            bytes = &bytes[dropped..];
            self.seen += dropped as u64;
        }
        self.seen += bytes.len() as u64;
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut used = 0;
        loop {
            match std::str::from_utf8(&self.pending[used..]) {
                Ok(rest) => {
                    text.push_str(rest);
                    used = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(
                        std::str::from_utf8(&self.pending[used..used + valid]).expect("valid"),
                    );
                    used += valid;
                    match e.error_len() {
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            used += bad;
                        }
                        None => break, // a character cut at the end: wait for the rest
                    }
                }
            }
        }
        self.pending.drain(..used);
        text
    }

    /// At the end: what is left, however broken.
    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

fn parse_from(text: &str) -> Option<[u64; 2]> {
    let (out, err) = text.trim().split_once('.')?;
    Some([out.parse().ok()?, err.parse().ok()?])
}

fn stream_name(at: usize) -> &'static str {
    ["stdout", "stderr"][at]
}

fn outcome_json(outcome: &WaitOutcome) -> serde_json::Value {
    let record = |rec| serde_json::to_value(RecordView::new(rec)).unwrap_or_default();
    match outcome {
        WaitOutcome::Done(rec) => serde_json::json!({ "outcome": "done", "record": record(rec) }),
        WaitOutcome::MonitorLost(rec) => {
            serde_json::json!({ "outcome": "monitor-lost", "record": record(rec) })
        }
        WaitOutcome::CutOff(rec) => {
            serde_json::json!({ "outcome": "cut-off", "record": record(rec) })
        }
        WaitOutcome::TimedOut(_) => serde_json::json!({ "outcome": "timed-out" }),
        WaitOutcome::NoUpload => serde_json::json!({ "outcome": "no-upload" }),
        WaitOutcome::LegacyDone(legacy) => {
            serde_json::json!({ "outcome": "legacy-done", "legacy": legacy })
        }
    }
}

pub(super) async fn follow(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", m);
    let Query(query) = query.map_err(|e| bad(e.body_text()))?;
    operator(&state, &headers, query.access_token.as_deref())?;
    let spec = vm(&state, &name)?.spec.clone();
    let streams = match query.streams.as_deref().unwrap_or("both") {
        "both" => Streams::Both,
        "stdout" => Streams::Stdout,
        "stderr" => Streams::Stderr,
        other => {
            return Err(bad(format!(
                "streams must be both, stdout or stderr, not {other:?}"
            )))
        }
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.from);
    let skip = match resume {
        None => [0, 0],
        Some(text) => parse_from(&text).ok_or_else(|| {
            bad(format!(
                "an offset is STDOUT.STDERR, like 120.0, not {text:?}"
            ))
        })?,
    };
    let Ok(permit) = state.followers.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_followers",
            "too many clients follow output now: try again later",
        ));
    };
    let interval = state.limits.follow_interval;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the client went away");
        let area = match spec.open() {
            Ok(area) => area,
            Err(e) => {
                let e = ApiError::from(e);
                let _ = tx.blocking_send(error_event(&e));
                return;
            }
        };
        let mut text = [Utf8Stream::default(), Utf8Stream::default()];
        text[0].skip = skip[0];
        text[1].skip = skip[1];
        let event = |text: &[Utf8Stream; 2], at: usize, piece: String| {
            Event::default()
                .event("output")
                .id(format!("{}.{}", text[0].position(), text[1].position()))
                .json_data(serde_json::json!({ "stream": stream_name(at), "text": piece }))
                .expect("JSON of a string")
        };
        let mut emit = |stream: Stream, bytes: &[u8]| -> io::Result<()> {
            let at = match stream {
                Stream::Stdout => 0,
                Stream::Stderr => 1,
            };
            for part in bytes.chunks(PIECE) {
                let piece = text[at].push(part);
                if !piece.is_empty() {
                    tx.blocking_send(event(&text, at, piece))
                        .map_err(|_| gone())?;
                }
            }
            Ok(())
        };
        let result = follow_until(
            area.as_ref(),
            streams,
            None,
            interval,
            &mut emit,
            &mut || {
                let _ = tx.try_send(Event::default().event("behind").data(
                    "the live ring lost output; the rest arrives from the capture files when the run ends",
                ));
            },
            &mut || if tx.is_closed() { Err(gone()) } else { Ok(()) },
        );
        match result {
            Ok(outcome) => {
                for at in 0..2 {
                    let piece = text[at].finish();
                    if !piece.is_empty() {
                        let _ = tx.blocking_send(event(&text, at, piece));
                    }
                }
                let end = Event::default()
                    .event("end")
                    .json_data(outcome_json(&outcome))
                    .expect("JSON of plain data");
                let _ = tx.blocking_send(end);
            }
            Err(_) if tx.is_closed() => {}
            Err(e) => {
                let _ = tx.blocking_send(error_event(&ApiError::from(e)));
            }
        }
    });
    let events = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn error_event(e: &ApiError) -> Event {
    Event::default()
        .event("error")
        .json_data(serde_json::json!({ "code": e.code, "message": e.message }))
        .unwrap_or_else(|_| {
            Event::default()
                .event("error")
                .data(chain(&io::Error::other("error")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_waits_for_split_characters_and_resumes_at_offsets() {
        let mut s = Utf8Stream::default();
        let bytes = "aé€z".as_bytes(); // 1 + 2 + 3 + 1 bytes
        assert_eq!(s.push(&bytes[..2]), "a");
        assert_eq!(s.position(), 1);
        assert_eq!(s.push(&bytes[2..4]), "é");
        assert_eq!(s.push(&bytes[4..]), "€z");
        assert_eq!(s.position(), 7);
        assert_eq!(s.push(b"\xffok"), "\u{FFFD}ok");
        let mut resumed = Utf8Stream {
            skip: 3,
            ..Utf8Stream::default()
        };
        assert_eq!(resumed.push(&bytes[..2]), "");
        assert_eq!(resumed.push(&bytes[2..]), "€z");
        assert_eq!(resumed.position(), 7);
        assert_eq!(parse_from("12.0"), Some([12, 0]));
        assert_eq!(parse_from("12"), None);
    }
}
