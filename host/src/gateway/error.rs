//! Error answers. Every non-2xx answer of the ingest listener is JSON `{"code", "message"}`:
//! rudder-sdk-python retries anything else as a network error, and a person reading the answer
//! needs to know what was wrong and what to do.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::log::{AppendError, LogError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: clients and metrics key on it.
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no route for {path}; send events to /v1/batch, /v1/track, /v1/identify, /v1/page, \
                 /v1/screen, /v1/group, /v1/alias or /v1/import"
            ),
        )
    }

    pub fn method_not_allowed(method: &http::Method, path: &str, allowed: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; use {allowed}"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        let unavailable = |code, after: u64| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                format!("{e}; nothing of this request was stored, retry later"),
            )
            .retry_after(Duration::from_secs(after))
        };
        match e {
            AppendError::Full => unavailable("log_full", 5),
            AppendError::NoSpace => unavailable("disk_full", 10),
            AppendError::Busy => unavailable("overloaded", 1),
            AppendError::Unavailable => unavailable("unavailable", 5),
            AppendError::Io(_) => unavailable("storage_error", 5),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            e.to_string(),
        )
    }
}
