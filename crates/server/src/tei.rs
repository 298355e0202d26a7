//! Text Embeddings Inference's API, so clients written for TEI (`huggingface_hub`'s
//! `InferenceClient`, langchain's `HuggingFaceEndpointEmbeddings`, llama-index's
//! `TextEmbeddingsInference`, Haystack's TEI embedders) use openembed unchanged: `POST /embed`,
//! `/predict`, `/rerank`, `/similarity`, `/tokenize`, `/decode`, `GET /info`, and `POST /`, the
//! Inference API's task route that `InferenceClient(model=URL)` posts to. Requests run through
//! the same pipeline as `/v1/embeddings`; errors have TEI's shape, `{"error", "error_type"}`,
//! and statuses (422 invalid, 400 empty or an output the model lacks; see [`crate::error::Protocol`]).
//!
//! TEI serves one model per process. openembed may serve several: each route serves the first
//! served model of the kind it needs (an embedding model for `/embed`, a classifier for
//! `/predict` …), unless the body names another in a `model` field.

use crate::api::{JsonInt, MAX_INPUTS};
use crate::budget::Reservation;
use crate::error::{ApiError, EMPTY_INPUT, OUTPUT_NOT_SERVED};
use crate::routes::{blocking, embed_with, read_json, run_rerank};
use crate::state::{AppState, InFlight};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use openembed_engine::{sparse_pairs, LabelFunction, ModelInfo, ModelKind, Side, Truncation};
use openembed_pipeline::rerank::RerankJob;
use openembed_pipeline::{
    ClassifyInput, ClassifyJob, Codes, Defaults, EmbedRequest, EmbeddingType, Input, Registry, ServedModel, TokenIds,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// How a TEI client turns truncation on (ends the over-limit message).
const TRUNCATE_HINT: &str = "Send \"truncate\": true (or start the server with --auto-truncate) to cut it instead.";

/// One input of `/embed`: a text, or the model's token ids.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TeiInput {
    /// A text.
    Text(String),
    /// Token ids of the model's own vocabulary (whatever `--token-ids` says for OpenAI's route).
    Ids(Vec<JsonInt>),
}

/// `inputs` of `/embed`: one input or a list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TeiInputs {
    /// One input.
    One(TeiInput),
    /// Inputs, in order.
    Many(Vec<TeiInput>),
}

/// Which end truncation cuts.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
pub enum TruncationDirection {
    /// Keep the end of the text.
    #[serde(alias = "left")]
    Left,
    /// Keep the beginning of the text.
    #[default]
    #[serde(alias = "right")]
    Right,
}

/// `POST /embed` (also `POST /` for an embedding model).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiEmbedRequest {
    /// The text(s) or token ids to embed.
    pub inputs: TeiInputs,
    /// Cut over-long inputs instead of refusing them (default: the server's --auto-truncate).
    pub truncate: Option<bool>,
    /// Which end `truncate` cuts (default right: the beginning is kept).
    pub truncation_direction: Option<TruncationDirection>,
    /// One of the model's named prompts.
    pub prompt_name: Option<String>,
    /// L2-normalize the vectors (default true). A model whose pipeline ends in a Normalize
    /// module gives normalized vectors either way, as sentence-transformers does.
    pub normalize: Option<bool>,
    /// Cut vectors to this many dimensions.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::api::json_count")]
    pub dimensions: Option<usize>,
    /// Extension: a served model (default: the first embedding model).
    pub model: Option<String>,
    /// Extension: compressed vectors, `int8`, `uint8`, `binary` or `ubinary` (JSON integers;
    /// default `float`).
    pub embedding_type: Option<String>,
}

/// `POST /embed_sparse`: vocabulary weights of a sparse model.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiEmbedSparseRequest {
    /// The text(s) or token ids.
    pub inputs: TeiInputs,
    /// Cut over-long inputs instead of refusing them (default: the server's --auto-truncate).
    pub truncate: Option<bool>,
    /// Which end `truncate` cuts (default right: the beginning is kept).
    pub truncation_direction: Option<TruncationDirection>,
    /// One of the model's named prompts.
    pub prompt_name: Option<String>,
    /// Extension: a served sparse model (default: the first one).
    pub model: Option<String>,
    /// The inputs are queries: an inference-free model looks their weights up in its query
    /// table (no transformer); other models encode queries as documents (default false).
    pub is_query: Option<bool>,
    /// Extension: keep at most this many of each input's largest weights
    /// (sentence-transformers' `max_active_dims`).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::api::json_count")]
    pub max_active_dims: Option<usize>,
    /// Extension: drop weights below this.
    pub min_weight: Option<f32>,
}

/// One non-zero weight of a sparse vector.
#[derive(Debug, Serialize, ToSchema)]
pub struct SparseValue {
    /// Vocabulary entry (token id).
    pub index: usize,
    /// Its weight (> 0).
    pub value: f32,
}

/// `POST /embed_all`: token vectors.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiEmbedAllRequest {
    /// The text(s) or token ids.
    pub inputs: TeiInputs,
    /// Cut over-long inputs instead of refusing them (default: the server's --auto-truncate).
    pub truncate: Option<bool>,
    /// Which end `truncate` cuts (default right: the beginning is kept).
    pub truncation_direction: Option<TruncationDirection>,
    /// One of the model's named prompts.
    pub prompt_name: Option<String>,
    /// Extension: a served model (default: the first embedding model).
    pub model: Option<String>,
    /// The inputs are queries: a ColBERT model gives them its query form (query prefix and
    /// expansion to its query length); documents drop the skiplist's tokens (default false).
    pub is_query: Option<bool>,
}

