//! The one place where failures become JSON errors with an HTTP status: every handler fails
//! with an [`ApiError`] (OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`), and
//! a route of another protocol answers it in that protocol's shape ([`Protocol::answer`]).

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

    /// The status and body of this error on a route of `protocol` (OpenAI's body as it is,
    /// another protocol's shape by [`Protocol::answer`]).
    pub fn in_protocol(&self, protocol: Protocol) -> (StatusCode, serde_json::Value) {
        match protocol {
            Protocol::OpenAi => (self.status, self.body()),
            other => other.answer(self.status, &self.message, self.code),
        }
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

/// The protocol a route speaks, which decides the shape (and for TEI the status) of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `{"error": {"message", "type", "param", "code"}}`.
    #[default]
    OpenAi,
    /// Ollama: `{"error": "…"}`.
    Ollama,
    /// Text Embeddings Inference: `{"error": "…", "error_type": "…"}`, with TEI's statuses (422
    /// for an invalid request, 400 for an empty one or one a model's outputs cannot answer).
    Tei,
    /// Cohere: `{"message": "…"}`.
    Cohere,
}

/// `code` of an error about empty inputs (TEI answers those 400 `Empty`, not 422).
pub const EMPTY_INPUT: &str = "empty_input";

/// `code` of an error about a model that lacks the asked output (a sparse route on a dense-only
/// model): 400 on every protocol, TEI's included, naming the outputs the model has.
pub const OUTPUT_NOT_SERVED: &str = "output_not_served";

impl Protocol {
    /// The status and body of an error on this protocol's routes, from the OpenAI-shaped
    /// error's status, message and code.
    pub fn answer(self, status: StatusCode, message: &str, code: Option<&str>) -> (StatusCode, serde_json::Value) {
        match self {
            Self::OpenAi => (status, serde_json::Value::Null),
            Self::Ollama => (status, serde_json::json!({ "error": message })),
            Self::Cohere => (status, serde_json::json!({ "message": message })),
            Self::Tei => {
                let (status, kind) = match status {
                    StatusCode::BAD_REQUEST if code == Some(EMPTY_INPUT) => (status, "Empty"),
                    StatusCode::BAD_REQUEST if code == Some(OUTPUT_NOT_SERVED) => (status, "Validation"),
                    StatusCode::BAD_REQUEST => (StatusCode::UNPROCESSABLE_ENTITY, "Validation"),
                    StatusCode::TOO_MANY_REQUESTS => (status, "Overloaded"),
                    StatusCode::SERVICE_UNAVAILABLE => (status, "Unhealthy"),
                    s if s.is_server_error() => (s, "Backend"),
                    s => (s, "Validation"),
                };
                (status, serde_json::json!({ "error": message, "error_type": kind }))
            }
        }
    }
}
