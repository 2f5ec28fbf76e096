//! The archive routes: an upload unpacked on the blocking pool while its body arrives;
//! a download packed on the blocking pool and streamed to the client.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::{access, blocking, spend, vm, Access, Result};
use crate::area::{SharedArea, WalkLimits};
use crate::fuse::VmSpec;
use crate::ops::{
    self, ArchiveInput, Compression, DownloadOptions, PreparedDownload, UploadOptions,
};
use crate::serve::error::{chain, ApiError};
use crate::serve::grant::Operation;
use crate::serve::State;

fn bad_query(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.to_string())
}

fn flag(value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("" | "true" | "1" | "yes") => Ok(true),
        Some(other) => Err(bad_query(format!("expected true or false, not {other:?}"))),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct UploadQuery {
    grant: Option<String>,
    access_token: Option<String>,
    files_only: Option<String>,
    force: Option<String>,
    run_again: Option<String>,
    timeout_secs: Option<u32>,
}

pub(super) async fn upload(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| bad_query(e.body_text()))?;
    let vm = vm(&state, &name)?;
    let access = access(
        &state,
        &headers,
        query.access_token.as_deref(),
        query.grant.as_deref(),
        &name,
        Operation::Upload,
    )?;
    let options = UploadOptions {
        limits: state.limits.archive,
        files_only: flag(query.files_only.as_deref())?,
        force: flag(query.force.as_deref())?,
        run_again: flag(query.run_again.as_deref())?,
        timeout_secs: query.timeout_secs,
        spool_dir: Some(state.upload_dir.clone()),
        ..UploadOptions::default()
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.limits.max_upload_bytes) {
        return Err(too_large(state.limits.max_upload_bytes));
    }
    let Ok(guard) = vm.uploading.clone().try_lock_owned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "upload_in_progress",
            format!("another upload to {name:?} is in progress: try again when it has ended"),
        ));
    };
    spend(&state, access).await?;
    // The body flows to the unpacking thread through a bounded channel while it
    // arrives: the archive is read, checked and written into the area's new content as
    // the bytes come, and that content takes the old one's place only once the whole
    // body has come in good order.
    let (tx, rx) = mpsc::channel(BODY_CHANNEL_CHUNKS);
    let spec = vm.spec.clone();
    let unpack = blocking(move || {
        let area = spec.open()?;
        let mut body = ChannelReader {
            rx,
            chunk: Bytes::new(),
        };
        let mut upload = ops::begin_upload(area.as_ref(), &options)?;
        upload.read(ArchiveInput::Raw(&mut body))?;
        // Up to the body's end: bytes after the archive's own end, and a cut-off
        // there, count as for the rest of the body.
        io::copy(&mut body, &mut io::sink()).map_err(ApiError::internal)?;
        Ok(upload.commit()?)
    });
    let (received, unpacked) = tokio::join!(receive(&state, body, tx), unpack);
    drop(guard);
    // The body's own fault (cut off, too large, too slow) explains a failed unpack.
    received?;
    Ok(Json(unpacked?).into_response())
}

/// Chunks of the request body in flight between the connection and the unpacking
/// thread (hyper's chunks are at most some hundreds of KiB).
const BODY_CHANNEL_CHUNKS: usize = 16;

/// The request body as a blocking reader: chunks from [`receive`], an error when the
/// body failed, the end when it ended.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the upload is larger than this server's limit of {max} bytes"),
    )
}

