//! The HTTP handlers: embeddings, models, and the operational endpoints.

use crate::api::{
    decode_json, is_json, unsupported_media_type, EmbeddingsResponse, ErrorBody, ModelList, ModelObject, PostErrors,
};
use crate::budget::Reservation;
use crate::error::ApiError;
use crate::rerank::{RerankRequest, RerankResponse, RerankResult, RerankUsage, ResultDocument};
use crate::state::{AppState, InFlight};
use crate::RequestId;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http_body_util::BodyExt;
use openembed_engine::{ModelKind, Output, Truncation};
use openembed_pipeline::prepare::Prepared;
use openembed_pipeline::rerank::{RerankIds, RerankJob};
use openembed_pipeline::{Defaults, EmbedRequest, Embedded, Input, Plan, ServedModel};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// How a rerank client turns truncation on (ends the over-limit message).
const RERANK_TRUNCATE_HINT: &str =
    "send \"truncate\": true (or start the server with --auto-truncate) to cut the document.";

/// Body bytes reserved at a time when the client did not declare a length.
const READ_STEP: usize = 64 * 1024;

/// Decoding holds the body and its decoded inputs at once: token ids take at most 4 bytes of
/// memory per body byte (`1,` → one i64), texts at most one, plus per-input overhead.
fn decoding_bytes(body: usize) -> usize {
    body.saturating_mul(5) + crate::api::MAX_INPUTS * 64
}

/// Memory a response of `n` vectors of `dim` floats takes while it is built and serialized.
fn response_bytes(n: usize, dim: usize) -> usize {
    n.saturating_mul(dim).saturating_mul(24)
}

/// Reads the whole body within the body timeout, reserving its bytes under the in-flight budget
/// before they are read: 429 when the budget is full, 413 over the limit, 408 when trickled.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limits: &crate::state::Limits,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: the limit is {} bytes.", limits.max_body_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = Vec::new();
    let read = async {
        if let Err(busy) = reservation.grow(declared.unwrap_or(READ_STEP)) {
            return refuse(busy, &mut body).await;
        }
        buf.reserve_exact(declared.unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::invalid(format!("The request body could not be read: {e}"), None))?;
            let Ok(data) = frame.into_data() else { continue };
            let len = buf.len() + data.len();
            if len > limits.max_body_bytes {
                return Err(too_large());
            }
            if len > reservation.bytes() {
                if let Err(busy) = reservation.resize(len.max(reservation.bytes() + READ_STEP)) {
                    buf = Vec::new();
                    return refuse(busy, &mut body).await;
                }
            }
            buf.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(limits.body_timeout, read).await {
        Err(_) => Err(ApiError::with_status(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "The request body was not received within {} s; send it at once, not trickled.",
                limits.body_timeout.as_secs()
            ),
        )),
        Ok(result) => result.map(|()| buf),
    }
}

/// A request refused for lack of budget: the rest of its body is read and dropped (never held),
/// so the client, still sending, gets the 429 instead of a reset connection.
async fn refuse<T>(error: ApiError, body: &mut Body) -> Result<T, ApiError> {
    while let Some(Ok(_)) = body.frame().await {}
    Err(error)
}

/// A JSON request body read under the in-flight budget (415 unless JSON), with its reservation.
pub(crate) async fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Vec<u8>, Reservation), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if !is_json(content_type) {
        return Err(unsupported_media_type());
    }
    let mut reservation = state.budget.reservation();
    let body = read_body(body, headers, &state.limits, &mut reservation).await?;
    Ok((body, reservation))
}

/// The served reranker a rerank request names (or the only one): 404 for an unknown name,
/// 400 for an embedding model.
fn reranker(state: &AppState, model: Option<&str>) -> Result<(String, Arc<ServedModel>), ApiError> {
    let name = match model {
        Some(name) => name.to_string(),
        None => {
            let rerankers: Vec<&str> = state
                .registry
                .names()
                .filter(|(_, m)| m.model.info().reranks())
                .map(|(n, _)| n)
                .collect();
            match rerankers.as_slice() {
                [one] => one.to_string(),
                [] => return Err(ApiError::invalid("No reranker is served.", Some("model"))),
                many => {
                    return Err(ApiError::invalid(
                        format!(
                            "Several rerankers are served ({}); name one in 'model'.",
                            many.join(", ")
                        ),
                        Some("model"),
                    ))
                }
            }
        }
    };
    let served = state.registry.find(&name)?.clone();
    if !served.model.info().reranks() {
        return Err(ApiError::invalid(
            format!(
                "The model '{name}' is not a reranker (its outputs: {}); use {}.",
                served.model.info().outputs().join(", "),
                openembed_pipeline::plan::not_embedding(served.model.info().kind()).unwrap_or("POST /v1/embeddings")
            ),
            Some("model"),
        ));
    }
    Ok((name, served))
}