/// `inputs` of `/predict`: a text, a pair `[text, text]`, or a batch of `[text]` and
/// `[text, text]`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TeiPredictInputs {
    /// One text.
    Text(String),
    /// One text (`[text]`) or one pair (`[text, text]`).
    One(Vec<String>),
    /// Texts and pairs.
    Batch(Vec<Vec<String>>),
}

/// `POST /predict` (also `POST /` for a classifier).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiPredictRequest {
    /// What to classify.
    pub inputs: TeiPredictInputs,
    /// Cut over-long inputs instead of refusing them (default: the server's --auto-truncate).
    pub truncate: Option<bool>,
    /// Which end `truncate` cuts.
    pub truncation_direction: Option<TruncationDirection>,
    /// The logits instead of the scores.
    #[serde(default)]
    pub raw_scores: bool,
    /// Extension: a served classifier (default: the first one).
    pub model: Option<String>,
}

/// One label and its score.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiPrediction {
    /// The score (softmax or sigmoid of the logit, as the model's problem type says).
    pub score: f32,
    /// The label (`id2label`).
    pub label: String,
}

/// `/predict`'s answer: every label, best first, for one input; a list of those for a batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TeiPredictResponse {
    /// One input.
    One(Vec<TeiPrediction>),
    /// A batch.
    Batch(Vec<Vec<TeiPrediction>>),
}

/// `POST /rerank`: TEI's request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiRerankRequest {
    /// Extension: a served reranker (default: the first one).
    pub model: Option<String>,
    /// The query.
    pub query: String,
    /// The candidates.
    pub texts: Vec<String>,
    /// Logits instead of scores.
    pub raw_scores: Option<bool>,
    /// Include each text.
    pub return_text: Option<bool>,
    /// Cut over-long pairs instead of refusing them (default: the server's --auto-truncate).
    pub truncate: Option<bool>,
    /// Extension: the instruction of an instruction-following reranker.
    pub instruction: Option<String>,
}

/// One TEI rerank result.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiRerankResult {
    /// Position of the text in the request.
    pub index: usize,
    /// Score (or logit with `raw_scores`).
    pub score: f32,
    /// The text, with `return_text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `inputs` of `/similarity`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SimilarityInputs {
    /// The text the others are compared with.
    pub source_sentence: String,
    /// The texts compared with it.
    pub sentences: Vec<String>,
}

/// `parameters` of `/similarity`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SimilarityParameters {
    /// Cut over-long inputs instead of refusing them (default: the server's --auto-truncate).
    pub truncate: Option<bool>,
    /// Which end `truncate` cuts.
    pub truncation_direction: Option<TruncationDirection>,
    /// One of the model's named prompts.
    pub prompt_name: Option<String>,
}

/// `POST /similarity` (also `POST /` with `source_sentence`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiSimilarityRequest {
    /// The texts.
    pub inputs: SimilarityInputs,
    /// Options.
    pub parameters: Option<SimilarityParameters>,
    /// Extension: a served embedding model (default: the first one).
    pub model: Option<String>,
}

/// `inputs` of `/tokenize`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TokenizeInputs {
    /// One text.
    One(String),
    /// Texts.
    Many(Vec<String>),
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiTokenizeRequest {
    /// The text(s).
    pub inputs: TokenizeInputs,
    /// Add the model's special tokens (default true).
    pub add_special_tokens: Option<bool>,
    /// One of the model's named prompts, put in front of the text.
    pub prompt_name: Option<String>,
    /// Extension: a served model (default: the first one).
    pub model: Option<String>,
}

/// One token of `/tokenize`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiToken {
    /// Token id.
    pub id: u32,
    /// The text it covers (a special token's own text).
    pub text: String,
    /// Added by the tokenizer's template.
    pub special: bool,
    /// First byte in the text (null for special tokens).
    pub start: Option<usize>,
    /// Byte after the last (null for special tokens).
    pub stop: Option<usize>,
}

/// `ids` of `/decode`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DecodeIds {
    /// One sequence.
    One(Vec<JsonInt>),
    /// Sequences.
    Many(Vec<Vec<JsonInt>>),
}

/// `POST /decode`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TeiDecodeRequest {
    /// Token ids.
    pub ids: DecodeIds,
    /// Leave special tokens out (default true).
    pub skip_special_tokens: Option<bool>,
    /// Extension: a served model (default: the first one).
    pub model: Option<String>,
}

/// What the model is, in TEI's `/info` (`{"embedding": {"pooling"}}`, `{"classifier":
/// {"id2label", "label2id"}}` or `{"reranker": …}`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TeiModelType {
    /// An embedding model.
    Embedding {
        /// Pooling, e.g. `mean` or `cls`.
        pooling: String,
    },
    /// A classifier.
    Classifier {
        /// Labels by id.
        id2label: BTreeMap<String, String>,
        /// Ids by label.
        label2id: BTreeMap<String, usize>,
    },
    /// A reranker.
    Reranker {
        /// Labels by id.
        id2label: BTreeMap<String, String>,
        /// Ids by label.
        label2id: BTreeMap<String, usize>,
    },
}

/// `GET /info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiInfo {
    /// The model's name as served.
    pub model_id: String,
    /// Not known (null).
    pub model_sha: Option<String>,
    /// Precision of the dense layers.
    pub model_dtype: String,
    /// The same as `model_id`.
    pub served_model_name: String,
    /// What it is.
    pub model_type: TeiModelType,
    /// Requests served at once (0: bounded by memory, not by count).
    pub max_concurrent_requests: usize,
    /// Most tokens per input.
    pub max_input_length: usize,
    /// Most tokens per request.
    pub max_batch_tokens: usize,
    /// Not bounded by count (null).
    pub max_batch_requests: Option<usize>,
    /// Most inputs per request.
    pub max_client_batch_size: usize,
    /// Whether over-long inputs are cut by default.
    pub auto_truncate: bool,
    /// Threads that tokenize (the compute threads).
    pub tokenization_workers: usize,
    /// openembed's version.
    pub version: String,
    /// Not known (null).
    pub sha: Option<String>,
    /// Not known (null).
    pub docker_label: Option<String>,
}

