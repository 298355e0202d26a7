//! Cohere's embed API, so code written for Cohere (the `cohere` SDK's `ClientV2.embed` and
//! `Client.embed`, and what is built on them) uses openembed unchanged: `POST /v2/embed` and
//! `/v1/embed`. `input_type` picks the model's query or document prompt (see [`prompt_for`]),
//! `embedding_types` asks for compressed vectors (`int8`, `uint8`, `binary`, `ubinary`; see
//! `openembed_pipeline::quantize`) and `base64` floats, `truncate` is `NONE`, `START` or `END`.
//! Errors have Cohere's shape, `{"message": "…"}` (see [`crate::error::Protocol`]).

use crate::error::ApiError;
use crate::routes::{blocking, embed_with, read_json};
use crate::state::{AppState, InFlight};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use openembed_engine::{ModelInfo, Truncation};
use openembed_pipeline::{Defaults, EmbedRequest, EmbeddingType, Input, ServedModel};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;

/// One part of a v2 input: text (images are not served).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CohereContent {
    /// `text` (or `image_url`, refused: openembed serves text models).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// A v2 input: its parts, embedded as one text.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CohereInput {
    /// The parts, joined by a space.
    pub content: Vec<CohereContent>,
}

/// `POST /v2/embed`, `/v1/embed`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CohereEmbedRequest {
    /// A served embedding model or alias.
    pub model: String,
    /// The texts (this or `inputs`).
    pub texts: Option<Vec<String>>,
    /// v2: inputs of text parts (this or `texts`).
    pub inputs: Option<Vec<CohereInput>>,
    /// `search_query`, `search_document`, `classification` or `clustering`: the model's prompt
    /// (or task) of that name, where it has one.
    pub input_type: Option<String>,
    /// `float`, `int8`, `uint8`, `binary`, `ubinary`, `base64` (default `float`).
    pub embedding_types: Option<Vec<String>>,
    /// `NONE` (refuse over-long texts), `START` or `END` (cut that end; the default).
    pub truncate: Option<String>,
    /// Cut vectors to this many dimensions.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::api::json_count")]
    pub output_dimension: Option<usize>,
    /// Accepted when at least the model's limit (inputs are cut at the model's limit).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::api::json_count")]
    pub max_tokens: Option<usize>,
    /// Refused when not empty: openembed serves text models.
    pub images: Option<Vec<String>>,
}

/// Cohere's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohereEmbedResponse {
    /// Response id.
    pub id: String,
    /// `embeddings_by_type` (v2, or v1 with `embedding_types`) or `embeddings_floats`.
    pub response_type: &'static str,
    /// By type (`{"float": [[…]], "int8": [[…]] …}`), or the float vectors (v1 without types).
    #[schema(value_type = Value)]
    pub embeddings: Value,
    /// The texts, in order.
    pub texts: Vec<String>,
    /// API version and billed units (`input_tokens`).
    #[schema(value_type = Object)]
    pub meta: Value,
}

/// Cohere's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohereError {
    /// What went wrong.
    pub message: String,
}

/// The errors Cohere's routes may answer, each with Cohere's error body.
#[derive(utoipa::IntoResponses)]
pub enum CohereErrors {
    /// Invalid request
    #[response(status = 400)]
    Invalid(CohereError),
    /// Missing or wrong API key
    #[response(status = 401)]
    Unauthorized(CohereError),
    /// Unknown model
    #[response(status = 404)]
    NotFound(CohereError),
    /// Body over the limit
    #[response(status = 413)]
    TooLarge(CohereError),
    /// Body is not JSON
    #[response(status = 415)]
    NotJson(CohereError),
    /// Queue full; see Retry-After
    #[response(status = 429)]
    Busy(CohereError),
    /// Internal failure
    #[response(status = 500)]
    Internal(CohereError),
    /// Shutting down; see Retry-After
    #[response(status = 503)]
    Unavailable(CohereError),
}