/// Passes the request body to `tx`: within the size limit, with no pause longer than
/// the idle timeout and within the upload deadline. On a breach the reader gets an
/// error (so nothing is written) and the caller this one. The reader going away early
/// (a bad archive) ends the passing; its own error then tells.
async fn receive(
    state: &Arc<State>,
    body: Body,
    tx: mpsc::Sender<io::Result<Bytes>>,
) -> Result<()> {
    let limits = &state.limits;
    let deadline = Instant::now() + limits.upload_timeout;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    let failed = loop {
        let wait = limits
            .body_idle_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let Ok(next) = tokio::time::timeout(wait, stream.next()).await else {
            break ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload_timeout",
                "the upload body stalled or took too long: nothing was changed",
            );
        };
        let chunk = match next {
            None => return Ok(()),
            Some(Err(e)) => {
                break ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "upload_cut_off",
                    format!(
                        "the upload body was cut off ({}): nothing was changed",
                        chain(&e)
                    ),
                )
            }
            Some(Ok(chunk)) => chunk,
        };
        total += chunk.len() as u64;
        if total > limits.max_upload_bytes {
            break too_large(limits.max_upload_bytes);
        }
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(());
        }
    };
    let _ = tx.send(Err(io::Error::other(failed.message.clone()))).await;
    Err(failed)
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct DownloadQuery {
    grant: Option<String>,
    access_token: Option<String>,
    format: Option<String>,
    live: Option<String>,
}

/// Bytes from the packing thread to the response, 64 KiB at a time through a bounded
/// channel: a slow client slows the packing, it does not fill memory.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 * 1024;

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A download's archive format: its compression, file name extension and MIME type.
fn archive_format(format: Option<&str>) -> Result<(Compression, &'static str, &'static str)> {
    Ok(match format.unwrap_or("tar.gz") {
        "tar" => (Compression::None, "tar", "application/x-tar"),
        "tar.gz" | "tgz" => (Compression::Gzip, "tar.gz", "application/gzip"),
        "tar.zst" => (Compression::Zstd, "tar.zst", "application/zstd"),
        other => {
            return Err(bad_query(format!(
                "format must be tar, tar.gz or tar.zst, not {other:?}"
            )))
        }
    })
}

pub(super) async fn download(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: std::result::Result<Query<DownloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| bad_query(e.body_text()))?;
    let vm = vm(&state, &name)?;
    let access = access(
        &state,
        &headers,
        query.access_token.as_deref(),
        query.grant.as_deref(),
        &name,
        Operation::Download,
    )?;
    let (compression, extension, mime) = archive_format(query.format.as_deref())?;
    let live = flag(query.live.as_deref())?;
    let Ok(permit) = state.downloads.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_downloads",
            "too many downloads at once: try again later",
        ));
    };
    let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let packing = Packing {
        permit,
        spec: vm.spec.clone(),
        live,
        compression,
        access,
        state: state.clone(),
    };
    tokio::task::spawn_blocking(move || packing.run(ready_tx, tx));
    ready_rx.await.map_err(ApiError::internal)??;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.{extension}\"", file_name(&name)),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A VM's name as a file name: what is not `[A-Za-z0-9._-]` becomes `_`.
fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A download, packed on the blocking pool.
struct Packing {
    /// Holds the download's place among those at once until the packing ends.
    permit: OwnedSemaphorePermit,
    spec: VmSpec,
    live: bool,
    compression: Compression,
    access: Access,
    state: Arc<State>,
}

impl Packing {
    /// Packs the area into `tx` (blocking), after saying on `ready` whether the
    /// download may go ahead.
    fn run(self, ready: oneshot::Sender<Result<()>>, tx: mpsc::Sender<io::Result<Bytes>>) {
        let _permit = self.permit;
        let area = match self.spec.open() {
            Ok(area) => area,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let prepared = match admit(area.as_ref(), self.live, &self.access, &self.state) {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let options = DownloadOptions {
            compression: self.compression,
            limits: WalkLimits::default(),
        };
        let mut writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let packed = prepared
            .to_writer(&mut writer, &options, &mut |_| {})
            .map_err(|e| io::Error::other(chain(&e)))
            .and_then(|_| writer.flush());
        if let Err(e) = packed {
            // The response ends without its last chunk: the client sees it cut off.
            let _ = tx.blocking_send(Err(e));
        }
    }
}

/// Whether `area` may be downloaded now (`live`: also mid-run); a grant in `access` is
/// spent once it may: a refusal leaves the grant usable.
fn admit<'a>(
    area: &'a dyn SharedArea,
    live: bool,
    access: &Access,
    state: &State,
) -> Result<PreparedDownload<'a>> {
    let prepared = ops::prepare_download(area, live)?;
    if let Access::Grant(grant) = access {
        state.used.spend(grant)?;
    }
    Ok(prepared)
}