/// TEI's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct TeiError {
    /// What went wrong.
    pub error: String,
    /// `Validation`, `Empty`, `Overloaded`, `Unhealthy` or `Backend`.
    pub error_type: String,
}

/// The errors TEI's routes may answer, each with TEI's error body.
#[derive(utoipa::IntoResponses)]
pub enum TeiErrors {
    /// Empty input, or a model without the asked output
    #[response(status = 400)]
    Empty(TeiError),
    /// Missing or wrong API key
    #[response(status = 401)]
    Unauthorized(TeiError),
    /// Unknown model
    #[response(status = 404)]
    NotFound(TeiError),
    /// Body over the limit
    #[response(status = 413)]
    TooLarge(TeiError),
    /// Body is not JSON
    #[response(status = 415)]
    NotJson(TeiError),
    /// Invalid request
    #[response(status = 422)]
    Invalid(TeiError),
    /// Queue full; see Retry-After
    #[response(status = 429)]
    Busy(TeiError),
    /// Internal failure
    #[response(status = 500)]
    Internal(TeiError),
    /// Shutting down; see Retry-After
    #[response(status = 503)]
    Unavailable(TeiError),
}

/// 400 `Empty`.
fn empty(field: &str) -> ApiError {
    ApiError::invalid(format!("`{field}` cannot be empty"), Some(field)).code(EMPTY_INPUT)
}

/// The served model a request names, else the first served model for which `fits` holds.
fn model_for(
    state: &AppState,
    named: Option<&str>,
    fits: fn(&ModelInfo) -> bool,
    what: &str,
) -> Result<Arc<ServedModel>, ApiError> {
    model_in(&state.registry, named, fits, what)
}

/// [`model_for`] in a registry (the server's, or `openembed batch`'s).
fn model_in(
    registry: &Registry,
    named: Option<&str>,
    fits: fn(&ModelInfo) -> bool,
    what: &str,
) -> Result<Arc<ServedModel>, ApiError> {
    let served = match named {
        Some(name) => Arc::clone(registry.find(name)?),
        None => {
            return registry
                .models()
                .iter()
                .find(|m| fits(m.model.info()))
                .cloned()
                .ok_or_else(|| {
                    let served: Vec<String> = registry
                        .models()
                        .iter()
                        .map(|m| format!("'{}' ({})", m.name, m.model.info().outputs().join(", ")))
                        .collect();
                    ApiError::invalid(
                        format!(
                            "No model served here is {what}; the served models' outputs: {}.",
                            served.join("; ")
                        ),
                        Some("model"),
                    )
                    .code(OUTPUT_NOT_SERVED)
                })
        }
    };
    if !fits(served.model.info()) {
        return Err(ApiError::invalid(
            format!(
                "The model '{}' is not {what} (its kind: {}; its outputs: {}).",
                served.name,
                served.model.info().kind().name(),
                served.model.info().outputs().join(", ")
            ),
            Some("model"),
        )
        .code(OUTPUT_NOT_SERVED));
    }
    Ok(served)
}

fn embedder(info: &ModelInfo) -> bool {
    info.embeds()
}

fn classifier(info: &ModelInfo) -> bool {
    info.classifier.is_some()
}

fn reranker(info: &ModelInfo) -> bool {
    info.reranks()
}

fn sparse_model(info: &ModelInfo) -> bool {
    info.has_sparse()
}

/// Models `/embed_all` serves: token vectors of an embedding model, a late-interaction model's
/// multi-vector output.
fn token_vectors(info: &ModelInfo) -> bool {
    info.embeds() || info.multi_vector.is_some()
}

fn any_model(_: &ModelInfo) -> bool {
    true
}

/// The end TEI's `truncation_direction` cuts.
fn side(direction: Option<TruncationDirection>) -> Truncation {
    match direction.unwrap_or_default() {
        TruncationDirection::Left => Truncation::Start,
        TruncationDirection::Right => Truncation::End,
    }
}

/// The server's defaults with TEI's truncation side and hint.
fn tei_defaults(state: &AppState, direction: Option<TruncationDirection>) -> Defaults {
    with_tei_side(&state.defaults, direction)
}

/// `defaults` with TEI's truncation side and hint.
fn with_tei_side(defaults: &Defaults, direction: Option<TruncationDirection>) -> Defaults {
    Defaults {
        truncation_side: side(direction),
        truncate_hint: TRUNCATE_HINT,
        ..defaults.clone()
    }
}

/// Truncation of a request that says `truncate` (or not).
fn truncation(state: &AppState, truncate: Option<bool>, direction: Option<TruncationDirection>) -> Truncation {
    if truncate.unwrap_or(state.defaults.auto_truncate) {
        side(direction)
    } else {
        Truncation::None
    }
}

