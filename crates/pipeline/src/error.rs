//! Why a request was refused or failed, in categories every front end maps to its protocol:
//! the server to an HTTP status and OpenAI's error body, the command line to a message and exit
//! status, Python to an exception.

use std::fmt;

/// The category of a [`RequestError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (a field, an input, a limit): the caller must change it.
    Invalid,
    /// The named model is not served.
    ModelNotFound,
    /// The queue is full: retry after `retry_after` seconds.
    QueueFull,
    /// Shutting down: retry elsewhere or later.
    Unavailable,
    /// The engine or the pipeline failed.
    Internal,
}

/// A refused or failed request: a category, OpenAI-worded message, the field it is about and,
/// where the contract has one, a machine-readable code.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    /// Category.
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// Machine-readable code (`model_not_found`, `max_tokens_per_request`, …).
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying ([`ErrorKind::QueueFull`], [`ErrorKind::Unavailable`]).
    pub retry_after: Option<u64>,
}

impl RequestError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A wrong request, about `param`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            param: param.map(str::to_owned),
            ..Self::new(ErrorKind::Invalid, message)
        }
    }

    /// An unknown model: OpenAI's sentence, then the names served.
    pub fn model_not_found<'a>(model: &str, served: impl IntoIterator<Item = &'a str>) -> Self {
        let served: Vec<&str> = served.into_iter().collect();
        let listed = if served.is_empty() {
            "No model is served.".to_string()
        } else {
            format!(
                "Served here: {} (more names can be given with --alias NAME=MODEL).",
                served.join(", ")
            )
        };
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                ErrorKind::ModelNotFound,
                format!("The model '{model}' does not exist or you do not have access to it. {listed}"),
            )
        }
    }

    /// The model's queue is full.
    pub fn queue_full(retry_after: u64) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                ErrorKind::QueueFull,
                "The server is at capacity: too many tokens are queued. Please retry after a short wait.",
            )
        }
    }

    /// Shutting down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(ErrorKind::Unavailable, message)
        }
    }

    /// An internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Sets the `code`.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}
