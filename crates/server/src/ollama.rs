//! Ollama's embedding API, so clients written for Ollama (the `ollama` libraries, langchain-ollama,
//! Open WebUI, AnythingLLM, Continue …) use openembed unchanged: `POST /api/embed` and the legacy
//! `POST /api/embeddings`, and what those clients ask around them — `GET /api/tags`,
//! `POST /api/show`, `GET /api/ps`, `GET /api/version`. Requests run through the same pipeline as
//! `/v1/embeddings`; errors have Ollama's shape, `{"error": "…"}` (see [`crate::error`]).
//!
//! Model names as Ollama users write them: a served name or `--alias`, with `NAME` and
//! `NAME:latest` the same model (Ollama's default tag); `/api/tags` lists untagged names with it.

use crate::budget::Reservation;
use crate::error::ApiError;
use crate::routes::{embed_with, read_json};
use crate::state::{AppState, InFlight};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use openembed_pipeline::{Defaults, EmbedRequest, Input, ServedModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use utoipa::ToSchema;

/// `input`: one text or a list of texts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OllamaEmbedInput {
    /// One text.
    One(String),
    /// Texts, in order.
    Many(Vec<String>),
}

/// `POST /api/embed`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OllamaEmbedBody {
    /// A served model name or alias (`NAME:latest` for an untagged name).
    pub model: String,
    /// The text or texts to embed.
    pub input: OllamaEmbedInput,
    /// Cut inputs over the model's context instead of refusing them (default true).
    pub truncate: Option<bool>,
    /// Cut vectors to this many dimensions (normalized again when the model normalizes).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::api::json_count")]
    pub dimensions: Option<usize>,
    /// Accepted and ignored (sampling options of generative models).
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
    /// Accepted and ignored: models stay loaded while the server runs.
    pub keep_alive: Option<KeepAlive>,
}

/// How long Ollama keeps a model loaded after a request (`"5m"`, or seconds).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum KeepAlive {
    /// A duration such as `"5m"`.
    Text(String),
    /// Seconds (negative: forever).
    Seconds(f64),
}

/// The answer of `POST /api/embed`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OllamaEmbedReply {
    /// The model as addressed.
    pub model: String,
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Time spent on the request, in nanoseconds.
    pub total_duration: u64,
    /// Time spent loading the model, in nanoseconds (0: models are loaded at start).
    pub load_duration: u64,
    /// Tokens embedded.
    pub prompt_eval_count: usize,
}

/// `POST /api/embeddings` (Ollama's older route).
#[derive(Debug, Deserialize, ToSchema)]
pub struct OllamaLegacyBody {
    /// A served model name or alias.
    pub model: String,
    /// The text to embed (an empty one gets an empty vector, as Ollama answers).
    pub prompt: String,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
    /// Accepted and ignored.
    pub keep_alive: Option<KeepAlive>,
}

/// The answer of `POST /api/embeddings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OllamaLegacyReply {
    /// The vector.
    pub embedding: Vec<f32>,
}

/// `POST /api/show`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OllamaShowBody {
    /// A served model name or alias (`name` in older clients).
    #[serde(alias = "name")]
    pub model: String,
}

/// What a model is, in Ollama's words.
#[derive(Debug, Serialize, ToSchema)]
pub struct OllamaDetails {
    /// Always empty.
    pub parent_model: String,
    /// `safetensors`.
    pub format: String,
    /// The architecture (`bert`, `xlm-roberta` …).
    pub family: String,
    /// The same, as a list.
    pub families: Vec<String>,
    /// Empty (not known without counting).
    pub parameter_size: String,
    /// The dense layers' precision (`float32`, `bfloat16`, `int8`).
    pub quantization_level: String,
}

/// One model in `/api/tags` and `/api/ps`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OllamaModelEntry {
    /// The name clients use.
    pub name: String,
    /// The same.
    pub model: String,
    /// When it was loaded (RFC 3339).
    pub modified_at: String,
    /// What it is.
    pub details: OllamaDetails,
    /// Longest input in tokens.
    pub context_length: usize,
}

/// `GET /api/tags`, `GET /api/ps`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OllamaModelList {
    /// Every name a model is served under.
    pub models: Vec<OllamaModelEntry>,
}

/// The answer of `POST /api/show`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OllamaShowReply {
    /// Empty: openembed models have no Modelfile.
    pub modelfile: String,
    /// Empty.
    pub parameters: String,
    /// Empty: embedding models have no prompt template.
    pub template: String,
    /// What it is.
    pub details: OllamaDetails,
    /// `general.architecture`, `<family>.embedding_length`, `<family>.context_length`.
    #[schema(value_type = Object)]
    pub model_info: BTreeMap<String, serde_json::Value>,
    /// `["embedding"]`.
    pub capabilities: Vec<String>,
    /// When it was loaded (RFC 3339).
    pub modified_at: String,
}