/// The pipeline inputs of `/embed` and `/embed_all`: not empty, at most [`MAX_INPUTS`].
fn pipeline_inputs(inputs: TeiInputs) -> Result<Vec<Input>, ApiError> {
    let inputs: Vec<Input> = match inputs {
        // `[]` reads as one list of ids: an empty request.
        TeiInputs::One(TeiInput::Ids(ids)) if ids.is_empty() => return Err(empty("inputs")),
        TeiInputs::One(one) => vec![one],
        TeiInputs::Many(many) if many.is_empty() => return Err(empty("inputs")),
        TeiInputs::Many(many) => many,
    }
    .into_iter()
    .map(|i| match i {
        TeiInput::Text(t) => Ok(Input::Text(t)),
        TeiInput::Ids(ids) if ids.is_empty() => Err(empty("inputs")),
        TeiInput::Ids(ids) => Ok(Input::Tokens(ids.into_iter().map(|id| id.0).collect())),
    })
    .collect::<Result<_, _>>()?;
    if inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            format!("batch size {} > maximum allowed batch size {MAX_INPUTS}", inputs.len()),
            Some("inputs"),
        ));
    }
    Ok(inputs)
}

/// Token vectors of texts (TEI's `/embed_all`): a late-interaction model's multi-vector output
/// (ColBERT, bge-m3: projected, normalized, a ColBERT document's skiplist tokens dropped, a
/// ColBERT query in its query form with `is_query`), otherwise each input's last hidden states,
/// one row per token, special tokens included. They run on the model's scheduler, in batches
/// shared with other requests.
#[utoipa::path(
    post,
    path = "/embed_all",
    request_body(content = TeiEmbedAllRequest, content_type = "application/json"),
    responses((status = 200, description = "Per input, one vector per token", body = Vec<Vec<Vec<f32>>>), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn embed_all(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<Vec<Vec<f32>>>>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation): (TeiEmbedAllRequest, _) = read_json(&state, &headers, body).await?;
    Ok(Json(run_embed_all(&state, request, &mut reservation).await?))
}

/// A TEI `/embed_sparse` or `/embed_all` request, planned for the pipeline: its model, the
/// request and inputs it makes, and the defaults with TEI's truncation side. The routes and
/// `openembed batch` run it alike.
pub struct TeiEmbedding {
    pub served: Arc<ServedModel>,
    pub request: EmbedRequest,
    pub inputs: Vec<Input>,
    pub defaults: Defaults,
    pub output: TeiOutput,
    /// The request says its inputs are queries.
    pub is_query: bool,
}

/// The fields TEI's embedding requests share.
struct TeiCommon {
    model: Option<String>,
    inputs: TeiInputs,
    prompt_name: Option<String>,
    truncate: Option<bool>,
    direction: Option<TruncationDirection>,
    is_query: bool,
}

/// Which TEI answer a [`TeiEmbedding`] gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeiOutput {
    /// `/embed_sparse`: per input its non-zero `{index, value}` pairs.
    Sparse,
    /// `/embed_all`: per input one vector per kept token.
    Tokens,
}

impl TeiEmbedding {
    /// `/embed_all`'s request: the model's multi-vector output for the input's side, else its
    /// last hidden states.
    pub fn all(registry: &Registry, defaults: &Defaults, r: TeiEmbedAllRequest) -> Result<Self, ApiError> {
        let is_query = r.is_query.unwrap_or(false);
        let common = TeiCommon {
            model: r.model,
            inputs: r.inputs,
            prompt_name: r.prompt_name,
            truncate: r.truncate,
            direction: r.truncation_direction,
            is_query,
        };
        let (fits, what) = (token_vectors, "an embedding or late-interaction model");
        Self::planned(registry, defaults, common, TeiOutput::Tokens, fits, what, |request| {
            EmbedRequest {
                token_vectors: true,
                side: if is_query { Side::Query } else { Side::Document },
                ..request
            }
        })
    }

    /// `/embed_sparse`'s request (queries of an inference-free model are looked up, not
    /// embedded: [`Self::looks_up`]).
    pub fn sparse(registry: &Registry, defaults: &Defaults, r: TeiEmbedSparseRequest) -> Result<Self, ApiError> {
        let common = TeiCommon {
            model: r.model,
            inputs: r.inputs,
            prompt_name: r.prompt_name,
            truncate: r.truncate,
            direction: r.truncation_direction,
            is_query: r.is_query == Some(true),
        };
        let (fits, what) = (sparse_model, "a sparse model");
        Self::planned(registry, defaults, common, TeiOutput::Sparse, fits, what, |request| {
            EmbedRequest {
                sparse: true,
                max_active_dims: r.max_active_dims,
                min_weight: r.min_weight,
                ..request
            }
        })
    }

    /// The model a request names (or the first that `fits`), its inputs, and the pipeline
    /// request that `finish` completes from the fields both routes share.
    fn planned(
        registry: &Registry,
        defaults: &Defaults,
        TeiCommon {
            model,
            inputs,
            prompt_name,
            truncate,
            direction,
            is_query,
        }: TeiCommon,
        output: TeiOutput,
        fits: fn(&ModelInfo) -> bool,
        what: &str,
        finish: impl FnOnce(EmbedRequest) -> EmbedRequest,
    ) -> Result<Self, ApiError> {
        let served = model_in(registry, model.as_deref(), fits, what)?;
        let inputs = pipeline_inputs(inputs)?;
        let request = finish(EmbedRequest {
            model: served.name.clone(),
            prompt_name,
            truncate,
            token_ids: Some(TokenIds::Native),
            ..EmbedRequest::default()
        });
        Ok(Self {
            served,
            request,
            inputs,
            defaults: with_tei_side(defaults, direction),
            output,
            is_query,
        })
    }

    /// True for queries of an inference-free model: a table lookup ([`Self::sparse_queries`]).
    pub fn looks_up(&self) -> bool {
        self.output == TeiOutput::Sparse && self.is_query && self.served.model.info().sparse_query
    }

