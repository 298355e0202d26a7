//! The request plan: what a request asks of its model, settled once for every front end.
//! [`plan`] checks a request against its model (prompt and `prompt_name`, `task`,
//! `dimensions`, truncation) and [`Plan::shape`] cuts and normalizes the vectors it gets back.

use crate::error::RequestError;
use crate::prepare::WindowLayout;
use crate::token_ids::TokenIds;
use openembed_engine::{normalize, truncate_dimensions, ModelInfo, ModelKind, Output, Side, Truncation};

/// One input as a front end received it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Text.
    Text(String),
    /// Token ids (tiktoken ids or the model's own, as the model is served).
    Tokens(Vec<i64>),
}

impl Input {
    /// Bytes this input holds in memory (for the server's in-flight budget).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match self {
                Input::Text(t) => t.len(),
                Input::Tokens(ids) => ids.len() * std::mem::size_of::<i64>(),
            }
    }
}

/// An embeddings request as every front end states it: OpenAI's body, `openembed embed`'s flags
/// and Python's `encode` arguments all map to these fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedRequest {
    /// The model as the caller named it (for messages).
    pub model: String,
    /// One of the model's named prompts (sentence-transformers' `prompt_name`).
    pub prompt_name: Option<String>,
    /// A prompt given as text; wins over `prompt_name` (sentence-transformers' `prompt`).
    pub prompt: Option<String>,
    /// Task adapter (jina-embeddings-v3).
    pub task: Option<String>,
    /// Cut over-long inputs instead of refusing them; `None`: the front end's default.
    pub truncate: Option<bool>,
    /// Cut vectors to this many dimensions.
    pub dimensions: Option<usize>,
    /// L2-normalize the vectors handed back; `None`: when the model's pipeline normalizes (so a
    /// cut vector of such a model is normalized again, as OpenAI's `dimensions` are).
    pub normalize: Option<bool>,
    /// What token-id inputs mean; `None`: as the model is served (`--token-ids`). A protocol
    /// whose ids are always the model's own (TEI's) says `Native`.
    pub token_ids: Option<TokenIds>,
    /// Ask for the model's sparse output (SPLADE's vocabulary weights, bge-m3's lexical weights)
    /// instead of a dense vector.
    pub sparse: bool,
    /// Ask for token vectors instead of a dense vector: the model's multi-vector output
    /// (ColBERT, bge-m3), or its last hidden states when it has none.
    pub token_vectors: bool,
    /// Query or document: a ColBERT model tokenizes the two apart (prefix, query expansion).
    pub side: Side,
    /// Sparse output: keep at most this many of the largest weights per input
    /// (sentence-transformers' `max_active_dims`).
    pub max_active_dims: Option<usize>,
    /// Sparse output: drop the weights below this.
    pub min_weight: Option<f32>,
}

/// How to run one validated request on its model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Prompt text put in front of every text input (a task's instruction first).
    pub prompt: Option<String>,
    /// Task adapter (index into the model's tasks).
    pub task: Option<usize>,
    /// Truncation of over-long inputs.
    pub truncation: Truncation,
    /// What to tell a caller whose input is over the limit (how to turn truncation on).
    pub truncate_hint: &'static str,
    /// Cut vectors to this many dimensions.
    pub dimensions: Option<usize>,
    /// L2-normalize the handed-back vectors.
    pub normalize: bool,
    /// Whether the model's own output is already L2-normalized.
    pub model_normalizes: bool,
    /// Long-input mode: split over-long inputs into windows sharing this many tokens.
    pub windows: Option<usize>,
    /// What token-id inputs mean, when the request says (else as the model is served).
    pub token_ids: Option<TokenIds>,
    /// What the engine hands back per input: a vector (shaped by the plan), sparse weights or
    /// token vectors (handed back as they are).
    pub output: Output,
    /// Query or document side of the inputs.
    pub side: Side,
    /// Sparse output: the largest weights kept per input.
    pub max_active_dims: Option<usize>,
    /// Sparse output: the smallest weight kept.
    pub min_weight: Option<f32>,
}

