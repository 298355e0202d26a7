//! Bearer API keys: compared in constant time, never logged.

use crate::error::ApiError;
use axum::http::{header, HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

/// Routes that never need a key.
pub const PUBLIC_ROUTES: &[&str] = &["/health", "/ready", "/metrics"];

/// The configured keys; empty means the server is open.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.0.len())
    }
}

impl ApiKeys {
    /// Keys from flags/env and an optional file of keys (one a line; blank lines and `#` comments skipped).
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let mut list: Vec<Vec<u8>> = keys
            .into_iter()
            .map(|k| k.trim().as_bytes().to_vec())
            .filter(|k| !k.is_empty())
            .collect();
        list.sort();
        list.dedup();
        Self(list)
    }

    /// Reads a key file.
    pub fn read_file(path: &std::path::Path) -> std::io::Result<Vec<String>> {
        let text = std::fs::read_to_string(path)?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect())
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `candidate` equals one of the keys. Every key is compared, in constant time.
    fn matches(&self, candidate: &[u8]) -> bool {
        let mut found = subtle::Choice::from(0u8);
        for key in &self.0 {
            found |= key.as_slice().ct_eq(candidate);
        }
        found.into()
    }

    /// Checks a request's `Authorization` header when keys are configured and the path is protected.
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.enabled() || PUBLIC_ROUTES.contains(&path) {
            return Ok(());
        }
        let unauthorized = |message: &str| {
            ApiError {
                status: StatusCode::UNAUTHORIZED,
                ..ApiError::invalid(message, None)
            }
            .code("invalid_api_key")
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim();
        if value.is_empty() {
            return Err(unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization header using \
                 Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ));
        }
        let key = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        match key {
            Some(key) if self.matches(key.as_bytes()) => Ok(()),
            _ => Err(unauthorized(
                "Incorrect API key provided. Check the key configured for this server.",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_protect_everything_but_public_routes() {
        let keys = ApiKeys::new(["sk-one".to_string(), " sk-two ".to_string(), String::new()]);
        let mut h = HeaderMap::new();
        assert!(keys.check("/health", &h).is_ok());
        assert_eq!(keys.check("/v1/models", &h).unwrap_err().status, 401);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer sk-two"));
        assert!(keys.check("/v1/embeddings", &h).is_ok());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer sk-three"));
        assert_eq!(
            keys.check("/v1/embeddings", &h).unwrap_err().code,
            Some("invalid_api_key")
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic sk-one"));
        assert!(keys.check("/v1/embeddings", &h).is_err());
        assert!(ApiKeys::default().check("/v1/embeddings", &HeaderMap::new()).is_ok());
        assert!(!format!("{keys:?}").contains("sk-"));
    }
}
