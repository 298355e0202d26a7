//! openembed's HTTP layer: the OpenAI-compatible routes (and Cohere's / TEI's rerank) over the
//! request pipeline (`openembed-pipeline`), which owns what a request means. This crate owns
//! only HTTP: decoding bodies into pipeline requests ([`api`], [`rerank`]), the error body and
//! status of each failure ([`error`]), API keys, the in-flight memory budget, connection limits,
//! metrics exposition, the OpenAPI document, and draining on shutdown.
//!
//! Flow of `POST /v1/embeddings`: [`api`] decodes and validates the body → the pipeline plans
//! it, tokenizes it on a blocking thread and applies its limits → the model's scheduler runs its
//! token ids in batches → the handler in [`routes`] answers in input order.

pub mod api;
pub mod auth;
pub mod budget;
pub mod cohere;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod ollama;
pub mod openapi;
pub mod rerank;
pub mod routes;
pub mod state;
pub mod tei;

use crate::auth::ApiKeys;
use crate::error::{ApiError, Protocol};
use crate::state::{AppState, Limits};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use openembed_engine::LoadOptions;
use openembed_pipeline::{Alias, Defaults, ModelSpec, Registry, SchedulerConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

/// Everything `openembed serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind (default 127.0.0.1).
    pub host: String,
    /// Port (0 = any free port).
    pub port: u16,
    /// Models to serve.
    pub models: Vec<ModelSpec>,
    /// Extra names for served models.
    pub aliases: Vec<Alias>,
    /// API keys (empty = open).
    pub api_keys: Vec<String>,
    /// Compute threads shared by all models and tokenization (default: all cores).
    pub threads: Option<usize>,
    /// Batching limits.
    pub scheduler: SchedulerConfig,
    /// Request limits.
    pub limits: Limits,
    /// Truncation, default prompt and long-input defaults for requests.
    pub defaults: Defaults,
    /// How long shutdown waits for admitted requests.
    pub drain_timeout: Duration,
    /// Origins allowed by CORS (empty = CORS off; `*` = any).
    pub cors_origins: Vec<String>,
    /// Open connections, header timeout, close timeout.
    pub connections: listener::ConnectionLimits,
}

/// The request id of a request (the client's `x-request-id`, or a new one).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

const REQUEST_ID: &str = "x-request-id";

/// The API, every route declared once: its handler's `#[utoipa::path]` attribute gives the
/// method, path and OpenAPI operation; the router, the OpenAPI document ([`openapi::document`]),
/// the metrics label (the matched path) and [`routes`] all read these lines. A second path of
/// the same route (another client's spelling) is named beside it and left out of the document.
fn api() -> Api {
    Api::new(openapi::base())
        .route(routes!(routes::embeddings), &["/embeddings"])
        .route(routes!(routes::rerank), &["/v2/rerank"])
        .route(routes!(routes::list_models), &[])
        .route(routes!(routes::get_model), &[])
        .route(routes!(routes::health), &[])
        .route(routes!(routes::ready), &[])
        .route(routes!(routes::metrics), &[])
        .route(routes!(routes::openapi), &[])
        .speaking(Protocol::Ollama)
        .route(routes!(ollama::embed_route), &[])
        .route(routes!(ollama::embeddings_route), &[])
        .route(routes!(ollama::tags), &[])
        .route(routes!(ollama::ps), &[])
        .route(routes!(ollama::show), &[])
        .route(routes!(ollama::version), &[])
        .speaking(Protocol::Tei)
        .route(routes!(tei::embed), &[])
        .route(routes!(tei::embed_all), &[])
        .route(routes!(tei::embed_sparse), &[])
        .route(routes!(tei::predict), &[])
        .route(routes!(tei::rerank), &[])
        .route(routes!(tei::similarity), &[])
        .route(routes!(tei::tokenize), &[])
        .route(routes!(tei::decode), &[])
        .route(routes!(tei::info), &[])
        .route(routes!(tei::inference), &[])
        .speaking(Protocol::Cohere)
        .route(routes!(cohere::embed_v2), &[])
        .route(routes!(cohere::embed_v1), &[])
}

/// The routes being declared, with the (method, path) pairs they serve and the protocol of
/// those that do not speak OpenAI's.
struct Api {
    router: OpenApiRouter<Arc<AppState>>,
    routes: Vec<(String, String)>,
    protocols: Protocols,
    speaking: Protocol,
}

