//! The pipeline's metrics (queues, batches, engine time), through the `metrics` facade: the
//! server installs a Prometheus recorder and exposes them; elsewhere they cost nothing.

use std::time::Duration;

/// Queued requests per model.
pub const QUEUE_REQUESTS: &str = "openembed_queue_requests";
/// Queued tokens per model.
pub const QUEUE_TOKENS: &str = "openembed_queue_tokens";
/// Inputs per engine batch.
pub const BATCH_INPUTS: &str = "openembed_batch_inputs";
/// Tokens per engine batch.
pub const BATCH_TOKENS: &str = "openembed_batch_tokens";
/// Distinct requests per engine batch (more than one = dynamic batching at work).
pub const BATCH_REQUESTS: &str = "openembed_batch_requests";
/// Engine time per batch, in seconds.
pub const INFERENCE_SECONDS: &str = "openembed_inference_duration_seconds";
/// Tokens embedded.
pub const TOKENS: &str = "openembed_tokens_embedded_total";
/// Inputs embedded.
pub const INPUTS: &str = "openembed_inputs_embedded_total";
/// Engine batches that panicked.
pub const ENGINE_PANICS: &str = "openembed_engine_panics_total";
/// Failed batches of several requests that were run again one request at a time.
pub const BATCH_RETRIES: &str = "openembed_batch_retries_total";
/// Counter: batches of new short requests run between the layers of a longer batch.
pub const BATCHES_BETWEEN_LAYERS: &str = "openembed_batches_between_layers_total";
/// Time a request waited in its model's queue before its first batch started, in seconds.
pub const QUEUE_SECONDS: &str = "openembed_queue_duration_seconds";
/// One series per served model, value 1, labelled with its dtype, architecture and kernels.
pub const MODEL_INFO: &str = "openembed_model_info";

/// Publishes what a served model runs as ([`MODEL_INFO`]).
pub fn model_info(model: &str, dtype: &str, architecture: &str) {
    let labels = [
        ("model", model.to_string()),
        ("dtype", dtype.to_string()),
        ("architecture", architecture.to_string()),
        ("kernels", openembed_engine::kernels::isa_name()),
    ];
    metrics::gauge!(MODEL_INFO, &labels).set(1.0);
}

/// Publishes a model's queue depth.
pub fn queue_depth(model: &str, requests: usize, tokens: usize) {
    metrics::gauge!(QUEUE_REQUESTS, "model" => model.to_string()).set(requests as f64);
    metrics::gauge!(QUEUE_TOKENS, "model" => model.to_string()).set(tokens as f64);
}

/// Records one engine batch.
pub fn batch(model: &str, inputs: usize, tokens: usize, requests: usize, elapsed: Duration) {
    let m = || model.to_string();
    metrics::histogram!(BATCH_INPUTS, "model" => m()).record(inputs as f64);
    metrics::histogram!(BATCH_TOKENS, "model" => m()).record(tokens as f64);
    metrics::histogram!(BATCH_REQUESTS, "model" => m()).record(requests as f64);
    metrics::histogram!(INFERENCE_SECONDS, "model" => m()).record(elapsed.as_secs_f64());
    metrics::counter!(TOKENS, "model" => m()).increment(tokens as u64);
    metrics::counter!(INPUTS, "model" => m()).increment(inputs as u64);
}

/// Counts an engine panic.
pub fn engine_panic(model: &str) {
    metrics::counter!(ENGINE_PANICS, "model" => model.to_string()).increment(1);
}

/// Counts a failed multi-request batch that was run again request by request.
pub fn batch_retry(model: &str) {
    metrics::counter!(BATCH_RETRIES, "model" => model.to_string()).increment(1);
}

/// Counts a batch of new short requests run between the layers of a longer one.
pub fn batch_between_layers(model: &str) {
    metrics::counter!(BATCHES_BETWEEN_LAYERS, "model" => model.to_string()).increment(1);
}

/// Records how long a request waited before its first batch started.
pub fn queue_time(model: &str, waited: Duration) {
    metrics::histogram!(QUEUE_SECONDS, "model" => model.to_string()).record(waited.as_secs_f64());
}
