//! Shared server state and the shutdown life cycle.

use crate::auth::ApiKeys;
use crate::budget::MemoryBudget;
use crate::error::ApiError;
use openembed_pipeline::{Defaults, Registry};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// How a client of the server turns truncation on (ends the over-limit message).
pub const TRUNCATE_HINT: &str =
    "To cut over-long inputs at the limit instead, send \"truncate\": true (or start openembed with --auto-truncate).";

/// Request limits (server flags).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most tokens in one request, summed after truncation.
    pub max_request_tokens: usize,
    /// Most bytes in a request body.
    pub max_body_bytes: usize,
    /// Time a client has to send the whole body.
    pub body_timeout: std::time::Duration,
    /// Most bytes all admitted requests may hold at once (bodies, decoded inputs, responses).
    pub max_inflight_bytes: usize,
}

/// What every handler sees.
pub struct AppState {
    /// Served models and aliases.
    pub registry: Registry,
    /// Request limits.
    pub limits: Limits,
    /// Truncation defaults (`--auto-truncate`, `--truncation-side`).
    pub defaults: Defaults,
    /// Configured API keys (empty = open).
    pub keys: ApiKeys,
    /// Memory held by admitted requests, bounded by `limits.max_inflight_bytes`.
    pub budget: Arc<MemoryBudget>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl AppState {
    /// New state, accepting work. Over-limit errors end with the server's [`TRUNCATE_HINT`].
    pub fn new(registry: Registry, limits: Limits, defaults: Defaults, keys: ApiKeys) -> Self {
        Self {
            registry,
            limits,
            defaults: Defaults {
                truncate_hint: TRUNCATE_HINT,
                ..defaults
            },
            keys,
            budget: MemoryBudget::new(limits.max_inflight_bytes),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Begins shutdown: `/ready` turns 503 and new embedding requests get 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.idle.notify_waiters();
    }

    /// Admitted embedding requests still running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no admitted request is running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Marks an admitted embeddings request for the drain on shutdown.
pub struct InFlight(Arc<AppState>);

impl InFlight {
    /// Admits a request, or refuses it with 503 when shutting down.
    pub fn enter(state: &Arc<AppState>) -> Result<Self, ApiError> {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        if state.is_draining() {
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            state.idle.notify_waiters();
            return Err(ApiError::unavailable(
                "The server is shutting down; please retry on another instance.",
            ));
        }
        Ok(Self(Arc::clone(state)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