impl Api {
    fn new(doc: utoipa::openapi::OpenApi) -> Self {
        Self {
            router: OpenApiRouter::with_openapi(doc),
            routes: Vec::new(),
            protocols: Protocols::new(),
            speaking: Protocol::OpenAi,
        }
    }

    /// The routes declared next speak `protocol` (their errors take its shape).
    fn speaking(mut self, protocol: Protocol) -> Self {
        self.speaking = protocol;
        self
    }

    /// Adds a documented route, also served at `aliases`.
    fn route(mut self, route: UtoipaMethodRouter<Arc<AppState>>, aliases: &[&str]) -> Self {
        let (_, paths, method_router) = &route;
        for (path, item) in &paths.paths {
            let methods = path_methods(item);
            for alias in aliases.iter().copied().chain([path.as_str()]) {
                self.routes
                    .extend(methods.iter().map(|m| (m.to_string(), alias.to_string())));
                if self.speaking != Protocol::OpenAi {
                    self.protocols.insert(alias.to_string(), self.speaking);
                }
            }
        }
        for alias in aliases {
            self.router = self.router.route(alias, method_router.clone());
        }
        self.router = self.router.routes(route);
        self
    }
}

/// The HTTP methods of an OpenAPI path item.
fn path_methods(item: &utoipa::openapi::PathItem) -> Vec<&'static str> {
    [
        ("GET", item.get.is_some()),
        ("POST", item.post.is_some()),
        ("PUT", item.put.is_some()),
        ("DELETE", item.delete.is_some()),
        ("PATCH", item.patch.is_some()),
    ]
    .into_iter()
    .filter_map(|(m, has)| has.then_some(m))
    .collect()
}

/// Every route as (method, path pattern), aliases included: tests walk them (e.g. to prove that
/// API keys guard all but the public ones).
pub fn routes() -> Vec<(String, String)> {
    api().routes
}

/// The OpenAPI document of the declared routes (without the served models' details).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api().router.into_openapi()
}

/// The route pattern a request matched, for metric labels (`other` when none did).
fn route_label(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string())
}

/// Builds the router over loaded state.
pub fn router(state: Arc<AppState>, cors_origins: &[String]) -> Router {
    let Api { router, protocols, .. } = api();
    let (api, _) = router.split_for_parts();
    let api = api
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), authenticate))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(Arc::new(protocols), protocol_errors))
        .layer(middleware::from_fn(observe))
        .with_state(state);
    if cors_origins.is_empty() {
        return api;
    }
    let origins = if cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    api.layer(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static(REQUEST_ID),
            ]),
    )
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::with_status(StatusCode::NOT_FOUND, format!("Invalid URL ({method} {})", uri.path()))
}

async fn authenticate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match state.keys.check(request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Safety net: any error response that is not already JSON (the framework's own rejections,
/// e.g. 405) is rewritten into the OpenAI error shape, keeping its status and headers.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            match response
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .filter(|a| !a.is_empty())
            {
                Some(allowed) => format!("Method {method} is not allowed on {path}. Allowed: {allowed}."),
                None => format!("Method {method} is not allowed on {path}."),
            }
        }
        StatusCode::PAYLOAD_TOO_LARGE => "Request body too large.".to_string(),
        _ => format!("{} ({method} {path})", status.canonical_reason().unwrap_or("Error")),
    };
    let mut error = if status.is_server_error() {
        ApiError {
            status,
            ..ApiError::internal(message)
        }
    } else {
        ApiError::with_status(status, message)
    };
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        error.retry_after = Some(1);
    }
    let (mut parts, _) = response.into_parts();
    let rewritten = error.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in rewritten.headers() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, rewritten.into_body())
}

