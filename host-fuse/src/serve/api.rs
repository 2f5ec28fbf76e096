//! The routes: list, status, grants (upload and download in [`archive`], live output in
//! `output.rs`); who may ask what.

mod archive;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::grant::{now_unix, Grant, Operation};
use super::{grant_path, output, sha256, State, Vm};
use crate::ops::{self, StatusReport};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The web page, served from the binary.
const PAGE: &str = include_str!("page.html");

/// The OpenAPI 3.1 description of this API (`docs/openapi.json`), served from the binary.
const OPENAPI: &str = include_str!("../../../docs/openapi.json");

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
            get(archive::download)
                .put(archive::upload)
                .post(archive::upload),
        )
        .route("/api/v1/vms/{vm}/output", get(output::follow))
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
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

pub(super) fn vm(state: &State, name: &str) -> Result<Arc<Vm>> {
    state
        .vms
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned()
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

/// Reads the list now and caches it (after the VMs changed).
pub(super) fn refresh_list(state: &State) {
    let body = render_list(state);
    *state.list.value.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), body));
}

fn render_list(state: &State) -> Bytes {
    let served = state.vms.read().unwrap_or_else(|e| e.into_inner()).clone();
    let vms: Vec<VmView> = served.values().map(|vm| vm_view(vm)).collect();
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

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    access_token: Option<String>,
    watch: Option<String>,
}

async fn list(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    query: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    operator(&state, &headers, query.access_token.as_deref())?;
    match query.watch.as_deref() {
        None | Some("false" | "0" | "no") => {}
        Some("" | "true" | "1" | "yes") => return watch_list(state),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("watch is true or false, not {other:?}"),
            ))
        }
    }
    let body = list_json(&state).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /api/v1/vms?watch=true`: Server-Sent Events, a `list` event with the list's JSON
/// at once and again each time it changes (it is read again every
/// [`Limits::list_max_age`](super::Limits::list_max_age)). A watcher counts as a
/// follower of live output does.
fn watch_list(state: Arc<State>) -> Result<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Ok(permit) = state.followers.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_followers",
            "too many clients follow the list or output now: try again later",
        ));
    };
    let every = state.limits.list_max_age.max(Duration::from_millis(100));
    let events = futures_util::stream::unfold(
        (state, None::<Bytes>, permit),
        move |(state, last, permit)| async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(every).await;
                }
                let Ok(body) = list_json(&state).await else {
                    tokio::time::sleep(every).await;
                    continue;
                };
                if last.as_ref() == Some(&body) {
                    continue;
                }
                let event = Event::default()
                    .event("list")
                    .data(String::from_utf8_lossy(&body));
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (state, Some(body), permit),
                ));
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
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
