//! Errors as the API returns them: a status code and `{"error": {"code", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::grant::GrantError;
use crate::area::{AreaError, StatusError};
use crate::ops::{DownloadError, UploadError};

/// An error answer of the API. Nothing was changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`grant_used`, `upload_in_progress`, ...).
    pub code: &'static str,
    /// One sentence for people.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn unknown_vm(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_vm",
            format!("no VM named {name:?} in this server's configuration"),
        )
    }

    pub(crate) fn internal(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            what.to_string(),
        )
    }
}

/// The message and its causes, as the CLI shows them.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> ApiError {
        let (status, code) = match &e {
            GrantError::Invalid => (StatusCode::FORBIDDEN, "grant_invalid"),
            GrantError::Expired { .. } => (StatusCode::FORBIDDEN, "grant_expired"),
            GrantError::Used => (StatusCode::FORBIDDEN, "grant_used"),
            GrantError::State { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "grant_state"),
        };
        ApiError::new(status, code, chain(&e))
    }
}

impl From<AreaError> for ApiError {
    fn from(e: AreaError) -> ApiError {
        let (status, code) = match &e {
            AreaError::Busy { .. } => (StatusCode::CONFLICT, "vm_running"),
            AreaError::NoImage { .. } => (StatusCode::SERVICE_UNAVAILABLE, "area_missing"),
            AreaError::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            AreaError::BadName { .. } | AreaError::NameCollision { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "archive_refused")
            }
            AreaError::Corrupt { .. } | AreaError::AmbiguousVolume { .. } => {
                (StatusCode::BAD_GATEWAY, "area_corrupt")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "area_error"),
        };
        ApiError::new(status, code, chain(&e))
    }
}

impl From<StatusError> for ApiError {
    fn from(e: StatusError) -> ApiError {
        match e {
            StatusError::Area(area) => area.into(),
            other => ApiError::new(StatusCode::BAD_GATEWAY, "status_unreadable", chain(&other)),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> ApiError {
        match e {
            UploadError::Area(area) => area.into(),
            UploadError::Status(status) => status.into(),
            UploadError::RunInProgress { .. } => {
                ApiError::new(StatusCode::CONFLICT, "run_in_progress", chain(&e))
            }
            UploadError::Archive(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "archive_refused",
                chain(&e),
            ),
            other => ApiError::internal(chain(&other)),
        }
    }
}

impl From<DownloadError> for ApiError {
    fn from(e: DownloadError) -> ApiError {
        match e {
            DownloadError::RunNotDone => ApiError::new(
                StatusCode::CONFLICT,
                "run_not_done",
                "the VM is running and its run is not done: wait for it, or ask with live=true for files that may be mid-write",
            ),
            DownloadError::Area(area) => area.into(),
            DownloadError::Status(status) => status.into(),
            other => ApiError::internal(chain(&other)),
        }
    }
}
