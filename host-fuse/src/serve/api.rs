//! The routes: list, status, grants, upload, download (live output in `output.rs`).

use std::io::{self, Seek, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

use super::error::{chain, ApiError};
use super::grant::{now_unix, Grant, Operation};
use super::{grant_path, output, sha256, State, Vm};
use crate::area::WalkLimits;
use crate::ops::{self, Compression, DownloadOptions, StatusReport, UploadOptions};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The web page, served from the binary.
const PAGE: &str = include_str!("page.html");

pub(super) fn router(state: Arc<State>) -> Router {
    let quick = Router::new()
        .route("/api/v1/vms", get(list))
        .route("/api/v1/vms/{vm}", get(status))
        .route("/api/v1/vms/{vm}/grants", axum::routing::post(create_grant))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.limits.request_timeout,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024));
    // Streamed both ways: their own limits and deadlines.
    let streamed = Router::new()
        .route(
            "/api/v1/vms/{vm}/archive",
            get(download).put(upload).post(upload),
        )
        .route("/api/v1/vms/{vm}/output", get(output::follow))
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .merge(quick)
        .merge(streamed)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take this method",
            )
        })
        .with_state(state)
}

/// Who is asking.
#[derive(Debug)]
pub(super) enum Access {
    /// The operator (the token): anything.
    Operator,
    /// The holder of a grant, not yet spent: its one operation.
    Grant(Grant),
}

/// The operator token of a request: `Authorization: Bearer`, or `access_token` in the
/// query (for `EventSource`, which cannot set headers).
fn given_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
        .or(query)
}

/// Checks the operator token (in constant time).
pub(super) fn operator(state: &State, headers: &HeaderMap, query: Option<&str>) -> Result<()> {
    let Some(token) = given_token(headers, query) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs the operator token (Authorization: Bearer TOKEN)",
        ));
    };
    if bool::from(sha256(token.as_bytes()).ct_eq(&state.token_hash)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_invalid",
            "the operator token is not valid",
        ))
    }
}

/// The operator token, or else a grant for `operation` on `vm` (checked, not spent).
fn access(
    state: &State,
    headers: &HeaderMap,
    token: Option<&str>,
    grant: Option<&str>,
    vm: &str,
    operation: Operation,
) -> Result<Access> {
    if given_token(headers, token).is_some() || grant.is_none() {
        return operator(state, headers, token).map(|()| Access::Operator);
    }
    let grant = grant.unwrap_or_default();
    Ok(Access::Grant(state.key.verify(
        grant,
        vm,
        operation,
        now_unix(),
    )?))
}

pub(super) fn vm<'a>(state: &'a State, name: &str) -> Result<&'a Vm> {
    state
        .vms
        .get(name)
        .ok_or_else(|| ApiError::unknown_vm(name))
}

/// Runs blocking area I/O on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

fn bad_query(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.to_string())
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// One VM in the list.
#[derive(Debug, serde::Serialize)]
struct VmView {
    name: String,
    status: Option<StatusReport>,
    error: Option<serde_json::Value>,
}

fn vm_view(vm: &Vm) -> VmView {
    let result = vm
        .spec
        .open()
        .map_err(ApiError::from)
        .and_then(|area| ops::status(area.as_ref()).map_err(ApiError::from));
    match result {
        Ok(status) => VmView {
            name: vm.spec.name.clone(),
            status: Some(status),
            error: None,
        },
        Err(e) => VmView {
            name: vm.spec.name.clone(),
            status: None,
            error: Some(serde_json::json!({ "code": e.code, "message": e.message })),
        },
    }
}

fn render_list(state: &State) -> Bytes {
    let vms: Vec<VmView> = state.vms.values().map(vm_view).collect();
    let body = serde_json::json!({
        "vms": vms,
        "read_unix_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    });
    Bytes::from(serde_json::to_vec(&body).expect("JSON of plain data"))
}

/// The list's JSON: from the cache while it is fresh; when it is not, read again in
/// the background (one reader at a time) while callers get the previous one.
async fn list_json(state: &Arc<State>) -> Result<Bytes> {
    let cached = state
        .list
        .value
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some((at, body)) = &cached {
        if at.elapsed() < state.limits.list_max_age {
            return Ok(body.clone());
        }
    }
    match state.list.refreshing.clone().try_lock_owned() {
        Ok(guard) => {
            let shared = state.clone();
            let task = tokio::task::spawn_blocking(move || {
                let body = render_list(&shared);
                *shared.list.value.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), body.clone()));
                drop(guard);
                body
            });
            match cached {
                Some((_, body)) => Ok(body),
                None => task.await.map_err(ApiError::internal),
            }
        }
        Err(_) => match cached {
            Some((_, body)) => Ok(body),
            None => {
                // The first list is being read: wait for it.
                let _turn = state.list.refreshing.lock().await;
                let value = state.list.value.lock().unwrap_or_else(|e| e.into_inner());
                Ok(value.clone().map(|(_, b)| b).unwrap_or_default())
            }
        },
    }
}

