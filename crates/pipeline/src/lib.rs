//! openembed's request pipeline: what an embeddings request *means*, written once for every
//! front end (the HTTP server, the command line, the Python package). No HTTP types live here;
//! the front ends translate their input into an [`EmbedRequest`] and the pipeline's
//! [`RequestError`] or vectors back into their protocol.
//!
//! What it owns, module by module:
//! - [`hub`] and [`home`]: model resolution (a folder, a Hugging Face hub id, or the default
//!   model in `./models` or the openembed home).
//! - [`registry`]: the served models (one scheduler each), by name and alias.
//! - [`plan`]: the request plan — prompt and `prompt_name`, `task`, truncation, `dimensions`,
//!   normalization — and the shaping of the vectors handed back.
//! - [`prepare`] and [`token_ids`]: tokenization, token-id inputs (tiktoken or native), the
//!   over-limit rule, long-input windows and the per-request token limit.
//! - [`scheduler`]: the token-budget batch queue of one model — fairness between requests,
//!   short requests between a long batch's layers, per-request failure isolation.
//! - [`rerank`]: a rerank request (its rules, pair tokenization, ranking) on the same scheduler.
//! - [`classify`]: a classification request (texts or pairs → every label's score) on the same
//!   scheduler.
//! - [`embed`]: one request through those steps ([`ServedModel::submit`], or
//!   [`ServedModel::embed_chunked`] for large offline inputs).
//! - [`quantize`]: compressed outputs (`int8`, `uint8`, `binary`, `ubinary`) and the calibrated
//!   ranges of the byte codes.
//! - [`error`]: the error categories front ends map to their protocol.
//! - [`metrics`]: queue and batch metrics (through the `metrics` facade).

pub mod classify;
pub mod embed;
pub mod error;
pub mod fault;
pub mod home;
pub mod hub;
pub mod metrics;
pub mod plan;
pub mod prepare;
pub mod quantize;
pub mod registry;
pub mod rerank;
pub mod scheduler;
pub mod token_ids;

pub use classify::{ClassifyInput, ClassifyJob};
pub use embed::{Embedded, Submitted};
pub use error::{ErrorKind, RequestError};
pub use plan::{Defaults, EmbedRequest, Input, Plan};
pub use quantize::{Codes, EmbeddingType};
pub use registry::{Alias, LoadError, ModelSpec, Registry, ServedModel};
pub use scheduler::SchedulerConfig;
pub use token_ids::TokenIds;