    /// The answer of a looked-up request (blocking: tokenization).
    pub fn sparse_queries(&self) -> Result<Vec<Vec<SparseValue>>, ApiError> {
        let plan = self.served.plan(&self.request, &self.defaults)?;
        let texts = self
            .inputs
            .iter()
            .map(|i| match i {
                Input::Text(t) => Ok(t.as_str()),
                Input::Tokens(_) => Err(ApiError::invalid(
                    "queries of an inference-free model are texts (its query tokenizer makes their ids)",
                    Some("inputs"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let weights = self
            .served
            .model
            .sparse_queries(&texts)
            .map_err(|e| ApiError::invalid(format!("The input could not be tokenized: {e}"), Some("inputs")))?
            .ok_or_else(|| ApiError::internal("the model's query side is gone"))?;
        Ok(weights
            .into_iter()
            .map(|row| nonzero(&plan.sparse_limits(row)))
            .collect())
    }

    /// The JSON answer from the pipeline's output rows.
    pub fn respond(&self, vectors: Vec<Vec<f32>>) -> Result<Value, ApiError> {
        let value = match self.output {
            TeiOutput::Sparse => serde_json::to_value(sparse_rows(&vectors)),
            TeiOutput::Tokens => serde_json::to_value(token_rows(&self.served, vectors)),
        };
        value.map_err(|e| ApiError::internal(e.to_string()))
    }
}

/// Per input, its non-zero `{index, value}` pairs.
fn sparse_rows(vectors: &[Vec<f32>]) -> Vec<Vec<SparseValue>> {
    vectors.iter().map(|row| nonzero(row)).collect()
}

/// Per input, its rows of token vectors (the model's multi-vector width, else its hidden size).
fn token_rows(served: &ServedModel, vectors: Vec<Vec<f32>>) -> Vec<Vec<Vec<f32>>> {
    let info = served.model.info();
    let width = info.multi_vector.unwrap_or(info.hidden_size).max(1);
    vectors
        .into_iter()
        .map(|rows| rows.chunks(width).map(<[f32]>::to_vec).collect())
        .collect()
}

/// Token vectors of the inputs, per input one row per kept token.
async fn run_embed_all(
    state: &AppState,
    request: TeiEmbedAllRequest,
    reservation: &mut Reservation,
) -> Result<Vec<Vec<Vec<f32>>>, ApiError> {
    let job = TeiEmbedding::all(&state.registry, &state.defaults, request)?;
    let done = embed_with(state, &job.defaults, &job.served, &job.request, job.inputs, reservation).await?;
    Ok(token_rows(&job.served, done.vectors))
}

/// Non-zero vocabulary weights of a sparse model, per input.
async fn run_sparse(
    state: &AppState,
    request: TeiEmbedSparseRequest,
    reservation: &mut Reservation,
) -> Result<Vec<Vec<SparseValue>>, ApiError> {
    let job = TeiEmbedding::sparse(&state.registry, &state.defaults, request)?;
    if job.looks_up() {
        let texts = job.inputs.len();
        reservation.resize(reservation.bytes() + texts * job.served.model.info().dimension * 4)?;
        return blocking("Query lookup", move || job.sparse_queries()).await;
    }
    let done = embed_with(state, &job.defaults, &job.served, &job.request, job.inputs, reservation).await?;
    Ok(sparse_rows(&done.vectors))
}

/// The `{index, value}` entries of a sparse output row.
fn nonzero(row: &[f32]) -> Vec<SparseValue> {
    sparse_pairs(row)
        .map(|(index, value)| SparseValue {
            index: index as usize,
            value,
        })
        .collect()
}

/// Learned sparse vectors of texts: each input's non-zero vocabulary weights, by index (TEI's
/// `/embed_sparse`; SPLADE models).
#[utoipa::path(
    post,
    path = "/embed_sparse",
    request_body(content = TeiEmbedSparseRequest, content_type = "application/json"),
    responses((status = 200, description = "Per input, its non-zero weights by index", body = Vec<Vec<SparseValue>>), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn embed_sparse(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<Vec<SparseValue>>>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation) = read_json(&state, &headers, body).await?;
    Ok(Json(run_sparse(&state, request, &mut reservation).await?))
}

/// Embeds `inputs` for a TEI route.
async fn run_embed(
    state: &AppState,
    request: TeiEmbedRequest,
    reservation: &mut Reservation,
) -> Result<Codes, ApiError> {
    let served = model_for(state, request.model.as_deref(), embedder, "an embedding model")?;
    let embedding_type = match request.embedding_type.as_deref() {
        None => EmbeddingType::Float,
        Some(name) => EmbeddingType::from_name(name).ok_or_else(|| EmbeddingType::unknown(name, "embedding_type"))?,
    };
    let inputs = pipeline_inputs(request.inputs)?;
    let embed_request = EmbedRequest {
        model: served.name.clone(),
        prompt_name: request.prompt_name,
        truncate: request.truncate,
        dimensions: request.dimensions,
        normalize: Some(request.normalize.unwrap_or(true)),
        token_ids: Some(TokenIds::Native),
        ..EmbedRequest::default()
    };
    let defaults = tei_defaults(state, request.truncation_direction);
    let done = embed_with(state, &defaults, &served, &embed_request, inputs, reservation).await?;
    if embedding_type == EmbeddingType::Float {
        return Ok(Codes::Float(done.vectors));
    }
    blocking("Encoding", move || {
        Ok(served.codes(embedding_type, &embed_request, done.vectors)?)
    })
    .await
}

/// Embeds texts (TEI's `/embed`).
#[utoipa::path(
    post,
    path = "/embed",
    request_body(content = TeiEmbedRequest, content_type = "application/json"),
    responses((status = 200, description = "One vector per input, in order", body = Vec<Vec<f32>>), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn embed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Codes>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation) = read_json(&state, &headers, body).await?;
    Ok(Json(run_embed(&state, request, &mut reservation).await?))
}

/// Labels with scores of a classification request, per input, best first.
async fn run_predict(
    state: &AppState,
    served: &Arc<ServedModel>,
    inputs: Vec<ClassifyInput>,
    truncation: Truncation,
    function: Option<LabelFunction>,
    reservation: &mut Reservation,
) -> Result<Vec<Vec<(String, f32)>>, ApiError> {
    let job = ClassifyJob::new(inputs, truncation, TRUNCATE_HINT)?;
    served.classifier()?;
    served.scheduler.check_room()?;
    let model = Arc::clone(&served.model);
    let max_tokens = state.limits.max_request_tokens;
    let (ids, tokens) = blocking("Tokenization", move || Ok(job.tokenize(&model, max_tokens)?)).await?;
    let labels = served.model.info().dimension;
    reservation.resize(tokens * 4 + ids.len() * labels * 64)?;
    let output = served.scheduler.submit(ids, None)?.wait().await?;
    Ok(served.labels(&output.vectors, function)?)
}

/// The inputs of `/predict` and whether it was one input (not a batch).
fn predict_inputs(inputs: TeiPredictInputs) -> Result<(Vec<ClassifyInput>, bool), ApiError> {
    let sequence = |mut texts: Vec<String>| match texts.len() {
        1 => Ok(ClassifyInput::Text(texts.remove(0))),
        2 => {
            let second = texts.remove(1);
            Ok(ClassifyInput::Pair(texts.remove(0), second))
        }
        n => Err(ApiError::invalid(
            format!("an input is a string or a pair of strings [string, string]; got {n} strings"),
            Some("inputs"),
        )),
    };
    match inputs {
        TeiPredictInputs::Text(text) => Ok((vec![ClassifyInput::Text(text)], true)),
        TeiPredictInputs::One(texts) if texts.is_empty() => Err(empty("inputs")),
        TeiPredictInputs::One(texts) => Ok((vec![sequence(texts)?], true)),
        TeiPredictInputs::Batch(batch) => Ok((batch.into_iter().map(sequence).collect::<Result<_, _>>()?, false)),
    }
}

fn predictions(labels: Vec<(String, f32)>) -> Vec<TeiPrediction> {
    labels
        .into_iter()
        .map(|(label, score)| TeiPrediction { score, label })
        .collect()
}

/// Classifies texts or text pairs: every label with its score, best first (TEI's `/predict`).
#[utoipa::path(
    post,
    path = "/predict",
    request_body(content = TeiPredictRequest, content_type = "application/json"),
    responses((status = 200, description = "Labels with scores, best first", body = TeiPredictResponse), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn predict(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TeiPredictResponse>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation): (TeiPredictRequest, _) = read_json(&state, &headers, body).await?;
    let served = model_for(&state, request.model.as_deref(), classifier, "a classifier")?;
    let (inputs, one) = predict_inputs(request.inputs)?;
    let function = request.raw_scores.then_some(LabelFunction::None);
    let truncation = truncation(&state, request.truncate, request.truncation_direction);
    let labels = run_predict(&state, &served, inputs, truncation, function, &mut reservation).await?;
    Ok(Json(if one {
        TeiPredictResponse::One(predictions(labels.into_iter().next().unwrap_or_default()))
    } else {
        TeiPredictResponse::Batch(labels.into_iter().map(predictions).collect())
    }))
}

/// Ranks texts by relevance to a query (TEI's `/rerank`).
#[utoipa::path(
    post,
    path = "/rerank",
    request_body(content = TeiRerankRequest, content_type = "application/json"),
    responses((status = 200, description = "Results, best first", body = [TeiRerankResult]), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<TeiRerankResult>>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation): (TeiRerankRequest, _) = read_json(&state, &headers, body).await?;
    Ok(Json(run_tei_rerank(&state, request, &mut reservation).await?))
}

async fn run_tei_rerank(
    state: &AppState,
    request: TeiRerankRequest,
    reservation: &mut Reservation,
) -> Result<Vec<TeiRerankResult>, ApiError> {
    let served = model_for(state, request.model.as_deref(), reranker, "a reranker")?;
    if request.texts.is_empty() {
        return Err(empty("texts"));
    }
    let job = RerankJob::new(
        request.query,
        request.texts,
        request.instruction,
        truncation(state, request.truncate, None),
        None,
    )?;
    let raw = request.raw_scores.unwrap_or(false);
    let (ranked, _, mut job) = run_rerank(state, &served, job, raw, reservation).await?;
    let with_text = request.return_text.unwrap_or(false);
    Ok(ranked
        .into_iter()
        .map(|(index, score)| TeiRerankResult {
            index,
            score,
            text: with_text.then(|| std::mem::take(&mut job.documents[index])),
        })
        .collect())
}

/// Cosine similarity of `source_sentence` with each of `sentences`.
async fn run_similarity(
    state: &AppState,
    request: TeiSimilarityRequest,
    reservation: &mut Reservation,
) -> Result<Vec<f32>, ApiError> {
    if request.inputs.sentences.is_empty() {
        return Err(empty("sentences"));
    }
    let parameters = request.parameters.unwrap_or_default();
    let mut texts = vec![TeiInput::Text(request.inputs.source_sentence)];
    texts.extend(request.inputs.sentences.into_iter().map(TeiInput::Text));
    let vectors = run_embed(
        state,
        TeiEmbedRequest {
            inputs: TeiInputs::Many(texts),
            truncate: parameters.truncate,
            truncation_direction: parameters.truncation_direction,
            prompt_name: parameters.prompt_name,
            normalize: Some(true),
            dimensions: None,
            model: request.model,
            embedding_type: None,
        },
        reservation,
    )
    .await?;
    let Codes::Float(vectors) = vectors else {
        return Err(ApiError::internal("similarity needs float vectors"));
    };
    let (source, others) = vectors
        .split_first()
        .ok_or_else(|| ApiError::internal("no vectors came back"))?;
    Ok(others
        .iter()
        .map(|v| source.iter().zip(v).map(|(a, b)| a * b).sum())
        .collect())
}

/// Cosine similarity of a text with others (TEI's `/similarity`).
#[utoipa::path(
    post,
    path = "/similarity",
    request_body(content = TeiSimilarityRequest, content_type = "application/json"),
    responses((status = 200, description = "One similarity per sentence, in order", body = Vec<f32>), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn similarity(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<f32>>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation) = read_json(&state, &headers, body).await?;
    Ok(Json(run_similarity(&state, request, &mut reservation).await?))
}

/// Tokens of texts as the model sees them (TEI's `/tokenize`).
#[utoipa::path(
    post,
    path = "/tokenize",
    request_body(content = TeiTokenizeRequest, content_type = "application/json"),
    responses((status = 200, description = "Each text's tokens", body = Vec<Vec<TeiToken>>), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<Vec<TeiToken>>>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, mut reservation): (TeiTokenizeRequest, _) = read_json(&state, &headers, body).await?;
    let served = model_for(&state, request.model.as_deref(), any_model, "a model")?;
    let texts = match request.inputs {
        TokenizeInputs::One(text) => vec![text],
        TokenizeInputs::Many(texts) if texts.is_empty() => return Err(empty("inputs")),
        TokenizeInputs::Many(texts) => texts,
    };
    if texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            format!("batch size {} > maximum allowed batch size {MAX_INPUTS}", texts.len()),
            Some("inputs"),
        ));
    }
    let info = served.model.info();
    let prompt = match &request.prompt_name {
        None => None,
        Some(name) => Some(info.prompts.get(name).cloned().ok_or_else(|| {
            ApiError::invalid(
                format!(
                    "prompt_name '{name}' is not one of the model's prompts ({}).",
                    info.prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                Some("prompt_name"),
            )
        })?),
    };
    // A token's entry takes about 64 bytes of memory while the answer is built.
    reservation.resize(reservation.bytes() + texts.iter().map(String::len).sum::<usize>() * 64)?;
    let add_special = request.add_special_tokens.unwrap_or(true);
    let model = Arc::clone(&served.model);
    let tokens = blocking("Tokenization", move || {
        texts
            .iter()
            .map(|text| {
                let (_, pieces) = model
                    .tokenizer()
                    .pieces(text, prompt.as_deref(), add_special)
                    .map_err(|e| ApiError::invalid(format!("The input could not be tokenized: {e}"), Some("inputs")))?;
                Ok(pieces
                    .into_iter()
                    .map(|p| TeiToken {
                        id: p.id,
                        text: p.text,
                        special: p.special,
                        start: p.span.map(|s| s.0),
                        stop: p.span.map(|s| s.1),
                    })
                    .collect())
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    Ok(Json(tokens))
}

/// Texts of token ids (TEI's `/decode`).
#[utoipa::path(
    post,
    path = "/decode",
    request_body(content = TeiDecodeRequest, content_type = "application/json"),
    responses((status = 200, description = "One text per id sequence", body = Vec<String>), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn decode(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Vec<String>>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (request, _reservation): (TeiDecodeRequest, _) = read_json(&state, &headers, body).await?;
    let served = model_for(&state, request.model.as_deref(), any_model, "a model")?;
    let sequences = match request.ids {
        DecodeIds::One(ids) if ids.is_empty() => return Err(empty("ids")),
        DecodeIds::One(ids) => vec![ids],
        DecodeIds::Many(many) if many.is_empty() => return Err(empty("ids")),
        DecodeIds::Many(many) => many,
    };
    if sequences.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            format!(
                "batch size {} > maximum allowed batch size {MAX_INPUTS}",
                sequences.len()
            ),
            Some("ids"),
        ));
    }
    let vocab = served.model.info().vocab_size;
    if sequences.iter().any(Vec::is_empty) {
        return Err(empty("ids"));
    }
    let sequences = sequences
        .into_iter()
        .map(|ids| {
            ids.into_iter()
                .map(|JsonInt(id)| {
                    u32::try_from(id)
                        .ok()
                        .filter(|&id| (id as usize) < vocab)
                        .ok_or_else(|| {
                            ApiError::invalid(
                                format!("token id {id} is out of the model's vocabulary (ids 0..{vocab})"),
                                Some("ids"),
                            )
                        })
                })
                .collect::<Result<Vec<u32>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let skip = request.skip_special_tokens.unwrap_or(true);
    let model = Arc::clone(&served.model);
    let texts = blocking("Decoding", move || {
        sequences
            .iter()
            .map(|ids| {
                model
                    .tokenizer()
                    .decode_with(ids, skip)
                    .map_err(|e| ApiError::invalid(format!("The ids could not be decoded: {e}"), Some("ids")))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(texts))
}

/// `id2label` and `label2id` of a classifier's labels.
fn label_maps(labels: &[String]) -> (BTreeMap<String, String>, BTreeMap<String, usize>) {
    (
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect(),
        labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect(),
    )
}

/// The first served model, in TEI's words (TEI's `/info`).
#[utoipa::path(get, path = "/info", responses((status = 200, body = TeiInfo), TeiErrors), security((), ("bearer" = [])))]
pub async fn info(State(state): State<Arc<AppState>>) -> Result<Json<TeiInfo>, ApiError> {
    let served = model_for(&state, None, any_model, "a model")?;
    let info = served.model.info();
    let labels = info.classifier.as_ref().map(|c| label_maps(&c.labels));
    let model_type = match (info.kind(), labels) {
        (ModelKind::Classifier, Some((id2label, label2id))) => TeiModelType::Classifier { id2label, label2id },
        (ModelKind::Reranker, labels) => {
            let (id2label, label2id) = labels.unwrap_or_else(|| label_maps(&["LABEL_0".to_string()]));
            TeiModelType::Reranker { id2label, label2id }
        }
        (ModelKind::Sparse, _) => TeiModelType::Embedding {
            pooling: "splade".to_string(),
        },
        _ => TeiModelType::Embedding {
            pooling: info
                .pooling
                .iter()
                .map(|p| p.name().to_string())
                .collect::<Vec<_>>()
                .join("+"),
        },
    };
    Ok(Json(TeiInfo {
        model_id: served.name.clone(),
        model_sha: None,
        model_dtype: info.dtype.to_string(),
        served_model_name: served.name.clone(),
        model_type,
        max_concurrent_requests: 0,
        max_input_length: info.max_input_tokens,
        max_batch_tokens: state.limits.max_request_tokens,
        max_batch_requests: None,
        max_client_batch_size: MAX_INPUTS,
        auto_truncate: state.defaults.auto_truncate,
        tokenization_workers: served.model.threads(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        sha: None,
        docker_label: None,
    }))
}

/// `parameters` of the Inference API's text-classification task.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ClassificationParameters {
    /// Keep the best `top_k` labels (default: all).
    #[serde(default, deserialize_with = "crate::api::json_count")]
    pub top_k: Option<usize>,
    /// `softmax`, `sigmoid` or `none` (default: the model's).
    pub function_to_apply: Option<String>,
}

/// `POST /` with a classifier: the Inference API's text-classification task.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClassificationRequest {
    /// What to classify (as `/predict` takes it).
    pub inputs: TeiPredictInputs,
    /// Options.
    pub parameters: Option<ClassificationParameters>,
    /// Cut over-long inputs instead of refusing them (default: the server's --auto-truncate).
    pub truncate: Option<bool>,
    /// Extension: a served classifier.
    pub model: Option<String>,
}

/// The Inference API's task route, where `InferenceClient(model=URL)` posts: a body with
/// `inputs.source_sentence` is a sentence-similarity request; otherwise the model's kind picks
/// the task, as TEI's `POST /` does — feature extraction (`/embed`'s body and answer), text
/// classification (`inputs` as `/predict` takes them, `parameters.top_k` and
/// `parameters.function_to_apply`; answered as the Inference API does, a list of labels per
/// input, `[[{"label", "score"}, …]]`), or reranking (`/rerank`'s body and answer). The model
/// is the one the body names in `model`, else the first served.
#[utoipa::path(
    post,
    path = "/",
    request_body(content = TeiEmbedRequest, content_type = "application/json",
        description = "For an embedding model, `/embed`'s body (or `/similarity`'s); for a classifier, `inputs` and \
                       `parameters` (`top_k`, `function_to_apply`); for a reranker, `/rerank`'s body"),
    responses((status = 200, description = "The task's answer", body = Vec<Vec<f32>>), TeiErrors),
    security((), ("bearer" = []))
)]
pub async fn inference(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (value, mut reservation): (Value, _) = read_json(&state, &headers, body).await?;
    let reservation = &mut reservation;
    if value["inputs"].get("source_sentence").is_some() {
        let request = from_value(value)?;
        return Ok(Json(run_similarity(&state, request, reservation).await?).into_response());
    }
    let named = value.get("model").and_then(Value::as_str);
    let served = model_for(&state, named, any_model, "a model")?;
    match served.model.info().kind() {
        ModelKind::Embedding => {
            let request = from_value(value)?;
            Ok(Json(run_embed(&state, request, reservation).await?).into_response())
        }
        ModelKind::Reranker => {
            let request = from_value(value)?;
            Ok(Json(run_tei_rerank(&state, request, reservation).await?).into_response())
        }
        ModelKind::Sparse => {
            let request = from_value(value)?;
            Ok(Json(run_sparse(&state, request, reservation).await?).into_response())
        }
        ModelKind::MultiVector => {
            let request = from_value(value)?;
            Ok(Json(run_embed_all(&state, request, reservation).await?).into_response())
        }
        ModelKind::Classifier => {
            let request: ClassificationRequest = from_value(value)?;
            let parameters = request.parameters.unwrap_or_default();
            let function = match parameters.function_to_apply.as_deref() {
                None => None,
                Some(name) => Some(LabelFunction::from_name(&name.to_ascii_lowercase()).ok_or_else(|| {
                    ApiError::invalid(
                        format!("function_to_apply '{name}' is not one of softmax, sigmoid, none."),
                        Some("parameters.function_to_apply"),
                    )
                })?),
            };
            if parameters.top_k == Some(0) {
                return Err(ApiError::invalid("top_k must be at least 1.", Some("parameters.top_k")));
            }
            let (inputs, _) = predict_inputs(request.inputs)?;
            let truncation = truncation(&state, request.truncate, None);
            let labels = run_predict(&state, &served, inputs, truncation, function, reservation).await?;
            let keep = parameters.top_k.unwrap_or(usize::MAX);
            let answer: Vec<Vec<TeiPrediction>> = labels
                .into_iter()
                .map(|l| predictions(l.into_iter().take(keep).collect()))
                .collect();
            Ok(Json(answer).into_response())
        }
    }
}

/// A request body of type `T` from JSON already read.
fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("Invalid request body: {e}."), None))
}