/// The prompt names, then task names, tried for each `input_type`: the first the model has is
/// used; a model with none of them embeds the text plainly.
pub const INPUT_TYPES: [(&str, &[&str], &[&str]); 4] = [
    (
        "search_query",
        &["search_query", "query", "Query"],
        &["retrieval.query"],
    ),
    (
        "search_document",
        &["search_document", "document", "passage", "Document", "doc"],
        &["retrieval.passage"],
    ),
    (
        "classification",
        &["classification", "Classification"],
        &["classification"],
    ),
    ("clustering", &["clustering", "Clustering"], &["separation"]),
];

/// The (prompt name, task) of `input_type` on a model (see [`INPUT_TYPES`]).
pub fn prompt_for(info: &ModelInfo, input_type: &str) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some((_, prompts, tasks)) = INPUT_TYPES.iter().find(|(name, _, _)| *name == input_type) else {
        return Err(ApiError::invalid(
            format!(
                "invalid request: input_type '{input_type}' is not one of {} (openembed serves text models).",
                INPUT_TYPES.map(|t| t.0).join(", ")
            ),
            Some("input_type"),
        ));
    };
    let prompt = prompts
        .iter()
        .find(|p| info.prompts.contains_key(**p))
        .map(|p| p.to_string());
    let task = tasks
        .iter()
        .find(|t| info.tasks.iter().any(|x| x == **t))
        .map(|t| t.to_string());
    Ok((prompt, task))
}

