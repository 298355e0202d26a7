//! openembed's inference engine: loads Hugging Face / sentence-transformers model folders and
//! turns text into the vectors sentence-transformers produces, on the CPU, fast.
//!
//! It owns model loading (one file per architecture in [`models`]), tokenization, the forward
//! pass and its kernels, pooling and reranker scoring. It knows nothing of requests, HTTP or
//! async: what a request means (prompts, tasks, limits, batching across requests) is the
//! `openembed-pipeline` crate's. The flow is
//! [`Model::tokenize`] → [`Model::embed_ids`] (packed batch → transformer → pooling → Dense →
//! normalize) → optionally [`truncate_dimensions`].
//!
//! ```no_run
//! use openembed_engine::{Model, LoadOptions, Truncation};
//! let model = Model::load("models/all-MiniLM-L6-v2".as_ref(), &LoadOptions::default())?;
//! let vectors = model.embed_texts(&["hello", "world"], Truncation::None)?;
//! assert_eq!(vectors[0].len(), model.info().dimension);
//! # Ok::<(), openembed_engine::Error>(())
//! ```

pub mod attention;
pub mod config;
pub mod dtype;
pub mod error;
pub mod kernels;
pub mod late_interaction;
pub mod model;
pub mod models;
pub mod packed;
pub mod parallel;
pub mod pooling;
pub mod rerank;
pub mod rotary;
pub mod sparse;
pub mod static_embedding;
pub mod tokenize;
pub mod torch_pickle;
pub mod transformer;
pub mod weights;

pub use dtype::DType;
pub use error::{Error, Result};
pub use late_interaction::{maxsim, sparse_dot, Side};
pub use model::{compute_pool, sparse_pairs, LoadOptions, Model, ModelInfo, ModelKind, Output, RerankInfo};
pub use packed::{budget_batches, fits_in_budget, PackedBatch};
pub use pooling::{normalize, truncate_dimensions, Pooling};
pub use rerank::{ClassifierInfo, LabelFunction};
pub use tokenize::{TokenizedInput, Truncation};
