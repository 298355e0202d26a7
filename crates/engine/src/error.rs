//! The engine's error type: every failure names the file, tensor or input it concerns.

use std::path::PathBuf;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a model or embedding inputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A required file is absent.
    #[error("missing file {path}: expected {expected}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What the file should hold.
        expected: String,
    },
    /// A file exists but its content is not what was expected.
    #[error("invalid {path}: {message}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the architecture needs is absent from the weights.
    #[error("tensor `{name}` not found in {path} (expected by the {architecture} architecture)")]
    MissingTensor {
        /// Weight file(s) searched.
        path: PathBuf,
        /// Tensor name without model prefix.
        name: String,
        /// The architecture that asked for it.
        architecture: String,
    },
    /// A tensor has the wrong shape or dtype.
    #[error("tensor `{name}` in {path}: expected {expected}, found {found}")]
    BadTensor {
        /// Weight file holding it.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// What was expected.
        expected: String,
        /// What is there.
        found: String,
    },
    /// The model uses something the engine does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The tokenizer failed on an input.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// An input is longer than the model accepts.
    #[error("input {index} has {tokens} tokens, more than the model's limit of {limit}")]
    InputTooLong {
        /// Position of the input in the batch.
        index: usize,
        /// Its token count.
        tokens: usize,
        /// The model limit.
        limit: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("input {index}: token id {id} at position {position} is outside the vocabulary (0..{vocab_size})")]
    TokenIdOutOfRange {
        /// Position of the input in the batch.
        index: usize,
        /// Position of the id in the input.
        position: usize,
        /// The id.
        id: i64,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A task adapter the model does not have (or any task, for a model without tasks).
    #[error("{}", unknown_task_message(task, known))]
    UnknownTask {
        /// The task asked for.
        task: String,
        /// The model's tasks.
        known: Vec<String>,
    },
    /// An input has no tokens at all.
    #[error("input {index} is empty: at least one token is required")]
    EmptyInput {
        /// Position of the input in the batch.
        index: usize,
    },
    /// A request for a vector size the model cannot give.
    #[error("dimensions must be between 1 and {max}, got {requested}")]
    BadDimensions {
        /// Asked-for size.
        requested: usize,
        /// The model's embedding size.
        max: usize,
    },
    /// The thread pool could not be built.
    #[error("cannot start {threads} compute threads: {message}")]
    ThreadPool {
        /// Requested thread count.
        threads: usize,
        /// Why it failed.
        message: String,
    },
}

impl Error {
    /// True when the error is caused by the input rather than the model or the machine.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Error::InputTooLong { .. }
                | Error::TokenIdOutOfRange { .. }
                | Error::EmptyInput { .. }
                | Error::UnknownTask { .. }
                | Error::BadDimensions { .. }
                | Error::Tokenizer(_)
        )
    }
}

fn unknown_task_message(task: &str, known: &[String]) -> String {
    if known.is_empty() {
        format!("task `{task}` was given, but this model has no task adapters")
    } else {
        format!("unknown task `{task}`; this model's tasks are: {}", known.join(", "))
    }
}