/// A front end's defaults that a request may override.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Truncate when the request does not say.
    pub auto_truncate: bool,
    /// Which side truncation cuts.
    pub truncation_side: Truncation,
    /// The prompt used when a request names none (`--default-prompt-name`), before the
    /// model's own default.
    pub default_prompt_name: Option<String>,
    /// Long-input mode (`--long-input-windows`): the overlap of consecutive windows.
    pub long_input_windows: Option<usize>,
    /// How a caller of this front end turns truncation on (ends the over-limit message).
    pub truncate_hint: &'static str,
}

impl Default for Defaults {
    /// Refuse over-long inputs; when asked to truncate, keep their beginning.
    fn default() -> Self {
        Self {
            auto_truncate: false,
            truncation_side: Truncation::End,
            default_prompt_name: None,
            long_input_windows: None,
            truncate_hint: "",
        }
    }
}

/// Where a model that does not embed is served (the server's routes; the CLI's commands are
/// named alike), or `None` for an embedding model.
pub fn not_embedding(kind: ModelKind) -> Option<&'static str> {
    match kind {
        ModelKind::Embedding => None,
        ModelKind::Reranker => Some("POST /v1/rerank (or `openembed rerank`)"),
        ModelKind::Classifier => Some("POST /predict (or `openembed classify`)"),
        ModelKind::Sparse => Some("POST /embed_sparse"),
        ModelKind::MultiVector => Some("POST /embed_all (one vector per token) or POST /v1/rerank (MaxSim)"),
    }
}

/// Checks `dimensions`, the prompt and `task` against the model and settles truncation and
/// normalization; `default_task` applies when the request names no task.
pub fn plan(
    request: &EmbedRequest,
    info: &ModelInfo,
    defaults: &Defaults,
    default_task: Option<&str>,
) -> Result<Plan, RequestError> {
    let output = match (request.sparse, request.token_vectors, info.multi_vector) {
        (true, _, _) => Output::Sparse,
        (false, true, Some(_)) => Output::MultiVector(request.side),
        (false, true, None) => Output::Tokens,
        (false, false, _) => Output::Pooled,
    };
    let outputs = || info.outputs().join(", ");
    if output == Output::Sparse && !info.has_sparse() {
        return Err(RequestError::invalid(
            format!(
                "The model '{}' has no sparse output; its outputs are: {}.",
                request.model,
                outputs()
            ),
            Some("model"),
        ));
    }
    if output != Output::Sparse && (request.max_active_dims.is_some() || request.min_weight.is_some()) {
        let param = if request.max_active_dims.is_some() {
            "max_active_dims"
        } else {
            "min_weight"
        };
        return Err(RequestError::invalid(
            format!("'{param}' applies to sparse outputs only."),
            Some(param),
        ));
    }
    if request.max_active_dims == Some(0) {
        return Err(RequestError::invalid(
            "'max_active_dims' must be at least 1.",
            Some("max_active_dims"),
        ));
    }
    if request.min_weight.is_some_and(|w| !w.is_finite()) {
        return Err(RequestError::invalid(
            "'min_weight' must be a finite number.",
            Some("min_weight"),
        ));
    }
    if output != Output::Pooled && request.dimensions.is_some() {
        return Err(RequestError::invalid(
            "'dimensions' applies to dense vectors only, not to sparse weights or token vectors.",
            Some("dimensions"),
        ));
    }
    let other_output = output != Output::Pooled && matches!(info.kind(), ModelKind::Sparse | ModelKind::MultiVector);
    if let Some(route) = not_embedding(info.kind()).filter(|_| !other_output) {
        return Err(RequestError::invalid(
            format!(
                "The model '{}' is a {}, not an embedding model; use {route}.",
                request.model,
                info.kind().name()
            ),
            Some("model"),
        ));
    }
    if let Some(d) = request.dimensions {
        if d == 0 || d > info.dimension {
            return Err(RequestError::invalid(
                format!(
                    "Invalid value for 'dimensions' = {d}. This model's dimension is {}.",
                    info.dimension
                ),
                Some("dimensions"),
            ));
        }
    }
    let default = defaults
        .default_prompt_name
        .as_ref()
        .filter(|n| info.prompts.contains_key(*n));
    let prompt = match (&request.prompt, &request.prompt_name) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(name)) => match info.prompts.get(name) {
            Some(text) => Some(text.clone()),
            None => {
                let known: Vec<&str> = info.prompts.keys().map(String::as_str).collect();
                return Err(RequestError::invalid(
                    format!("Invalid value for 'prompt_name' = {name}. This model's prompts are: {known:?}."),
                    Some("prompt_name"),
                ));
            }
        },
        (None, None) => default
            .or(info.default_prompt_name.as_ref())
            .and_then(|name| info.prompts.get(name).cloned()),
    };
    let task = match request.task.as_deref().or(default_task) {
        None => None,
        Some(name) => match info.tasks.iter().position(|t| t == name) {
            Some(index) => Some(index),
            None if info.tasks.is_empty() => {
                return Err(RequestError::invalid(
                    format!("Invalid value for 'task' = {name}. This model has no task adapters; leave 'task' out."),
                    Some("task"),
                ))
            }
            None => {
                return Err(RequestError::invalid(
                    format!(
                        "Invalid value for 'task' = {name}. This model's tasks are: {:?}.",
                        info.tasks
                    ),
                    Some("task"),
                ))
            }
        },
    };
    let prompt = info.prefix(task, prompt.as_deref());
    let truncation = if request.truncate.unwrap_or(defaults.auto_truncate) {
        defaults.truncation_side
    } else {
        Truncation::None
    };
    Ok(Plan {
        prompt,
        task,
        truncation,
        truncate_hint: defaults.truncate_hint,
        dimensions: request.dimensions,
        normalize: request.normalize.unwrap_or(info.normalize),
        model_normalizes: info.normalize,
        // Long inputs are split only for a vector per input.
        windows: defaults.long_input_windows.filter(|_| output == Output::Pooled),
        token_ids: request.token_ids,
        output,
        side: request.side,
        max_active_dims: request.max_active_dims,
        min_weight: request.min_weight,
    })
}

