//! The embeddings request pipeline without HTTP, shared by the server and `openembed batch`:
//! [`plan`] checks a decoded request against its model, [`crate::prepare::prepare`] turns its
//! inputs into token ids, and [`respond`] builds the OpenAI response from the vectors.

use crate::api::{encode, EmbeddingObject, EmbeddingsRequest, EmbeddingsResponse, EncodingFormat, Usage};
use crate::error::ApiError;
use openembed_engine::{truncate_dimensions, ModelInfo, Truncation};

/// How to run one validated request on its model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Prompt text put in front of every text input (a task's instruction first).
    pub prompt: Option<String>,
    /// Task adapter (index into the model's tasks).
    pub task: Option<usize>,
    /// Truncation of over-long inputs.
    pub truncation: Truncation,
    /// Cut vectors to this many dimensions.
    pub dimensions: Option<usize>,
    /// Normalize cut vectors again (the model's pipeline normalizes).
    pub renormalize: bool,
    /// Output encoding.
    pub encoding: EncodingFormat,
    /// Long-input mode: split over-long inputs into windows sharing this many tokens.
    pub windows: Option<usize>,
}

/// Server-wide defaults a request may override.
#[derive(Debug, Clone, Default)]
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
}

/// Checks `dimensions`, `prompt_name` and `task` against the model and settles truncation;
/// `default_task` applies when the request names no task.
pub fn plan(
    request: &EmbeddingsRequest,
    info: &ModelInfo,
    defaults: &Defaults,
    default_task: Option<&str>,
) -> Result<Plan, ApiError> {
    if info.rerank.is_some() {
        return Err(ApiError::invalid(
            format!(
                "The model '{}' is a reranker, not an embedding model; use POST /v1/rerank.",
                request.model
            ),
            Some("model"),
        ));
    }
    if let Some(d) = request.dimensions {
        if d > info.dimension {
            return Err(ApiError::invalid(
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
    let prompt = match (&request.prompt_name, default.or(info.default_prompt_name.as_ref())) {
        (Some(name), _) => match info.prompts.get(name) {
            Some(text) => Some(text.clone()),
            None => {
                let known: Vec<&str> = info.prompts.keys().map(String::as_str).collect();
                return Err(ApiError::invalid(
                    format!("Invalid value for 'prompt_name' = {name}. This model's prompts are: {known:?}."),
                    Some("prompt_name"),
                ));
            }
        },
        (None, Some(name)) => info.prompts.get(name).cloned(),
        (None, None) => None,
    };
    let task = match request.task.as_deref().or(default_task) {
        None => None,
        Some(name) => match info.tasks.iter().position(|t| t == name) {
            Some(index) => Some(index),
            None if info.tasks.is_empty() => {
                return Err(ApiError::invalid(
                    format!("Invalid value for 'task' = {name}. This model has no task adapters; leave 'task' out."),
                    Some("task"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
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
        dimensions: request.dimensions,
        renormalize: info.normalize,
        encoding: request.encoding_format,
        windows: defaults.long_input_windows,
    })
}

/// The response body for `vectors` (in input order), as the client addressed `model`.
pub fn respond(
    model: &str,
    vectors: Vec<Vec<f32>>,
    tokens: usize,
    plan: &Plan,
) -> Result<EmbeddingsResponse, ApiError> {
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = match plan.dimensions {
                Some(d) => {
                    truncate_dimensions(&v, d, plan.renormalize).map_err(|e| ApiError::internal(e.to_string()))?
                }
                None => v,
            };
            Ok(EmbeddingObject {
                object: "embedding",
                index,
                embedding: encode(v, plan.encoding),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(EmbeddingsResponse {
        object: "list",
        data,
        model: model.to_string(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
}