/// `GET /api/version`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OllamaVersion {
    /// openembed's version.
    pub version: String,
}

/// Ollama's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct OllamaError {
    /// What went wrong.
    pub error: String,
}

/// The errors Ollama's routes may answer, each with Ollama's error body.
#[derive(utoipa::IntoResponses)]
pub enum OllamaErrors {
    /// Invalid request
    #[response(status = 400)]
    Invalid(OllamaError),
    /// Missing or wrong API key
    #[response(status = 401)]
    Unauthorized(OllamaError),
    /// Unknown model
    #[response(status = 404)]
    NotFound(OllamaError),
    /// Body over the limit
    #[response(status = 413)]
    TooLarge(OllamaError),
    /// Body is not JSON
    #[response(status = 415)]
    NotJson(OllamaError),
    /// Queue full; see Retry-After
    #[response(status = 429)]
    Busy(OllamaError),
    /// Internal failure
    #[response(status = 500)]
    Internal(OllamaError),
    /// Shutting down; see Retry-After
    #[response(status = 503)]
    Unavailable(OllamaError),
}

/// The embedding model served under `name` (or `name` without its `:latest` tag), with the
/// name it is addressed by; 404 in Ollama's words, 400 for a reranker.
fn embedding_model(state: &AppState, name: &str) -> Result<Arc<ServedModel>, ApiError> {
    let served = state
        .registry
        .get(name)
        .or_else(|| match name.strip_suffix(":latest") {
            Some(untagged) => state.registry.get(untagged),
            None if !name.contains(':') => state.registry.get(&format!("{name}:latest")),
            None => None,
        })
        .ok_or_else(|| {
            ApiError::with_status(
                StatusCode::NOT_FOUND,
                format!("model \"{name}\" not found, try pulling it first"),
            )
        })?;
    if !served.model.info().embeds() {
        return Err(ApiError::invalid(
            format!(
                "\"{name}\" does not support embeddings (it is a {})",
                served.model.info().kind().name()
            ),
            Some("model"),
        ));
    }
    Ok(Arc::clone(served))
}

/// The server's defaults with Ollama's way to turn truncation on.
fn ollama_defaults(state: &AppState) -> Defaults {
    Defaults {
        truncate_hint: "Send \"truncate\": true (Ollama's default) to cut over-long inputs at the limit instead.",
        ..state.defaults.clone()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Embeds texts on the model named `model` as Ollama's routes do (over-long inputs cut unless
/// `truncate` is false); returns the vectors and the tokens embedded.
async fn embed_texts(
    state: &AppState,
    model: &str,
    texts: Vec<String>,
    truncate: bool,
    dimensions: Option<usize>,
    reservation: &mut Reservation,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let served = embedding_model(state, model)?;
    if texts.len() > crate::api::MAX_INPUTS {
        return Err(ApiError::invalid(
            format!("too many inputs: {} (at most {})", texts.len(), crate::api::MAX_INPUTS),
            Some("input"),
        ));
    }
    let request = EmbedRequest {
        model: model.to_string(),
        truncate: Some(truncate),
        dimensions,
        ..EmbedRequest::default()
    };
    if texts.is_empty() {
        // Nothing to embed, but the request's fields are still checked.
        served.plan(&request, &ollama_defaults(state))?;
        return Ok((Vec::new(), 0));
    }
    let inputs = texts.into_iter().map(Input::Text).collect();
    let done = embed_with(state, &ollama_defaults(state), &served, &request, inputs, reservation).await?;
    Ok((done.vectors, done.tokens))
}

/// Generates embeddings from a model (Ollama's `/api/embed`).
#[utoipa::path(
    post,
    path = "/api/embed",
    request_body(content = OllamaEmbedBody, content_type = "application/json"),
    responses((status = 200, description = "The vectors, in input order", body = OllamaEmbedReply), OllamaErrors),
    security((), ("bearer" = []))
)]
pub async fn embed_route(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OllamaEmbedReply>, ApiError> {
    let started = Instant::now();
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation): (OllamaEmbedBody, _) = read_json(&state, &headers, body).await?;
    let texts = match request.input {
        OllamaEmbedInput::One(text) => vec![text],
        OllamaEmbedInput::Many(texts) => texts,
    };
    let truncate = request.truncate.unwrap_or(true);
    let (embeddings, tokens) = embed_texts(
        &state,
        &request.model,
        texts,
        truncate,
        request.dimensions,
        &mut reservation,
    )
    .await?;
    Ok(Json(OllamaEmbedReply {
        model: request.model,
        embeddings,
        total_duration: nanos(started.elapsed()),
        load_duration: 0,
        prompt_eval_count: tokens,
    }))
}

