//! Prometheus metrics: names, buckets and the recorder behind `GET /metrics`.
//!
//! Metrics go through the `metrics` facade; the Prometheus recorder is installed once per
//! process (the first server started installs it). Without a recorder the calls are no-ops.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
pub use openembed_pipeline::metrics::*;
use std::sync::OnceLock;
use std::time::Duration;

/// Requests by route, method and status.
pub const REQUESTS: &str = "openembed_requests_total";
/// Request latency by route, in seconds.
pub const REQUEST_SECONDS: &str = "openembed_request_duration_seconds";
/// Requests refused because the server's in-flight memory budget was full.
pub const BUDGET_REFUSALS: &str = "openembed_budget_refusals_total";
/// Bytes of request bodies and decoded inputs held by admitted requests.
pub const BUDGET_BYTES: &str = "openembed_inflight_bytes";

const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
const TOKEN_BUCKETS: &[f64] = &[16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0];
const SECOND_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide Prometheus handle (installs the recorder on first use).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(SECOND_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_INPUTS.into()), SIZE_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_REQUESTS.into()), SIZE_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), TOKEN_BUCKETS));
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Gives every family its `# HELP` line (the exporter writes `# TYPE` itself).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "HTTP requests answered, by route, method and status.");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request, by route."
    );
    describe_gauge!(QUEUE_REQUESTS, "Requests waiting in a model's queue.");
    describe_gauge!(QUEUE_TOKENS, "Tokens waiting in a model's queue.");
    describe_histogram!(BATCH_INPUTS, "Inputs per engine batch.");
    describe_histogram!(BATCH_TOKENS, "Tokens per engine batch.");
    describe_histogram!(
        BATCH_REQUESTS,
        "Distinct requests per engine batch (more than one: requests batched together)."
    );
    describe_histogram!(INFERENCE_SECONDS, Unit::Seconds, "Engine time per batch.");
    describe_counter!(TOKENS, "Tokens embedded (or scored), by model.");
    describe_counter!(INPUTS, "Inputs embedded (or scored), by model.");
    describe_counter!(
        ENGINE_PANICS,
        "Engine batches that panicked (their requests got a 500)."
    );
    describe_counter!(
        BATCH_RETRIES,
        "Failed batches of several requests that were run again one request at a time."
    );
    describe_counter!(
        BATCHES_BETWEEN_LAYERS,
        "Batches of new short requests run between the layers of a longer batch."
    );
    describe_histogram!(
        QUEUE_SECONDS,
        Unit::Seconds,
        "Time a request waited in its model's queue before its first batch started."
    );
    describe_counter!(
        BUDGET_REFUSALS,
        "Requests refused (429) because the in-flight memory budget was full."
    );
    describe_gauge!(
        BUDGET_BYTES,
        Unit::Bytes,
        "Bytes of request bodies and decoded inputs held by admitted requests."
    );
    describe_gauge!(
        MODEL_INFO,
        "One series per served model (value 1), labelled with its dtype, architecture and kernels."
    );
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    match handle() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// Records one finished HTTP request.
pub fn request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("route", route.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!(REQUESTS, &labels).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route.to_string()).record(elapsed.as_secs_f64());
}

/// Publishes the bytes held under the in-flight budget.
pub fn budget_bytes(bytes: usize) {
    metrics::gauge!(BUDGET_BYTES).set(bytes as f64);
}

/// Counts a request refused for lack of in-flight budget.
pub fn budget_refusal() {
    metrics::counter!(BUDGET_REFUSALS).increment(1);
}