/// The texts of a request: `texts`, or each input's text parts joined.
fn texts_of(request: &mut CohereEmbedRequest) -> Result<Vec<String>, ApiError> {
    if request.images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid(
            "invalid request: openembed serves text models; images cannot be embedded.",
            Some("images"),
        ));
    }
    match (request.texts.take(), request.inputs.take()) {
        (Some(texts), None) => Ok(texts),
        (None, Some(inputs)) => inputs
            .into_iter()
            .map(|input| {
                if input.content.is_empty() {
                    return Err(ApiError::invalid(
                        "invalid request: an input's `content` must hold at least one text part.",
                        Some("inputs"),
                    ));
                }
                let parts = input
                    .content
                    .into_iter()
                    .map(|part| match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => Ok(text),
                        _ => Err(ApiError::invalid(
                            "invalid request: only `text` content is served (with its `text`).",
                            Some("inputs"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(parts.join(" "))
            })
            .collect(),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "invalid request: give either `texts` or `inputs`, not both.",
            Some("texts"),
        )),
        (None, None) => Err(ApiError::invalid(
            "invalid request: one of `texts` or `inputs` must be given.",
            Some("texts"),
        )),
    }
}

fn served_embedder(state: &AppState, name: &str) -> Result<Arc<ServedModel>, ApiError> {
    let served = Arc::clone(state.registry.find(name)?);
    if !served.model.info().embeds() {
        return Err(ApiError::invalid(
            format!(
                "invalid request: model '{name}' is a {}, not an embedding model.",
                served.model.info().kind().name()
            ),
            Some("model"),
        ));
    }
    Ok(served)
}

/// One embed request of either version; `v1` answers float vectors when no types are asked.
async fn run(
    state: &AppState,
    mut request: CohereEmbedRequest,
    v1: bool,
    reservation: &mut crate::budget::Reservation,
) -> Result<CohereEmbedResponse, ApiError> {
    let served = served_embedder(state, &request.model)?;
    let texts = texts_of(&mut request)?;
    if texts.is_empty() {
        return Err(ApiError::invalid(
            "invalid request: at least one text is required.",
            Some("texts"),
        ));
    }
    if texts.len() > crate::api::MAX_INPUTS {
        return Err(ApiError::invalid(
            format!(
                "invalid request: {} texts; at most {} are allowed per call.",
                texts.len(),
                crate::api::MAX_INPUTS
            ),
            Some("texts"),
        ));
    }
    let info = served.model.info();
    let (prompt_name, task) = match request.input_type.as_deref() {
        Some(input_type) => prompt_for(info, input_type)?,
        None if v1 => (None, None),
        None => {
            return Err(ApiError::invalid(
                "invalid request: input_type is required for v2 embed.",
                Some("input_type"),
            ))
        }
    };
    if let Some(max) = request.max_tokens.filter(|&m| m < info.max_input_tokens) {
        return Err(ApiError::invalid(
            format!(
                "invalid request: max_tokens {max} is below the model's limit of {} tokens; openembed cuts inputs \
                 at the model's limit.",
                info.max_input_tokens
            ),
            Some("max_tokens"),
        ));
    }
    let side = match request.truncate.as_deref().unwrap_or("END") {
        "NONE" => None,
        "START" => Some(Truncation::Start),
        "END" => Some(Truncation::End),
        other => {
            return Err(ApiError::invalid(
                format!("invalid request: truncate '{other}' is not one of NONE, START, END."),
                Some("truncate"),
            ))
        }
    };
    let asked_types = request.embedding_types.is_some();
    let types: Vec<String> = match request.embedding_types.take() {
        Some(types) if types.is_empty() => {
            return Err(ApiError::invalid(
                "invalid request: embedding_types must not be empty.",
                Some("embedding_types"),
            ))
        }
        Some(types) => types,
        None => vec!["float".to_string()],
    };
    let kinds = types
        .iter()
        .map(|t| match t.as_str() {
            "base64" => Ok(None),
            name => EmbeddingType::from_name(name)
                .map(Some)
                .ok_or_else(|| ApiError::from(EmbeddingType::unknown(name, "embedding_types"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let embed = EmbedRequest {
        model: request.model.clone(),
        prompt_name,
        task,
        truncate: Some(side.is_some()),
        dimensions: request.output_dimension,
        ..EmbedRequest::default()
    };
    let defaults = Defaults {
        truncation_side: side.unwrap_or(Truncation::End),
        truncate_hint: "Send \"truncate\": \"END\" (Cohere's default) to cut over-long texts instead.",
        ..state.defaults.clone()
    };
    let inputs = texts.iter().cloned().map(Input::Text).collect();
    let done = embed_with(state, &defaults, &served, &embed, inputs, reservation).await?;
    let meta = json!({"api_version": {"version": if v1 { "1" } else { "2" }},
                      "billed_units": {"input_tokens": done.tokens}});
    let id = uuid::Uuid::new_v4().to_string();
    if v1 && !asked_types {
        return Ok(CohereEmbedResponse {
            id,
            response_type: "embeddings_floats",
            embeddings: json!(done.vectors),
            texts,
            meta,
        });
    }
    let vectors = Arc::new(done.vectors);
    let for_codes = Arc::clone(&vectors);
    let by_type = blocking("Encoding", move || {
        let mut by_type = Map::new();
        for (name, kind) in types.iter().zip(kinds) {
            let value = match kind {
                None => json!(for_codes
                    .iter()
                    .map(|v| crate::api::base64_floats(v))
                    .collect::<Vec<_>>()),
                Some(kind) => json!(served.codes(kind, &embed, for_codes.to_vec())?),
            };
            by_type.insert(name.clone(), value);
        }
        Ok(by_type)
    })
    .await?;
    Ok(CohereEmbedResponse {
        id,
        response_type: "embeddings_by_type",
        embeddings: Value::Object(by_type),
        texts,
        meta,
    })
}

/// Embeds texts (Cohere's v2 embed): vectors by `embedding_types`.
#[utoipa::path(
    post,
    path = "/v2/embed",
    request_body(content = CohereEmbedRequest, content_type = "application/json"),
    responses((status = 200, description = "Vectors by type, in input order", body = CohereEmbedResponse), CohereErrors),
    security((), ("bearer" = []))
)]
pub async fn embed_v2(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CohereEmbedResponse>, ApiError> {
    handle(&state, &headers, body, false).await
}

/// Embeds texts (Cohere's v1 embed): float vectors, or by type with `embedding_types`.
#[utoipa::path(
    post,
    path = "/v1/embed",
    request_body(content = CohereEmbedRequest, content_type = "application/json"),
    responses((status = 200, description = "Vectors, in input order", body = CohereEmbedResponse), CohereErrors),
    security((), ("bearer" = []))
)]
pub async fn embed_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CohereEmbedResponse>, ApiError> {
    handle(&state, &headers, body, true).await
}

/// Either route: admission, the body under the budget, the request.
async fn handle(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    v1: bool,
) -> Result<Json<CohereEmbedResponse>, ApiError> {
    let _in_flight = InFlight::enter(state)?;
    let (request, mut reservation) = read_json(state, headers, body).await?;
    Ok(Json(run(state, request, v1, &mut reservation).await?))
}