/// Generates one embedding (Ollama's older `/api/embeddings`).
#[utoipa::path(
    post,
    path = "/api/embeddings",
    request_body(content = OllamaLegacyBody, content_type = "application/json"),
    responses((status = 200, description = "The vector", body = OllamaLegacyReply), OllamaErrors),
    security((), ("bearer" = []))
)]
pub async fn embeddings_route(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OllamaLegacyReply>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation): (OllamaLegacyBody, _) = read_json(&state, &headers, body).await?;
    // An empty prompt gets an empty vector, as Ollama answers (the model is still checked).
    let texts = if request.prompt.is_empty() {
        embedding_model(&state, &request.model)?;
        Vec::new()
    } else {
        vec![request.prompt]
    };
    let (vectors, _) = embed_texts(&state, &request.model, texts, true, None, &mut reservation).await?;
    Ok(Json(OllamaLegacyReply {
        embedding: vectors.into_iter().next().unwrap_or_default(),
    }))
}

fn details(served: &ServedModel) -> OllamaDetails {
    let info = served.model.info();
    OllamaDetails {
        parent_model: String::new(),
        format: "safetensors".into(),
        family: info.architecture.clone(),
        families: vec![info.architecture.clone()],
        parameter_size: String::new(),
        quantization_level: info.dtype.to_string(),
    }
}

fn loaded_at(served: &ServedModel) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(served.created)).to_string()
}

/// Every name an embedding model is served under, as Ollama lists models.
fn model_list(state: &AppState) -> OllamaModelList {
    let models = state
        .registry
        .names()
        .filter(|(_, served)| served.model.info().embeds())
        .map(|(name, served)| {
            let name = if name.contains(':') {
                name.to_string()
            } else {
                format!("{name}:latest")
            };
            OllamaModelEntry {
                model: name.clone(),
                name,
                modified_at: loaded_at(served),
                details: details(served),
                context_length: served.model.info().max_input_tokens,
            }
        })
        .collect();
    OllamaModelList { models }
}

/// Lists the embedding models (Ollama's `/api/tags`).
#[utoipa::path(get, path = "/api/tags", responses((status = 200, body = OllamaModelList), OllamaErrors), security((), ("bearer" = [])))]
pub async fn tags(State(state): State<Arc<AppState>>) -> Json<OllamaModelList> {
    Json(model_list(&state))
}

/// Lists the loaded models (Ollama's `/api/ps`): every served one.
#[utoipa::path(get, path = "/api/ps", responses((status = 200, body = OllamaModelList), OllamaErrors), security((), ("bearer" = [])))]
pub async fn ps(State(state): State<Arc<AppState>>) -> Json<OllamaModelList> {
    Json(model_list(&state))
}

/// Describes a model (Ollama's `/api/show`).
#[utoipa::path(
    post,
    path = "/api/show",
    request_body(content = OllamaShowBody, content_type = "application/json"),
    responses((status = 200, body = OllamaShowReply), OllamaErrors),
    security((), ("bearer" = []))
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OllamaShowReply>, ApiError> {
    let (request, _reservation): (OllamaShowBody, _) = read_json(&state, &headers, body).await?;
    let name = request.model;
    let served = embedding_model(&state, &name)?;
    let info = served.model.info();
    let family = info.architecture.clone();
    let model_info = BTreeMap::from([
        ("general.architecture".to_string(), serde_json::json!(family)),
        (format!("{family}.embedding_length"), serde_json::json!(info.dimension)),
        (
            format!("{family}.context_length"),
            serde_json::json!(info.max_input_tokens),
        ),
    ]);
    Ok(Json(OllamaShowReply {
        modelfile: String::new(),
        parameters: String::new(),
        template: String::new(),
        details: details(&served),
        model_info,
        capabilities: vec!["embedding".into()],
        modified_at: loaded_at(&served),
    }))
}

/// openembed's version (Ollama's `/api/version`).
#[utoipa::path(get, path = "/api/version", responses((status = 200, body = OllamaVersion), OllamaErrors), security((), ("bearer" = [])))]
pub async fn version() -> Json<OllamaVersion> {
    Json(OllamaVersion {
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}