impl Plan {
    /// One handed-back vector from the model's: cut to `dimensions` and then L2-normalized when
    /// the plan says so; uncut, normalized only when the model's output is not already.
    pub fn shape(&self, vector: Vec<f32>) -> Result<Vec<f32>, RequestError> {
        if self.output == Output::Sparse {
            return Ok(self.sparse_limits(vector));
        }
        if self.output != Output::Pooled {
            return Ok(vector); // token vectors are the model's as they are
        }
        match self.dimensions {
            Some(d) => {
                truncate_dimensions(&vector, d, self.normalize).map_err(|e| RequestError::internal(e.to_string()))
            }
            _ => {
                let mut vector = vector;
                if self.normalize && !self.model_normalizes {
                    normalize(&mut vector);
                }
                Ok(vector)
            }
        }
    }

    /// A sparse row (`[id, weight, …]` by id) with the weights under `min_weight` dropped and
    /// only the `max_active_dims` largest kept (ties: the lower id), still by id.
    pub fn sparse_limits(&self, row: Vec<f32>) -> Vec<f32> {
        let count = row.len() / 2;
        let too_many = self.max_active_dims.is_some_and(|k| count > k);
        if !too_many && self.min_weight.is_none() {
            return row;
        }
        let mut pairs: Vec<(u32, f32)> = openembed_engine::sparse_pairs(&row)
            .filter(|(_, w)| self.min_weight.is_none_or(|m| *w >= m))
            .collect();
        if let Some(k) = self.max_active_dims.filter(|&k| pairs.len() > k) {
            pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            pairs.truncate(k);
            pairs.sort_by_key(|p| p.0);
        }
        pairs.into_iter().flat_map(|(id, w)| [id as f32, w]).collect()
    }

    /// Length of the handed-back vectors of a model with `dimension`.
    pub fn output_dimension(&self, dimension: usize) -> usize {
        self.dimensions.map_or(dimension, |d| d.min(dimension))
    }

    /// The handed-back vectors of a request, in input order: its windows' vectors combined per
    /// input (long-input mode), then each shaped by [`Self::shape`].
    pub fn results(&self, layout: &WindowLayout, vectors: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, RequestError> {
        layout.combine(vectors).into_iter().map(|v| self.shape(v)).collect()
    }
}