/// A JSON body of type `T` read under the in-flight budget (its decoded strings included).
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(T, Reservation), ApiError> {
    let (bytes, mut reservation) = json_body(state, headers, body).await?;
    reservation.resize(bytes.len().saturating_mul(2))?;
    Ok((decode_body(&bytes)?, reservation))
}

/// Decodes a JSON body into `T`: 400 naming where it is wrong.
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("Invalid request body: {e}."), None))
}

/// Tokenizes a rerank job, runs its pairs through the model's scheduler and ranks them.
pub(crate) async fn run_rerank(
    state: &AppState,
    served: &Arc<ServedModel>,
    job: RerankJob,
    raw: bool,
    reservation: &mut Reservation,
) -> Result<(Vec<(usize, f32)>, usize, RerankJob), ApiError> {
    served.scheduler.check_room()?;
    let model = Arc::clone(&served.model);
    let max_tokens = state.limits.max_request_tokens;
    let mut job = job;
    job.truncate_hint = RERANK_TRUNCATE_HINT;
    let (ids, tokens, job) = blocking("Tokenization", move || {
        let (ids, tokens) = job.tokenize(&model, max_tokens)?;
        Ok((ids, tokens, job))
    })
    .await?;
    // Token vectors of a late-interaction model's documents are held until scored.
    let info = served.model.info();
    let rows = match &ids {
        RerankIds::Pairs(_) => 0,
        // As floats: token vectors and lexical pairs per token, a dense vector per document.
        RerankIds::Apart { .. } => {
            (tokens * (info.multi_vector.unwrap_or(0) + 2) + job.documents.len() * info.dimension) * 4
        }
    };
    reservation.resize(tokens * 4 + rows + job.documents.iter().map(String::len).sum::<usize>())?;
    let output = served.submit_rerank(ids)?.wait().await?;
    Ok((served.rank(&output, raw), tokens, job))
}

