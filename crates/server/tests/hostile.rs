//! Hostile and malformed input against the real router (in process, the default model loaded):
//! property tests on arbitrary bytes and JSON, the explicit cases of the hardening issue, API
//! keys on every route of the router's own table, and CORS.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use openembed_engine::{LoadOptions, Truncation};
use openembed_pipeline::{Defaults, ModelSpec, Registry, SchedulerConfig, TokenIds};
use openembed_server::auth::ApiKeys;
use openembed_server::state::{AppState, Limits};
use openembed_server::{api, router, routes};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tower::ServiceExt;

const BODY_LIMIT: usize = 1 << 20;

fn model_dir() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "run `make model` (or `make test`) first"
    );
    dir.to_string_lossy().into_owned()
}

fn state(keys: &[&str]) -> Arc<AppState> {
    // Native ids here (the model's vocabulary), so the id checks meet the vocabulary bound.
    let spec = ModelSpec {
        source: model_dir(),
        name: "all-MiniLM-L6-v2".into(),
        token_ids: TokenIds::Native,
        dtype: Default::default(),
        default_task: None,
    };
    let registry = Registry::load(
        &[spec],
        &[],
        &LoadOptions {
            threads: Some(2),
            ..LoadOptions::default()
        },
        SchedulerConfig {
            max_batch_tokens: 2048,
            max_queued_tokens: 1_000_000,
            batch_time: Duration::from_millis(50),
        },
    )
    .expect("model loads");
    let limits = Limits {
        max_request_tokens: 300_000,
        max_body_bytes: BODY_LIMIT,
        body_timeout: Duration::from_secs(5),
        max_inflight_bytes: 256 << 20,
    };
    let defaults = Defaults {
        auto_truncate: false,
        truncation_side: Truncation::End,
        ..Defaults::default()
    };
    Arc::new(AppState::new(
        registry,
        limits,
        defaults,
        ApiKeys::new(keys.iter().map(|k| k.to_string())),
    ))
}

/// One runtime and one open router for the whole file.
fn shared() -> &'static (tokio::runtime::Runtime, Router) {
    static SHARED: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = router(state(&[]), &[]);
        (rt, app)
    })
}

/// Sends a request through the router; returns status, headers and body bytes.
fn send(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let (rt, _) = shared();
    rt.block_on(async {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, headers, body.to_vec())
    })
}

