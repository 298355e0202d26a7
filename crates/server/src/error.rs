//! The one place where failures become OpenAI-shaped JSON errors with an HTTP status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use openembed_pipeline::{ErrorKind, RequestError};
use serde::Serialize;

/// The serialized error, fields in OpenAI's order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// An error as the API reports it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message (OpenAI's wording where it has one).
    pub message: String,
    /// `type` field.
    pub kind: &'static str,
    /// `param` field.
    pub param: Option<String>,
    /// `code` field.
    pub code: Option<&'static str>,
    /// `Retry-After` seconds for 429/503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
            retry_after: None,
        }
    }

    /// OpenAI's "'$.field' is invalid." for a field of the wrong type, followed by what it must
    /// be (instead of OpenAI's pointer to its own API reference).
    pub fn invalid_field(field: &str, expected: &str) -> Self {
        Self::invalid(format!("'$.{field}' is invalid. It must be {expected}."), Some(field))
    }

    /// A request-level error with another status.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            ..Self::invalid(message, None)
        }
    }

    /// 429: the server's in-flight memory budget is full.
    pub fn busy(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "requests",
            code: Some("rate_limit_exceeded"),
            retry_after: Some(1),
            ..Self::invalid(message, None)
        }
    }

    /// 500 for an internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..Self::invalid(message, None)
        }
    }

    /// 503 while starting or shutting down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            retry_after: Some(1),
            ..Self::invalid(message, None)
        }
    }

    /// Sets the `code` field.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

/// A pipeline failure as OpenAI reports it: 400 `invalid_request_error`, 404
/// `model_not_found`, 429 `requests`, 503 or 500 `server_error`.
impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let (status, kind) = match e.kind {
            ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ErrorKind::ModelNotFound => (StatusCode::NOT_FOUND, "invalid_request_error"),
            ErrorKind::QueueFull => (StatusCode::TOO_MANY_REQUESTS, "requests"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        Self {
            status,
            message: e.message,
            kind,
            param: e.param,
            code: e.code,
            retry_after: e.retry_after,
        }
    }
}

impl ApiError {
    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(self.fields()).unwrap_or(serde_json::Value::Null)
    }

    fn fields(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorFields {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.fields())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