/// Ranks documents by relevance to a query (Cohere v1/v2, Jina and vLLM shape).
#[utoipa::path(
    post,
    path = "/v1/rerank",
    request_body(content = RerankRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Results, best first", body = RerankResponse),
        PostErrors,
    ),
    security((), ("bearer" = []))
)]
pub async fn rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RerankResponse>, ApiError> {
    let _in_flight = InFlight::enter(&state)?;
    let (body, mut reservation) = json_body(&state, &headers, body).await?;
    let request: RerankRequest = decode_body(&body)?;
    drop(body);
    let (name, served) = reranker(&state, request.model.as_deref())?;
    if request.top_n == Some(0) {
        return Err(ApiError::invalid("'top_n' must be at least 1.", Some("top_n")));
    }
    let documents = request.documents.iter().map(|d| d.text().to_string()).collect();
    // Cohere cuts long documents rather than refusing them.
    let job = RerankJob::new(
        request.query,
        documents,
        request.instruction,
        Truncation::End,
        request.max_tokens_per_doc,
    )?;
    let raw = request.raw_scores.unwrap_or(false);
    let (ranked, tokens, mut job) = run_rerank(&state, &served, job, raw, &mut reservation).await?;
    let keep = request.top_n.unwrap_or(ranked.len()).min(ranked.len());
    let with_docs = request.return_documents.unwrap_or(false);
    let results = ranked[..keep]
        .iter()
        .map(|&(index, relevance_score)| RerankResult {
            index,
            relevance_score,
            document: with_docs.then(|| ResultDocument {
                text: std::mem::take(&mut job.documents[index]),
            }),
        })
        .collect();
    Ok(Json(RerankResponse {
        id: format!("rerank-{}", uuid::Uuid::new_v4().simple()),
        model: name,
        results,
        meta: json!({"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                     "tokens": {"input_tokens": tokens, "output_tokens": 0}}),
        usage: RerankUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// Runs CPU work (decoding, tokenization, serialization) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::internal(format!("{what} failed unexpectedly.")))?
}

/// Runs one embeddings request through the pipeline for any route: plans it (before any
/// tokenization), refuses it early when the model's queue is full, tokenizes on a blocking
/// thread, reserves the memory its ids and answer will hold, queues it and waits.
pub(crate) async fn embed(
    state: &AppState,
    served: &Arc<ServedModel>,
    request: &EmbedRequest,
    inputs: Vec<Input>,
    reservation: &mut Reservation,
) -> Result<Embedded, ApiError> {
    embed_with(state, &state.defaults, served, request, inputs, reservation).await
}

/// [`embed`] with a route's own defaults (another protocol's truncation hint).
pub(crate) async fn embed_with(
    state: &AppState,
    defaults: &Defaults,
    served: &Arc<ServedModel>,
    request: &EmbedRequest,
    inputs: Vec<Input>,
    reservation: &mut Reservation,
) -> Result<Embedded, ApiError> {
    let plan = served.plan(request, defaults)?;
    let (prepared, plan) = prepare(state, served, plan, inputs).await?;
    let n_inputs = prepared.layout.inputs();
    let info = served.model.info();
    // What the answer holds, as floats in memory and as JSON text (about 20 bytes a number).
    let answer = match plan.output {
        Output::Pooled => response_bytes(n_inputs, info.dimension),
        // A pair per kept id: at most one per token (lexical weights) or per vocabulary entry.
        Output::Sparse if info.lexical => response_bytes(prepared.tokens, 2),
        Output::Sparse => response_bytes(n_inputs, 2 * info.dimension),
        Output::MultiVector(_) | Output::Retrieval(_) => {
            response_bytes(prepared.tokens, info.multi_vector.unwrap_or(info.hidden_size))
        }
        Output::Tokens => response_bytes(prepared.tokens, info.hidden_size),
    };
    reservation.resize(prepared.tokens * 4 + answer)?;
    Ok(served.enqueue(prepared, plan)?.wait().await?)
}

/// The token ids of a planned request, tokenized off the async workers under the request token
/// limit (refused at once when the model's queue is full).
pub(crate) async fn prepare(
    state: &AppState,
    served: &Arc<ServedModel>,
    plan: Plan,
    inputs: Vec<Input>,
) -> Result<(Prepared, Plan), ApiError> {
    served.scheduler.check_room()?;
    let max_tokens = state.limits.max_request_tokens;
    let for_tokenizer = Arc::clone(served);
    blocking("Tokenization", move || {
        let prepared = for_tokenizer.prepare(&inputs, &plan, max_tokens)?;
        Ok((prepared, plan))
    })
    .await
}

/// Creates an embedding vector representing the input text.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    request_body(content = crate::api::EmbeddingsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The vectors, in input order", body = EmbeddingsResponse),
        PostErrors,
    ),
    security((), ("bearer" = []))
)]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let _in_flight = InFlight::enter(&state)?;
    let (body, mut reservation) = json_body(&state, &headers, body).await?;
    reservation.resize(decoding_bytes(body.len()))?;
    let request = blocking("Decoding", move || decode_json(&body)).await?;
    reservation.resize(request.heap_bytes())?;
    let served = state.registry.find(&request.model)?.clone();
    let spec = request.response_spec();
    let model_name = spec.model.clone();
    let done = embed(&state, &served, &spec.request, request.input.0, &mut reservation).await?;
    let (tokens, n_inputs) = (done.tokens, done.vectors.len());
    let (queue_time, inference_time) = (done.queue_time, done.inference_time);
    let body = blocking("Building the response", move || {
        let response = spec.respond(&served, done.vectors, tokens)?;
        serde_json::to_vec(&response).map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    tracing::info!(
        request_id = %request_id.0,
        model = %model_name,
        inputs = n_inputs,
        tokens,
        queue_ms = crate::log_ms(queue_time),
        inference_ms = crate::log_ms(inference_time),
        total_ms = crate::log_ms(started.elapsed()),
        "embeddings"
    );
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

fn model_object(id: &str, served: &ServedModel) -> ModelObject {
    let info = served.model.info();
    ModelObject {
        id: id.to_string(),
        object: "model",
        created: served.created,
        owned_by: "openembed".to_string(),
        root: served.name.clone(),
        architecture: info.architecture.clone(),
        dtype: info.dtype.to_string(),
        kernels: openembed_engine::kernels::gemm_kernel(info.dtype).to_string(),
        dimensions: info.dimension,
        max_input_tokens: info.max_input_tokens,
        pooling: info
            .pooling
            .iter()
            .map(|p| p.name().to_string())
            .collect::<Vec<_>>()
            .join("+"),
        normalized: info.normalize,
        prompts: info.prompts.keys().cloned().collect(),
        serves: match info.kind() {
            ModelKind::Embedding => "embeddings",
            ModelKind::Reranker => "rerank",
            ModelKind::Classifier => "classify",
            ModelKind::Sparse => "embed_sparse",
            ModelKind::MultiVector => "embed_all",
        },
        outputs: info.outputs(),
        multi_vector_dimensions: info.multi_vector,
        tasks: info.tasks.clone(),
        default_task: served.default_task.clone(),
        matryoshka_dimensions: info.matryoshka_dimensions.clone(),
        token_ids: served.token_ids.name().to_string(),
    }
}

/// Lists the served models and aliases.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let data = state
        .registry
        .names()
        .map(|(id, served)| model_object(id, served))
        .collect();
    Json(ModelList { object: "list", data })
}

/// One served model or alias.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    params(("model" = String, Path, description = "A served model name or alias")),
    responses((status = 200, body = ModelObject), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let served = state.registry.find(&id)?;
    Ok(Json(model_object(&id, served)))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "Up")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: models loaded and accepting work (503 while shutting down).
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "Ready"), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("The server is shutting down."));
    }
    let models: Vec<&str> = state.registry.models().iter().map(|m| m.name.as_str()).collect();
    Ok(Json(json!({"status": "ready", "models": models})))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// This API as OpenAPI 3.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    match crate::openapi::document(&state.registry) {
        Ok(doc) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            doc,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