async fn list(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    query: Query<TokenQuery>,
) -> Result<Response> {
    operator(&state, &headers, query.access_token.as_deref())?;
    let body = list_json(&state).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn status(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Query<TokenQuery>,
) -> Result<Response> {
    operator(&state, &headers, query.access_token.as_deref())?;
    let spec = vm(&state, &name)?.spec.clone();
    let report = blocking(move || {
        let area = spec.open()?;
        Ok(ops::status(area.as_ref())?)
    })
    .await?;
    Ok(Json(serde_json::json!({ "name": name, "status": report })).into_response())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    operation: Operation,
    /// Seconds, or text like `10m` (default 10 minutes).
    ttl: Option<serde_json::Value>,
}

async fn create_grant(
    Shared(state): Shared<Arc<State>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Query<TokenQuery>,
    request: std::result::Result<Json<GrantRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response> {
    operator(&state, &headers, query.access_token.as_deref())?;
    vm(&state, &name)?;
    let Json(request) = request
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let ttl = match &request.ttl {
        None => Some(Duration::from_secs(600)),
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().filter(|&n| n > 0).map(Duration::from_secs)
        }
        Some(serde_json::Value::String(s)) => super::parse_ttl(s),
        Some(_) => None,
    }
    .filter(|ttl| *ttl <= state.limits.max_grant_ttl)
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_ttl",
            format!(
                "ttl must be a positive number of seconds or text like \"10m\", at most {} s",
                state.limits.max_grant_ttl.as_secs()
            ),
        )
    })?;
    let expires_unix = now_unix() + ttl.as_secs();
    let (_, token) = state.key.issue(&name, request.operation, expires_unix);
    let path = grant_path(&name, &token);
    let url = state
        .public_url
        .as_ref()
        .map(|base| format!("{base}{path}"));
    let body = serde_json::json!({
        "vm": name,
        "operation": request.operation,
        "expires_unix": expires_unix,
        "grant": token,
        "path": path,
        "url": url,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Spends a grant (fsynced) on the blocking pool; the operator spends nothing.
pub(super) async fn spend(state: &Arc<State>, access: Access) -> Result<()> {
    match access {
        Access::Operator => Ok(()),
        Access::Grant(grant) => {
            let shared = state.clone();
            blocking(move || Ok(shared.used.spend(&grant)?)).await
        }
    }
}

fn flag(value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("" | "true" | "1" | "yes") => Ok(true),
        Some(other) => Err(bad_query(format!("expected true or false, not {other:?}"))),
    }
}

#[derive(Debug, serde::Deserialize)]
struct UploadQuery {
    grant: Option<String>,
    access_token: Option<String>,
    files_only: Option<String>,
    force: Option<String>,
    run_again: Option<String>,
    timeout_secs: Option<u32>,
}

async fn upload(
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
    let file = receive(&state, body).await?;
    let spec = vm.spec.clone();
    let report = blocking(move || {
        let area = spec.open()?;
        let again = file.try_clone().map_err(ApiError::internal)?;
        let options = UploadOptions {
            archive_file: Some(Arc::new(again)),
            ..options
        };
        Ok(ops::upload(
            area.as_ref(),
            io::BufReader::new(file),
            &options,
        )?)
    })
    .await?;
    drop(guard);
    Ok(Json(report).into_response())
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the upload is larger than this server's limit of {max} bytes"),
    )
}

/// The request body, in an unnamed temporary file read from its start: within the size
/// limit, with no pause longer than the idle timeout and within the upload deadline.
async fn receive(state: &Arc<State>, body: Body) -> Result<std::fs::File> {
    let limits = &state.limits;
    let dir = state.upload_dir.clone();
    let file = blocking(move || tempfile::tempfile_in(&dir).map_err(ApiError::internal)).await?;
    let mut out = tokio::fs::File::from_std(file.try_clone().map_err(ApiError::internal)?);
    let deadline = Instant::now() + limits.upload_timeout;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    loop {
        let wait = limits
            .body_idle_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let next = tokio::time::timeout(wait, stream.next())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "upload_timeout",
                    "the upload body stalled or took too long: nothing was changed",
                )
            })?;
        match next {
            None => break,
            Some(Err(e)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "upload_cut_off",
                    format!(
                        "the upload body was cut off ({}): nothing was changed",
                        chain(&e)
                    ),
                ))
            }
            Some(Ok(chunk)) => {
                total += chunk.len() as u64;
                if total > limits.max_upload_bytes {
                    return Err(too_large(limits.max_upload_bytes));
                }
                out.write_all(&chunk).await.map_err(ApiError::internal)?;
            }
        }
    }
    out.flush().await.map_err(ApiError::internal)?;
    drop(out);
    let mut file = file;
    file.rewind().map_err(ApiError::internal)?;
    Ok(file)
}

#[derive(Debug, serde::Deserialize)]
struct DownloadQuery {
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

async fn download(
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
    let (compression, extension, mime) = match query.format.as_deref().unwrap_or("tar.gz") {
        "tar" => (Compression::None, "tar", "application/x-tar"),
        "tar.gz" | "tgz" => (Compression::Gzip, "tar.gz", "application/gzip"),
        "tar.zst" => (Compression::Zstd, "tar.zst", "application/zstd"),
        other => {
            return Err(bad_query(format!(
                "format must be tar, tar.gz or tar.zst, not {other:?}"
            )))
        }
    };
    let live = flag(query.live.as_deref())?;
    let Ok(permit) = state.downloads.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_downloads",
            "too many downloads at once: try again later",
        ));
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let spec = vm.spec.clone();
    let shared = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let area = match spec.open() {
            Ok(area) => area,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        let options = DownloadOptions {
            compression,
            limits: WalkLimits::default(),
        };
        let prepared = match ops::prepare_download(area.as_ref(), live) {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        // Spent once the download may go ahead: a refusal leaves the grant usable.
        if let Access::Grant(grant) = &access {
            if let Err(e) = shared.used.spend(grant) {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        }
        let _ = ready_tx.send(Ok(()));
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
    });
    ready_rx.await.map_err(ApiError::internal)??;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let filename: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}.{extension}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