/// Errors in the protocol of the route: every failure is first an OpenAI error body (the
/// handlers' [`ApiError`], the safety net above); on a route declared with another protocol
/// (and on unknown paths under Ollama's `/api/`) it is answered in that protocol's shape.
async fn protocol_errors(State(protocols): State<Arc<Protocols>>, request: Request, next: Next) -> Response {
    let protocol = match request.extensions().get::<MatchedPath>() {
        Some(path) => protocols.get(path.as_str()).copied().unwrap_or_default(),
        None if request.uri().path().starts_with("/api/") => Protocol::Ollama,
        None => Protocol::OpenAi,
    };
    let response = next.run(request).await;
    let status = response.status();
    if protocol == Protocol::OpenAi || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let error = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
    let field = |name: &str| {
        error
            .as_ref()
            .and_then(|v| v["error"][name].as_str().map(str::to_owned))
    };
    let message = field("message").unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let (status, body) = protocol.answer(status, &message, field("code").as_deref());
    parts.status = status;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// The protocol of each route pattern that does not speak OpenAI's.
type Protocols = std::collections::HashMap<String, Protocol>;

/// Request id, `openai-processing-ms`, metrics and the access log.
async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()));
    let method = request.method().clone();
    let route = route_label(&request);
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let status = response.status();
    if status.is_success() {
        if let Ok(v) = HeaderValue::from_str(&elapsed.as_millis().to_string()) {
            response.headers_mut().insert("openai-processing-ms", v);
        }
    }
    metrics::request(&route, method.as_str(), status.as_u16(), elapsed);
    tracing::debug!(request_id = %id, %method, route, status = status.as_u16(), ms = log_ms(elapsed), "request");
    response
}

/// Milliseconds for log lines, rounded to 0.01 ms (no float noise such as 0.053007000000000006).
pub fn log_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Binds the listener (first, so a busy port fails before any model loads), then loads the
/// models; returns the state and the bound listener.
pub async fn bind(config: &ServerConfig) -> Result<(Arc<AppState>, tokio::net::TcpListener), String> {
    let _ = metrics::handle();
    // The port first: a busy port fails at once, not after the models have loaded.
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another program has this port: choose one with --port or OPENEMBED_PORT, e.g. `make run PORT=9000`)"
        } else {
            ""
        };
        format!("cannot listen on {addr}: {e}{hint}")
    })?;
    let keys = ApiKeys::new(config.api_keys.clone());
    let specs = config.models.clone();
    let aliases = config.aliases.clone();
    // One compute pool for every model and for tokenization: the CPU is never oversubscribed.
    let pool = openembed_engine::compute_pool(config.threads).map_err(|e| e.to_string())?;
    let options = LoadOptions {
        threads: config.threads,
        pool: Some(pool),
        dtype: Default::default(),
    };
    let scheduler = config.scheduler;
    let registry = tokio::task::spawn_blocking(move || Registry::load(&specs, &aliases, &options, scheduler))
        .await
        .map_err(|e| format!("model loading stopped: {e}"))??;
    for served in registry.models() {
        if let Some(name) = &config.defaults.default_prompt_name {
            if !served.model.info().prompts.contains_key(name) && config.models.len() == 1 {
                return Err(format!(
                    "--default-prompt-name {name}: model '{}' has no such prompt",
                    served.name
                ));
            }
        }
    }
    let state = Arc::new(AppState::new(registry, config.limits, config.defaults.clone(), keys));
    Ok((state, listener))
}

/// Serves until `shutdown` resolves, then drains: `/ready` and new requests get 503, admitted
/// requests finish (up to the drain timeout), queues empty, and the function returns.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let app = router(Arc::clone(&state), &config.cors_origins);
    let drain_state = Arc::clone(&state);
    let drain_timeout = config.drain_timeout;
    // New requests keep being accepted (and answered 503) until admitted ones are done.
    let stop = async move {
        shutdown.await;
        drain_state.start_draining();
        tracing::info!(
            in_flight = drain_state.in_flight(),
            "shutting down: draining admitted requests"
        );
        if tokio::time::timeout(drain_timeout, drain_state.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(in_flight = drain_state.in_flight(), "drain timeout reached");
        }
    };
    listener::run(listener, app, config.connections, stop).await;
    let registry_state = Arc::clone(&state);
    let _ = tokio::task::spawn_blocking(move || registry_state.registry.shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_declared_once_with_its_aliases() {
        let routes = routes();
        for expected in [
            ("POST", "/v1/embeddings"),
            ("POST", "/embeddings"),
            ("POST", "/v1/rerank"),
            ("POST", "/v2/rerank"),
            ("POST", "/rerank"),
            ("GET", "/v1/models/{model}"),
            ("GET", "/openapi.json"),
        ] {
            assert!(
                routes.iter().any(|(m, p)| m == expected.0 && p == expected.1),
                "{expected:?} in {routes:?}"
            );
        }
        let doc = openapi_document();
        assert!(doc.paths.paths.contains_key("/v1/embeddings"));
        assert!(
            !doc.paths.paths.contains_key("/embeddings"),
            "aliases stay out of the document"
        );
    }
}