fn post_raw(content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
    let mut req = Request::post("/v1/embeddings");
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let (status, headers, body) = send(&shared().1, req.body(Body::from(body)).unwrap());
    assert_eq!(
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "every answer is JSON ({status})"
    );
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

fn post(body: &Value) -> (StatusCode, Value) {
    post_raw(Some("application/json"), serde_json::to_vec(body).unwrap())
}

/// 200 with vectors, or a 4xx in the OpenAI error shape.
fn assert_ok_or_client_error(status: StatusCode, body: &Value) {
    if status == StatusCode::OK {
        assert_eq!(body["object"], "list");
        return;
    }
    assert!(status.is_client_error(), "status {status}: {body}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error["type"].is_string() && error.contains_key("param") && error.contains_key("code"));
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        Just(json!("all-MiniLM-L6-v2")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Request-shaped objects: the real field names with arbitrary values, so the checks past the
/// first field are reached too.
fn request_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("model"),
        Just("input"),
        Just("encoding_format"),
        Just("dimensions"),
        Just("user"),
        Just("truncate"),
        Just("prompt_name"),
    ];
    let input = prop_oneof![
        ".{0,40}".prop_map(Value::String),
        prop::collection::vec(".{0,20}".prop_map(Value::String), 0..4).prop_map(Value::Array),
        prop::collection::vec(-5i64..40_000, 0..8).prop_map(|v| json!(v)),
        prop::collection::vec(prop::collection::vec(-5i64..40_000, 0..4), 0..3).prop_map(|v| json!(v)),
        json_value(),
    ];
    (
        prop::collection::btree_map(field, json_value(), 0..5),
        input,
        any::<bool>(),
    )
        .prop_map(|(fields, input, named)| {
            let mut obj: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            obj.insert("input".into(), input);
            if named {
                obj.insert("model".into(), json!("all-MiniLM-L6-v2"));
            }
            Value::Object(obj)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match api::decode(Some("application/json"), &bytes) {
            Ok(request) => prop_assert!(!request.inputs().is_empty()),
            Err(e) => prop_assert!(e.status.is_client_error() && !e.message.is_empty()),
        }
    }

    #[test]
    fn decoding_arbitrary_json_never_panics(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Err(e) = api::decode(Some("application/json"), &bytes) {
            prop_assert!(e.status.is_client_error() && !e.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_router_answers_200_or_an_openai_4xx(value in request_like()) {
        let (status, body) = post(&value);
        assert_ok_or_client_error(status, &body);
    }

    #[test]
    fn the_router_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let (status, body) = post_raw(Some("application/json"), bytes);
        assert_ok_or_client_error(status, &body);
    }
}

#[test]
fn explicit_hostile_cases() {
    let model = "all-MiniLM-L6-v2";
    let expect = |status: StatusCode, body: &Value, want: u16| {
        assert_eq!(status.as_u16(), want, "{body}");
        assert_ok_or_client_error(status, body);
    };
    // Invalid UTF-8 inside a JSON string.
    let mut bytes = br#"{"model":"all-MiniLM-L6-v2","input":""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
    let (s, b) = post_raw(Some("application/json"), bytes);
    expect(s, &b, 400);
    // JSON nested 10,000 deep (no stack overflow).
    let deep = format!(
        r#"{{"model":"{model}","input":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (s, b) = post_raw(Some("application/json"), deep.into_bytes());
    expect(s, &b, 400);
    // Numbers like 1e400 and -0 for dimensions.
    for d in ["1e400", "-0", "-0.0", "1e3", "2.5", "18446744073709551616"] {
        let raw = format!(r#"{{"model":"{model}","input":"x","dimensions":{d}}}"#);
        let (s, b) = post_raw(Some("application/json"), raw.into_bytes());
        expect(s, &b, 400);
    }
    // Negative and huge token ids.
    for ids in [json!([-1]), json!([i64::MAX]), json!([[1], [u32::MAX]]), json!([30522])] {
        let (s, b) = post(&json!({"model": model, "input": ids}));
        expect(s, &b, 400);
        assert_eq!(b["error"]["param"], "input");
    }
    let (s, b) = post(&json!({"model": model, "input": [u64::MAX]}));
    expect(s, &b, 400);
    // Integral floats are integers (as in JSON Schema).
    let raw = format!(r#"{{"model":"{model}","input":[101.0, 7592, 102],"dimensions":1e2}}"#);
    let (s, b) = post_raw(Some("application/json"), raw.into_bytes());
    expect(s, &b, 200);
    assert_eq!(b["data"][0]["embedding"].as_array().unwrap().len(), 100);
    // 2,049 inputs.
    let (s, b) = post(&json!({"model": model, "input": vec!["x"; 2049]}));
    expect(s, &b, 400);
    // An input of 1,000,000 characters: refused as too long, or cut with truncate.
    let huge = "a ".repeat(500_000);
    let (s, b) = post(&json!({"model": model, "input": huge}));
    expect(s, &b, 400);
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("This model's maximum context length is 256 tokens"));
    let (s, b) = post(&json!({"model": model, "input": huge, "truncate": true}));
    expect(s, &b, 200);
    assert_eq!(b["usage"]["prompt_tokens"], 256);
    // A body one byte over the limit, and exactly at it.
    let filler = |n: usize| {
        let head = format!(r#"{{"model":"{model}","input":""#);
        let text = "a".repeat(n - head.len() - 2);
        format!("{head}{text}\"}}").into_bytes()
    };
    let (s, b) = post_raw(Some("application/json"), filler(BODY_LIMIT + 1));
    expect(s, &b, 413);
    let (s, b) = post_raw(Some("application/json"), filler(BODY_LIMIT));
    assert_ne!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    // Content types.
    for ct in [Some("text/plain"), None, Some("application/x-www-form-urlencoded")] {
        let (s, b) = post_raw(ct, br#"{"model":"all-MiniLM-L6-v2","input":"x"}"#.to_vec());
        expect(s, &b, 415);
    }
    let (s, b) = post_raw(
        Some("application/json; charset=utf-8"),
        br#"{"model":"all-MiniLM-L6-v2","input":"x"}"#.to_vec(),
    );
    expect(s, &b, 200);
    // Wrong method.
    let (s, _, body) = send(&shared().1, Request::get("/v1/embeddings").body(Body::empty()).unwrap());
    expect(s, &serde_json::from_slice(&body).unwrap(), 405);
    // NUL, a lone surrogate escape, whitespace and control characters only.
    let (s, b) = post(&json!({"model": model, "input": "a\u{0}b"}));
    expect(s, &b, 200);
    let raw = br#"{"model":"all-MiniLM-L6-v2","input":"\ud800"}"#.to_vec();
    let (s, b) = post_raw(Some("application/json"), raw);
    expect(s, &b, 400);
    for text in ["   ", "\t\n\r", "\u{1}\u{2}\u{7f}", "\u{200b}"] {
        let (s, b) = post(&json!({"model": model, "input": [text, "ok"]}));
        expect(s, &b, 200);
        assert_eq!(b["data"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn api_keys_guard_every_route_in_the_routers_table() {
    let app = router(state(&["sk-right"]), &[]);
    let public = openembed_server::auth::PUBLIC_ROUTES;
    let table = routes();
    assert!(table.len() >= 11, "{table:?}");
    for (method, pattern) in &table {
        let (method, pattern) = (method.as_str(), pattern.as_str());
        let path = pattern.replace("{model}", "all-MiniLM-L6-v2");
        let build = |key: Option<&str>| {
            let mut req = Request::builder().method(method.parse::<Method>().unwrap()).uri(&path);
            if let Some(k) = key {
                req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
            }
            req.header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"model":"all-MiniLM-L6-v2","input":"x"}"#))
                .unwrap()
        };
        let (status, _, _) = send(&app, build(None));
        if public.contains(&pattern) {
            assert_eq!(status, StatusCode::OK, "{method} {path} is public");
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without a key");
            assert_eq!(
                send(&app, build(Some("sk-wrong"))).0,
                StatusCode::UNAUTHORIZED,
                "{method} {path}"
            );
            // Past the key check: OpenAI's and Ollama's embed routes and every GET answer this
            // OpenAI embeddings body; the routes of other bodies (rerank, Ollama's legacy route,
            // TEI's and Cohere's) refuse it in their protocol — never with 401.
            let status = send(&app, build(Some("sk-right"))).0;
            let takes_this_body =
                method == "GET" || ["/v1/embeddings", "/embeddings", "/api/embed", "/api/show"].contains(&pattern);
            if takes_this_body {
                assert_eq!(status, StatusCode::OK, "{method} {path} with the key");
            } else {
                assert!(
                    status.is_client_error() && status != StatusCode::UNAUTHORIZED,
                    "{method} {path} with the key: {status}"
                );
            }
        }
    }
    // Unknown routes are guarded too (no route probing without a key).
    let (status, _, _) = send(&app, Request::get("/admin").body(Body::empty()).unwrap());
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn cors_is_off_by_default_and_configurable_by_origin() {
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/embeddings")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = send(&shared().1, preflight("https://app.example"));
    assert!(
        !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        "CORS must be off by default"
    );
    let app = router(state(&[]), &["https://app.example".to_string()]);
    let (_, headers, _) = send(&app, preflight("https://app.example"));
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
    let (_, headers, _) = send(&app, preflight("https://evil.example"));
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}
