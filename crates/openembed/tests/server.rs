//! `openembed serve` end to end, one test per row of the API contract (../shared/docs/API.md):
//! input shapes, encodings, dimensions, limits, every error status, headers, models, auth,
//! metrics, batching under concurrency, 429 under a tiny queue, engine faults and graceful
//! shutdown. Each test starts its own server on a free 127.0.0.1 port.

mod common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn vectors(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect()
}

#[test]
fn every_input_shape_matches_the_reference() {
    let server = Server::start(&["--token-ids", "native"]);
    let lines: Vec<Value> = reference_lines()
        .into_iter()
        .filter(|l| l["tokens"] == l["untruncated_tokens"])
        .collect();
    let texts: Vec<&str> = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();

    // One string.
    let (status, headers, body) = embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": texts[0]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "all-MiniLM-L6-v2");
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    assert_eq!(body["usage"]["prompt_tokens"], lines[0]["tokens"]);
    assert_eq!(body["usage"]["total_tokens"], lines[0]["tokens"]);
    assert!(headers.contains_key("x-request-id"));
    assert!(headers["openai-processing-ms"].to_str().unwrap().parse::<u64>().is_ok());

    // An array of strings: every reference line, in order, mixed lengths.
    let (status, _, body) = embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": texts}));
    assert_eq!(status, 200, "{body}");
    let got = vectors(&body);
    assert_eq!(got.len(), lines.len());
    let mut tokens = 0;
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(body["data"][i]["index"], i);
        let want = floats(&line["embedding"]);
        assert!(cosine(&got[i], &want) >= 0.99999, "line {i}");
        assert!(max_abs_diff(&got[i], &want) <= 1e-4, "line {i}");
        tokens += line["tokens"].as_u64().unwrap();
    }
    assert_eq!(body["usage"]["prompt_tokens"], tokens);

    // One input as token ids, and several (native ids: the model's own vocabulary).
    let ids = lines[2]["input_ids"].clone();
    let (status, _, body) = embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": ids}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert!(cosine(&vectors(&body)[0], &floats(&lines[2]["embedding"])) >= 0.99999);
    let (status, _, body) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": [lines[0]["input_ids"], lines[3]["input_ids"]]}),
    );
    assert_eq!(status, 200, "{body}");
    let got = vectors(&body);
    assert!(cosine(&got[0], &floats(&lines[0]["embedding"])) >= 0.99999);
    assert!(cosine(&got[1], &floats(&lines[3]["embedding"])) >= 0.99999);
    assert_eq!(
        body["usage"]["total_tokens"],
        lines[0]["tokens"].as_u64().unwrap() + lines[3]["tokens"].as_u64().unwrap()
    );

    // The alias route without /v1.
    let resp = client()
        .post(server.at("/embeddings"))
        .json(&json!({"model": "all-MiniLM-L6-v2", "input": "a"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn base64_dimensions_truncation_and_user() {
    let server = Server::start(&["--alias", "text-embedding-3-small=all-MiniLM-L6-v2"]);
    let input = ["The quick brown fox jumps over the lazy dog.", "a"];
    let (_, _, float_body) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": input, "encoding_format": "float"}),
    );
    let (status, _, b64_body) = embed(
        &server,
        json!({"model": "text-embedding-3-small", "input": input, "encoding_format": "base64", "user": "u-1"}),
    );
    assert_eq!(status, 200, "{b64_body}");
    assert_eq!(b64_body["model"], "text-embedding-3-small");
    for (i, want) in vectors(&float_body).iter().enumerate() {
        let text = b64_body["data"][i]["embedding"].as_str().expect("base64 string");
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap();
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(&got, want, "base64 bytes are exactly the float values");
    }
    assert!(!b64_body.to_string().contains("u-1"), "user is never echoed");

    // dimensions: first N values, renormalized.
    let (status, _, body) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": input, "dimensions": 8}),
    );
    assert_eq!(status, 200, "{body}");
    for (full, cut) in vectors(&float_body).iter().zip(vectors(&body)) {
        assert_eq!(cut.len(), 8);
        let norm: f32 = full[..8].iter().map(|x| x * x).sum::<f32>().sqrt();
        let expect: Vec<f32> = full[..8].iter().map(|x| x / norm).collect();
        assert!(max_abs_diff(&cut, &expect) < 1e-6);
    }
    let (status, _, _) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 384}),
    );
    assert_eq!(status, 200);

    // Truncation: over-long lines match the reference when truncate is on.
    for line in reference_lines()
        .iter()
        .filter(|l| l["tokens"] != l["untruncated_tokens"])
    {
        let (status, _, body) = embed(
            &server,
            json!({"model": "all-MiniLM-L6-v2", "input": line["text"], "truncate": true}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["prompt_tokens"], 256);
        assert!(cosine(&vectors(&body)[0], &floats(&line["embedding"])) >= 0.99999);
        let (status, _, body) = embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": line["text"]}));
        assert_eq!(status, 400);
        let expected = format!(
            "This model's maximum context length is 256 tokens, however you requested {0} tokens ({0} in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
            line["untruncated_tokens"]
        );
        // OpenAI's message first (clients match on it), then how to truncate here.
        let message = assert_error(&body)["message"].as_str().unwrap();
        assert!(
            message.starts_with(&expected) && message.contains("--auto-truncate"),
            "{message}"
        );
    }
}

#[test]
fn auto_truncate_flag_sets_the_default() {
    let server = Server::start(&["--auto-truncate"]);
    let long = "word ".repeat(600);
    let (status, _, body) = embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": long}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 256);
    let (status, _, _) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": long, "truncate": false}),
    );
    assert_eq!(status, 400);
}

fn expect_error(server: &Server, body: Value, status: u16, param: Option<&str>) -> Value {
    let (got, _, resp) = embed(server, body.clone());
    assert_eq!(got, status, "{body} -> {resp}");
    let error = assert_error(&resp);
    assert_eq!(error["type"], "invalid_request_error", "{resp}");
    assert_eq!(error["param"].as_str(), param, "{body} -> {resp}");
    resp
}

/// Each malformed `input` gets OpenAI's first sentence and then names the element at fault;
/// the over-long error says how to truncate; the 404 lists the served names and aliases; no
/// message sends a self-hosted user to OpenAI's help pages.
#[test]
fn error_messages_say_what_is_wrong_and_what_to_do() {
    let server = Server::start(&["--alias", "text-embedding-3-small=all-MiniLM-L6-v2"]);
    let m = "all-MiniLM-L6-v2";
    let mut messages = Vec::new();
    for (input, names) in [
        (json!(42), "It is a number"),
        (
            json!(["a", 1]),
            "input[1] is the number 1, but input[0] made this an array of strings",
        ),
        (json!([[]]), "input[0] is an empty array"),
        (json!([[1, "a"]]), "input[0][1] is a string"),
        (
            json!([[1], 2]),
            "input[1] is the number 2, but input[0] made this an array of arrays of token ids",
        ),
        (json!([1, 2.5]), "input[1] is 2.5, not a token id"),
        (json!(["a", null]), "input[1] is null"),
        (json!([true]), "input[0] is a boolean"),
        (json!({"text": "a"}), "It is an object"),
        (json!(["ok", ""]), "input[1] is an empty string"),
    ] {
        let body = expect_error(&server, json!({"model": m, "input": input}), 400, Some("input"));
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with("'$.input' is invalid."), "{input} -> {message}");
        assert!(message.contains(names), "{input} -> {message}");
        messages.push(message);
    }
    let long = "word ".repeat(600);
    let body = expect_error(&server, json!({"model": m, "input": long}), 400, Some("input"));
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("This model's maximum context length is 256 tokens")
            && message.contains("\"truncate\": true")
            && message.contains("--auto-truncate"),
        "{message}"
    );
    messages.push(message);
    let (status, _, body) = embed(&server, json!({"model": "gpt-x", "input": "a"}));
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("Served here: all-MiniLM-L6-v2, text-embedding-3-small"),
        "{message}"
    );
    messages.push(message);
    for field in ["model", "user", "truncate", "prompt_name", "task"] {
        let mut body = json!({"model": m, "input": "a"});
        body[field] = json!([1]);
        let resp = expect_error(&server, body, 400, Some(field));
        let message = resp["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with(&format!("'$.{field}' is invalid. It must be ")),
            "{message}"
        );
        messages.push(message);
    }
    for message in &messages {
        assert!(!message.contains("openai.com"), "{message}");
    }
}

#[test]
fn invalid_requests_get_openai_errors() {
    let server = Server::start(&["--max-request-tokens", "7000"]);
    let m = "all-MiniLM-L6-v2";
    expect_error(&server, json!({"model": m, "input": ""}), 400, Some("input"));
    expect_error(&server, json!({"model": m, "input": []}), 400, Some("input"));
    expect_error(&server, json!({"model": m, "input": ["ok", ""]}), 400, Some("input"));
    expect_error(&server, json!({"model": m, "input": [[]]}), 400, Some("input"));
    expect_error(&server, json!({"model": m, "input": [1, "a"]}), 400, Some("input"));
    expect_error(&server, json!({"model": m, "input": 5}), 400, Some("input"));
    expect_error(&server, json!({"model": m, "input": [0.5]}), 400, Some("input"));
    expect_error(&server, json!({"model": m}), 400, Some("input"));
    let many: Vec<&str> = vec!["x"; 2049];
    expect_error(&server, json!({"model": m, "input": many}), 400, Some("input"));
    let ok: Vec<&str> = vec!["x"; 2048];
    assert_eq!(embed(&server, json!({"model": m, "input": ok})).0, 200);
    // Token ids out of the vocabulary (never a crash).
    for bad in [
        json!([101, 100_256, 102]),
        json!([-1]),
        json!([[5], [9_999_999_999_i64]]),
    ] {
        expect_error(&server, json!({"model": m, "input": bad}), 400, Some("input"));
    }
    let body = expect_error(
        &server,
        json!({"model": m, "input": "x", "encoding_format": "md5"}),
        400,
        Some("encoding_format"),
    );
    assert_eq!(
        body["error"]["message"],
        "Invalid value for 'encoding_format' = md5. Supported values: ['float', 'base64']."
    );
    for d in [json!(0), json!(-3), json!(385), json!(2.5), json!("8")] {
        expect_error(
            &server,
            json!({"model": m, "input": "x", "dimensions": d}),
            400,
            Some("dimensions"),
        );
    }
    let body = expect_error(&server, json!({"model": m, "input": "x", "foo": 1}), 400, None);
    assert_eq!(body["error"]["message"], "Unrecognized request argument supplied: foo");
    expect_error(&server, json!({"model": 7, "input": "x"}), 400, Some("model"));
    expect_error(
        &server,
        json!({"model": m, "input": "x", "truncate": "yes"}),
        400,
        Some("truncate"),
    );
    expect_error(
        &server,
        json!({"model": m, "input": "x", "prompt_name": "query"}),
        400,
        Some("prompt_name"),
    );
    // Over the per-request token limit.
    let texts: Vec<String> = (0..60).map(|_| "word ".repeat(120)).collect();
    let body = expect_error(&server, json!({"model": m, "input": texts}), 400, Some("input"));
    assert_eq!(body["error"]["code"], "max_tokens_per_request");
    // Unknown model.
    let (status, _, body) = embed(&server, json!({"model": "nope", "input": "x"}));
    assert_eq!(status, 404);
    let error = assert_error(&body);
    assert_eq!(error["code"], "model_not_found");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("The model 'nope' does not exist or you do not have access to it.")
            && message.contains("Served here: all-MiniLM-L6-v2")
            && message.contains("--alias"),
        "{message}"
    );

    let c = client();
    // Malformed JSON, a non-object body, wrong content type.
    for raw in ["{\"model\": ", "[1,2]", "null", "\u{1}"] {
        let resp = c
            .post(server.at("/v1/embeddings"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 400, "{raw}");
        assert_error(&resp.json().unwrap());
    }
    let resp = c
        .post(server.at("/v1/embeddings"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert_error(&resp.json().unwrap());
    let resp = c
        .post(server.at("/v1/embeddings"))
        .body(r#"{"model":"m","input":"x"}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 415);
    // Unknown route and wrong method.
    let resp = c.get(server.at("/v1/nothing")).send().unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().unwrap();
    assert_eq!(assert_error(&body)["message"], "Invalid URL (GET /v1/nothing)");
    for (method, path) in [("GET", "/v1/embeddings"), ("DELETE", "/v1/models"), ("POST", "/health")] {
        let resp = c.request(method.parse().unwrap(), server.at(path)).send().unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert!(resp.headers().contains_key("x-request-id"));
        assert_error(&resp.json().unwrap());
    }
}

#[test]
fn body_limit_gives_413() {
    let server = Server::start(&["--max-body-bytes", "1000"]);
    let text = "a".repeat(1000 - r#"{"model":"all-MiniLM-L6-v2","input":""}"#.len());
    let exact = format!(r#"{{"model":"all-MiniLM-L6-v2","input":"{text}"}}"#);
    assert_eq!(exact.len(), 1000);
    let c = client();
    let resp = c
        .post(server.at("/v1/embeddings"))
        .header("content-type", "application/json")
        .body(exact.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let over = exact.replacen("\"a", "\"aa", 1);
    let resp = c
        .post(server.at("/v1/embeddings"))
        .header("content-type", "application/json")
        .body(over)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_error(&resp.json().unwrap());
}

#[test]
fn headers_models_and_operational_routes() {
    let server = Server::start(&["--alias", "text-embedding-3-small=all-MiniLM-L6-v2"]);
    let c = client();
    let resp = c
        .post(server.at("/v1/embeddings"))
        .header("x-request-id", "my-request-42")
        .json(&json!({"model": "all-MiniLM-L6-v2", "input": "hi"}))
        .send()
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "my-request-42");
    let resp = c
        .get(server.at("/v1/nothing"))
        .header("x-request-id", "err-1")
        .send()
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "err-1");

    let list: Value = c.get(server.at("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["all-MiniLM-L6-v2", "text-embedding-3-small"]);
    let one: Value = c
        .get(server.at("/v1/models/text-embedding-3-small"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(one["object"], "model");
    assert_eq!(one["owned_by"], "openembed");
    assert!(one["created"].as_u64().unwrap() > 0);
    assert_eq!(one["dimensions"], 384);
    assert_eq!(one["max_input_tokens"], 256);
    assert_eq!(one["pooling"], "mean");
    assert_eq!(one["normalized"], true);
    let resp = c.get(server.at("/v1/models/nope")).send().unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(assert_error(&resp.json().unwrap())["code"], "model_not_found");

    assert_eq!(c.get(server.at("/health")).send().unwrap().status(), 200);
    assert_eq!(c.get(server.at("/ready")).send().unwrap().status(), 200);
    let metrics = c.get(server.at("/metrics")).send().unwrap().text().unwrap();
    for name in [
        "openembed_requests_total",
        "openembed_request_duration_seconds_bucket",
        "openembed_batch_inputs_bucket",
        "openembed_batch_tokens_bucket",
        "openembed_queue_tokens",
        "openembed_queue_requests",
        "openembed_tokens_embedded_total",
        "openembed_inference_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // Every family that is shown has its HELP and TYPE lines.
    let families: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    assert!(families.len() >= 8, "{metrics}");
    for family in families {
        assert!(metrics.contains(&format!("# HELP {family} ")), "no HELP for {family}");
        assert!(metrics.contains(&format!("# TYPE {family} ")), "no TYPE for {family}");
    }
    let doc: Value = c.get(server.at("/openapi.json")).send().unwrap().json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from /openapi.json");
    }
    assert!(doc["components"]["schemas"]["EmbeddingsRequest"].is_object());
}

/// Every route the server has, with a method it accepts.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/embeddings"),
    ("POST", "/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/all-MiniLM-L6-v2"),
    ("GET", "/openapi.json"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
];

#[test]
fn api_keys_protect_every_route_but_health_ready_metrics() {
    let dir = std::env::temp_dir().join(format!("openembed-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("keys");
    std::fs::write(&key_file, "# keys\nsk-from-file\n").unwrap();
    // Keys from the environment (what --api-key reads when not given) and from the file both count.
    let server = Server::start_with_env(
        &["--api-key-file", key_file.to_str().unwrap()],
        &[("OPENEMBED_API_KEYS", "sk-env-1,sk-env-2")],
    );
    let c = client();
    let body = json!({"model": "all-MiniLM-L6-v2", "input": "x"});
    for (method, path) in ROUTES.iter().copied().chain([("GET", "/no/such/route")]) {
        let public = ["/health", "/ready", "/metrics"].contains(&path);
        let send = |key: Option<&str>| {
            let mut req = c.request(method.parse().unwrap(), server.at(path));
            if method == "POST" {
                req = req.json(&body);
            }
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            req.send().unwrap()
        };
        let resp = send(None);
        if public {
            assert_eq!(resp.status(), 200, "{path} is public");
            continue;
        }
        assert_eq!(resp.status(), 401, "{method} {path} without a key");
        let err: Value = resp.json().unwrap();
        assert_eq!(assert_error(&err)["code"], "invalid_api_key");
        assert!(err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You didn't provide an API key."));
        assert_eq!(send(Some("sk-wrong")).status(), 401, "{path} with a wrong key");
        for key in ["sk-from-file", "sk-env-1", "sk-env-2"] {
            assert_ne!(send(Some(key)).status(), 401, "{path} with key {key}");
        }
    }
    let (_, logs) = server.wait_exit(Duration::ZERO);
    for key in ["sk-from-file", "sk-env-1", "sk-wrong"] {
        assert!(!logs.contains(key), "a key reached the logs");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn concurrent_requests_are_batched_and_equal_to_alone() {
    let server = Server::start(&[]);
    let texts: Vec<String> = reference_lines()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .take(12)
        .collect();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| vectors(&embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": t})).2).remove(0))
        .collect();
    // A large request keeps the engine busy while the small ones queue up together.
    let big: Vec<String> = (0..64).map(|i| format!("{} {i}", "filler text ".repeat(40))).collect();
    std::thread::scope(|s| {
        let server = &server;
        let big = &big;
        s.spawn(move || assert_eq!(embed(server, json!({"model": "all-MiniLM-L6-v2", "input": big})).0, 200));
        std::thread::sleep(Duration::from_millis(30));
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                s.spawn(move || vectors(&embed(server, json!({"model": "all-MiniLM-L6-v2", "input": t})).2).remove(0))
            })
            .collect();
        for (h, want) in handles.into_iter().zip(&alone) {
            let got = h.join().unwrap();
            assert!(max_abs_diff(&got, want) <= 1e-5, "batched differs from alone");
        }
    });
    let single = server.metric("openembed_batch_requests_bucket{model=\"all-MiniLM-L6-v2\",le=\"1\"}");
    let total = server.metric("openembed_batch_requests_count");
    assert!(
        total > single,
        "no batch held more than one request ({single} of {total} had one)"
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&["--max-queued-tokens", "64", "--max-batch-tokens", "256"]);
    let input: Vec<String> = (0..32)
        .map(|i| format!("{} {i}", "queue pressure ".repeat(30)))
        .collect();
    let results: Vec<(u16, Option<String>, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let server = &server;
                let input = &input;
                s.spawn(move || {
                    let (status, headers, body) = embed(server, json!({"model": "all-MiniLM-L6-v2", "input": input}));
                    (
                        status,
                        headers.get("retry-after").map(|v| v.to_str().unwrap().to_string()),
                        body,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let limited: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(!limited.is_empty(), "no 429 under a tiny queue");
    assert!(results.iter().all(|r| r.0 == 200 || r.0 == 429));
    for (_, retry, body) in limited {
        assert!(retry.as_deref().unwrap().parse::<u64>().unwrap() >= 1);
        let error = assert_error(body);
        assert_eq!(error["type"], "requests");
        assert_eq!(error["code"], "rate_limit_exceeded");
    }
}

#[test]
fn an_engine_failure_in_a_shared_batch_fails_only_its_own_request() {
    // A batch holding an input of exactly 9 tokens panics (test hook, compiled into test builds only).
    let server = Server::start_with_env(&["--token-ids", "native"], &[("OPENEMBED_FAULT_PANIC_TOKENS", "9")]);
    let model = "all-MiniLM-L6-v2";
    // Alone: the request fails with OpenAI's error shape and the server goes on.
    let (status, _, body) = embed(&server, json!({"model": model, "input": [1, 2, 3, 4, 5, 6, 7, 8, 9]}));
    assert_eq!(status, 500);
    assert_eq!(assert_error(&body)["type"], "server_error");
    // Shared: a large request keeps the engine busy while a bad and a good one queue up, so a
    // later batch (between the large one's layers, or after it) holds both; only the bad one may
    // fail. The two small requests arrive over separate connections, so once in a while a layer
    // boundary falls between them and each runs alone; the scenario is then repeated (at most 5
    // times) until they have shared a batch, and every round checks both answers.
    let big: Vec<String> = (0..48).map(|i| format!("{} {i}", "busy engine ".repeat(60))).collect();
    for _round in 0..5 {
        std::thread::scope(|s| {
            let server = &server;
            let big = &big;
            let large = s.spawn(move || embed(server, json!({"model": model, "input": big})).0);
            std::thread::sleep(Duration::from_millis(150));
            let bad = s.spawn(move || {
                embed(
                    server,
                    json!({"model": model, "input": [[101, 2, 3, 4, 5, 6, 7, 8, 102]]}),
                )
            });
            let good = s.spawn(move || embed(server, json!({"model": model, "input": "still serving"})));
            let (status, _, body) = bad.join().unwrap();
            assert_eq!(status, 500, "{body}");
            assert_eq!(assert_error(&body)["type"], "server_error");
            let (status, _, body) = good.join().unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(large.join().unwrap(), 200);
        });
        if server.metric("openembed_batch_retries_total") >= 1.0 {
            break;
        }
    }
    assert!(
        server.metric("openembed_batch_retries_total") >= 1.0,
        "the failing input never shared a batch with another request in 5 rounds"
    );
    assert!(server.metric("openembed_engine_panics_total") >= 2.0);
}

#[test]
fn a_failure_between_the_layers_of_a_bulk_batch_fails_only_its_own_request() {
    // A short request that arrives while a bulk batch runs is served between its layers, on
    // the same compute threads, inside the bulk batch's forward pass. When that nested batch
    // fails, only the short request may fail: the bulk batch resumes and its vectors are right.
    let server = Server::start_with_env(&["--token-ids", "native"], &[("OPENEMBED_FAULT_PANIC_TOKENS", "9")]);
    let model = "all-MiniLM-L6-v2";
    let big: Vec<String> = (0..48).map(|i| format!("{} {i}", "bulk work ".repeat(70))).collect();
    let (status, _, alone) = embed(&server, json!({"model": model, "input": big[..2]}));
    assert_eq!(status, 200, "{alone}");
    let nested = || server.metric("openembed_batches_between_layers_total");
    // Repeated (at most 5 rounds) until the bad request has run between the layers, in case
    // the bulk batch ended before it arrived on a slow machine.
    for _round in 0..5 {
        let before = nested();
        std::thread::scope(|s| {
            let (server, big) = (&server, &big);
            let large = s.spawn(move || embed(server, json!({"model": model, "input": big})));
            std::thread::sleep(Duration::from_millis(150));
            let (status, _, body) = embed(
                server,
                json!({"model": model, "input": [[101, 2, 3, 4, 5, 6, 7, 8, 102]]}),
            );
            assert_eq!(status, 500, "{body}");
            assert_eq!(assert_error(&body)["type"], "server_error");
            let (status, _, body) = large.join().unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                vectors(&body)[..2],
                vectors(&alone)[..],
                "bulk vectors after a failed nested batch"
            );
        });
        if nested() > before {
            break;
        }
    }
    assert!(
        nested() >= 1.0,
        "the failing request never ran between the layers of the bulk batch in 5 rounds"
    );
    assert!(server.metric("openembed_engine_panics_total") >= 1.0);
    // The server goes on serving.
    assert_eq!(embed(&server, json!({"model": model, "input": "still serving"})).0, 200);
}

#[test]
fn two_models_share_one_pool_of_compute_threads() {
    let dir = model_dir();
    let a = format!("{}=first", dir.display());
    let b = format!("{}=second", dir.display());
    let server = Server::start(&["--model", &a, "--model", &b]); // --threads 2, as every test server
    let pid = server.pid();
    // CPU time (ticks) and name of every thread of the server.
    let threads = || -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_string();
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            let ticks = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
            out.push((format!("{name}#{}", task.file_name().to_string_lossy()), ticks));
        }
        out
    };
    let before = threads();
    let texts: Vec<String> = (0..32)
        .map(|i| format!("{} {i}", "load on both models ".repeat(12)))
        .collect();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for model in ["first", "second", "first", "second"] {
            let (server, texts) = (&server, &texts);
            s.spawn(move || {
                for _ in 0..4 {
                    assert_eq!(embed(server, json!({"model": model, "input": texts})).0, 200);
                }
            });
        }
    });
    let wall_ticks = started.elapsed().as_secs_f64() * 100.0;
    let after = threads();
    let compute: Vec<&(String, u64)> = after.iter().filter(|(n, _)| n.starts_with("oe-compute")).collect();
    assert_eq!(
        compute.len(),
        2,
        "one pool of 2 compute threads for both models: {after:?}"
    );
    // Busy threads (over a fifth of the run on the CPU): compute threads, plus the async
    // runtime's for HTTP and JSON, never a second pool.
    let busy: Vec<&String> = after
        .iter()
        .filter(|(name, ticks)| {
            let was = before.iter().find(|(n, _)| n == name).map_or(0, |(_, t)| *t);
            (ticks - was) as f64 > 0.2 * wall_ticks
        })
        .map(|(name, _)| name)
        .collect();
    let computing = busy.iter().filter(|n| !n.starts_with("openembed-http")).count();
    assert!(computing <= 2, "more than 2 busy compute threads: {busy:?}");
}

#[test]
fn sigterm_finishes_admitted_requests_then_exits_zero() {
    let server = Server::start(&["--max-batch-tokens", "512"]);
    let big: Vec<String> = (0..48)
        .map(|i| format!("{} {i}", "draining work ".repeat(60)))
        .collect();
    std::thread::scope(|s| {
        let server = &server;
        let big = &big;
        let admitted: Vec<_> = (0..2)
            .map(|_| s.spawn(move || embed(server, json!({"model": "all-MiniLM-L6-v2", "input": big})).0))
            .collect();
        // Wait until both requests are queued or running.
        let start = std::time::Instant::now();
        while server.metric("openembed_queue_requests") < 2.0 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.signal("TERM");
        std::thread::sleep(Duration::from_millis(100));
        let c = client();
        let ready = c.get(server.at("/ready")).send().unwrap();
        assert_eq!(ready.status(), 503);
        let (status, headers, body) = embed(server, json!({"model": "all-MiniLM-L6-v2", "input": "late"}));
        assert_eq!(status, 503, "{body}");
        assert!(headers.contains_key("retry-after"));
        assert_eq!(assert_error(&body)["type"], "server_error");
        for h in admitted {
            assert_eq!(h.join().unwrap(), 200, "an admitted request did not finish");
        }
    });
    let (code, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0));
}

#[test]
fn a_disconnected_client_has_its_queued_inputs_dropped() {
    let server = Server::start(&["--max-batch-tokens", "256"]);
    let inputs: Vec<String> = (0..200)
        .map(|i| format!("{} {i}", "abandoned work ".repeat(40)))
        .collect();
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = impatient
        .post(server.at("/v1/embeddings"))
        .json(&json!({"model": "all-MiniLM-L6-v2", "input": inputs}))
        .send();
    assert!(sent.is_err(), "the request should time out on the client");
    let start = std::time::Instant::now();
    while server.metric("openembed_queue_tokens") > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "queued inputs were not dropped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let embedded = server.metric("openembed_tokens_embedded_total");
    assert!(
        embedded < 200.0 * 80.0 / 2.0,
        "most of the abandoned request ran anyway ({embedded} tokens)"
    );
    assert_eq!(
        embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": "next"})).0,
        200
    );
}

/// A Hugging Face hub cache (as huggingface_hub lays it out) holding the default model.
fn fake_hub_cache(home: &std::path::Path) {
    let repo = home.join("hub/models--sentence-transformers--all-MiniLM-L6-v2");
    let snapshot = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(snapshot.join("1_Pooling")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    link_model_files(&snapshot);
}

/// Links the default model's files into `dir` (which must hold a `1_Pooling` folder).
fn link_model_files(dir: &std::path::Path) {
    let src = model_dir();
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        let _ = std::fs::remove_file(dir.join(file));
        std::os::unix::fs::symlink(src.join(file).canonicalize().unwrap(), dir.join(file)).unwrap();
    }
}

/// Starts `openembed serve --model MODEL` expecting it to fail at start-up (exit code 1);
/// returns its stderr.
fn start_fails(model: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_openembed"))
        .args(["serve", "--port", "0", "--model", model])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn hub_ids_resolve_from_the_cache_offline() {
    let home = std::env::temp_dir().join(format!("openembed-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    fake_hub_cache(&home);
    let home_str = home.to_str().unwrap();
    let env = [("HF_HOME", home_str), ("HF_HUB_OFFLINE", "1")];
    let server = Server::start_with_env(&["--model", "sentence-transformers/all-MiniLM-L6-v2"], &env);
    let (status, _, body) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": "This is an example sentence"}),
    );
    assert_eq!(status, 200, "{body}");
    let want = floats(&reference_lines()[0]["embedding"]);
    assert!(cosine(&vectors(&body)[0], &want) >= 0.99999);
    drop(server);

    // Offline and not cached: a clear error at start-up, exit code 1.
    let stderr = start_fails("sentence-transformers/not-cached-model", &env);
    assert!(
        stderr.contains("not-cached-model") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn token_ids_are_tiktoken_ids_by_default() {
    let model = format!("{}=all-MiniLM-L6-v2", model_dir().display());
    let server = Server::start(&["--model", &model, "--token-ids", "all-MiniLM-L6-v2=cl100k_base"]);
    let bpe = tiktoken_rs::cl100k_base().unwrap();
    let lines: Vec<Value> = reference_lines()
        .into_iter()
        .filter(|l| l["tokens"] == l["untruncated_tokens"])
        .collect();
    let ids: Vec<Vec<u32>> = lines
        .iter()
        .map(|l| bpe.encode_ordinary(l["text"].as_str().unwrap()))
        .collect();
    let (status, _, body) = embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": ids}));
    assert_eq!(status, 200, "{body}");
    let mut tokens = 0;
    for (got, line) in vectors(&body).iter().zip(&lines) {
        assert!(cosine(got, &floats(&line["embedding"])) >= 0.99999, "{}", line["text"]);
        tokens += line["tokens"].as_u64().unwrap();
    }
    assert_eq!(
        body["usage"]["prompt_tokens"], tokens,
        "usage counts the model's tokens"
    );
    // One flat array is one input.
    let (status, _, body) = embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": ids[0]}));
    assert_eq!(status, 200);
    assert!(cosine(&vectors(&body)[0], &floats(&lines[0]["embedding"])) >= 0.99999);
    // Ids outside the encoding: 400 on input, never a crash.
    for bad in [json!([100_256]), json!([[1, 2], [-3]]), json!([300_000])] {
        let (status, _, body) = embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": bad}));
        assert_eq!(status, 400, "{body}");
        assert_eq!(assert_error(&body)["param"], "input");
    }
    let model: Value = client()
        .get(server.at("/v1/models/all-MiniLM-L6-v2"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(model["token_ids"], "cl100k_base");
    // The dense-layer kernel this server's dtype runs here (float32 by default).
    let want = openembed_engine::kernels::gemm_kernel(openembed_engine::DType::Float32);
    assert_eq!(model["kernels"], want);
    // A long text's ids: 400 without truncation, 200 with it.
    let long = bpe.encode_ordinary(&"a long document sentence ".repeat(200));
    assert_eq!(
        embed(&server, json!({"model": "all-MiniLM-L6-v2", "input": long})).0,
        400
    );
    let (status, _, body) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": long, "truncate": true}),
    );
    assert_eq!(status, 200);
    assert_eq!(body["usage"]["total_tokens"], 256);
}

/// The default model with sentence-transformers prompts added (files linked, config written).
fn model_with_prompts(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    link_model_files(dir);
    std::fs::write(
        dir.join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": null}"#,
    )
    .unwrap();
}

#[test]
fn prompts_are_prepended_and_counted() {
    let dir = std::env::temp_dir().join(format!("openembed-prompts-{}", std::process::id()));
    model_with_prompts(&dir);
    let spec = format!("{}=m", dir.display());
    let server = Server::start(&["--model", &spec, "--default-prompt-name", "passage"]);
    let one = |body: Value| {
        let (status, _, body) = embed(&server, body);
        assert_eq!(status, 200, "{body}");
        (
            vectors(&body).remove(0),
            body["usage"]["prompt_tokens"].as_u64().unwrap(),
        )
    };
    let (with_query, query_tokens) = one(json!({"model": "m", "input": "hello world", "prompt_name": "query"}));
    let server_plain = Server::start(&["--model", &spec]);
    let (spelled, spelled_tokens) = {
        let (status, _, body) = embed(&server_plain, json!({"model": "m", "input": "query: hello world"}));
        assert_eq!(status, 200);
        (
            vectors(&body).remove(0),
            body["usage"]["prompt_tokens"].as_u64().unwrap(),
        )
    };
    assert!(max_abs_diff(&with_query, &spelled) < 1e-6);
    assert_eq!(query_tokens, spelled_tokens, "usage counts the prompt");
    // --default-prompt-name applies when the request names none.
    let (default, _) = one(json!({"model": "m", "input": "hello world"}));
    let (status, _, body) = embed(&server_plain, json!({"model": "m", "input": "passage: hello world"}));
    assert_eq!(status, 200);
    assert!(max_abs_diff(&default, &vectors(&body)[0]) < 1e-6);
    let model: Value = client().get(server.at("/v1/models/m")).send().unwrap().json().unwrap();
    assert_eq!(model["prompts"], json!(["passage", "query"]));
    let (status, _, body) = embed(&server, json!({"model": "m", "input": "x", "prompt_name": "nope"}));
    assert_eq!(status, 400);
    assert_eq!(assert_error(&body)["param"], "prompt_name");
    drop((server, server_plain));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn long_input_windows_average_the_windows() {
    let server = Server::start(&[
        "--token-ids",
        "native",
        "--long-input-windows",
        "--window-overlap",
        "32",
    ]);
    let ids: Vec<u32> = (0..300).map(|i| 2000 + (i * 37) % 5000).collect();
    let (status, _, body) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": [ids.clone(), ids[..10].to_vec()]}),
    );
    assert_eq!(status, 200, "{body}");
    let got = vectors(&body);
    assert_eq!(
        body["usage"]["prompt_tokens"],
        256 + 76 + 10,
        "usage counts every window token"
    );
    // Windows of 256 ids sharing 32: [0, 256) and [224, 300), weighted by their lengths.
    let (_, _, parts) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": [ids[..256].to_vec(), ids[224..].to_vec(), ids[..10].to_vec()]}),
    );
    let parts = vectors(&parts);
    let mut want: Vec<f32> = parts[0]
        .iter()
        .zip(&parts[1])
        .map(|(a, b)| a * 256.0 + b * 76.0)
        .collect();
    let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
    want.iter_mut().for_each(|x| *x /= norm);
    assert!(max_abs_diff(&got[0], &want) < 1e-5);
    assert!(
        max_abs_diff(&got[1], &parts[2]) < 1e-6,
        "inputs within the limit are untouched"
    );
    // Text over the limit: answered, usage over the limit.
    let (status, _, body) = embed(
        &server,
        json!({"model": "all-MiniLM-L6-v2", "input": "many words here ".repeat(200)}),
    );
    assert_eq!(status, 200);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 600);
}

#[test]
fn an_offline_hub_cache_missing_a_module_file_fails_naming_it() {
    let home = std::env::temp_dir().join(format!("openembed-hf-strict-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    fake_hub_cache(&home);
    let snapshot = home.join("hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/0123456789abcdef");
    std::fs::remove_file(snapshot.join("1_Pooling/config.json")).unwrap();
    let home_str = home.to_str().unwrap();
    let stderr = start_fails(
        "sentence-transformers/all-MiniLM-L6-v2",
        &[("HF_HOME", home_str), ("HF_HUB_OFFLINE", "1")],
    );
    assert!(stderr.contains("1_Pooling/config.json"), "{stderr}");
    std::fs::remove_dir_all(home).unwrap();
}

/// Ollama's routes answer bad requests in Ollama's shape, `{"error": "…"}` (a string, not
/// OpenAI's object), with the right status; an empty input list gets no vectors, as in Ollama.
#[test]
fn ollama_routes_answer_errors_in_ollamas_shape() {
    let server = Server::start(&[]);
    let c = client();
    let post = |path: &str, content_type: &str, body: &str| common::post_raw(&server, path, content_type, body);
    let long = "word ".repeat(600);
    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("/api/embed", "application/json", "{\"model\": ".into(), 400),
        (
            "/api/embed",
            "application/json",
            r#"{"model": "all-MiniLM-L6-v2", "input": 5}"#.into(),
            400,
        ),
        ("/api/embed", "application/json", r#"{"input": "x"}"#.into(), 400),
        (
            "/api/embed",
            "application/json",
            r#"{"model": "nope", "input": "x"}"#.into(),
            404,
        ),
        (
            "/api/embed",
            "text/plain",
            r#"{"model": "all-MiniLM-L6-v2", "input": "x"}"#.into(),
            415,
        ),
        (
            "/api/embed",
            "application/json",
            json!({"model": "all-MiniLM-L6-v2", "input": long, "truncate": false}).to_string(),
            400,
        ),
        (
            "/api/embed",
            "application/json",
            json!({"model": "all-MiniLM-L6-v2", "input": vec!["x"; 2049]}).to_string(),
            400,
        ),
        (
            "/api/embeddings",
            "application/json",
            r#"{"model": "all-MiniLM-L6-v2"}"#.into(),
            400,
        ),
        (
            "/api/embeddings",
            "application/json",
            r#"{"model": "nope:latest", "prompt": "x"}"#.into(),
            404,
        ),
        ("/api/show", "application/json", r#"{"model": "nope"}"#.into(), 404),
    ];
    for (path, content_type, body, want) in &cases {
        let (status, reply) = post(path, content_type, body);
        assert_eq!(status, *want, "{path} {body:.80}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|m| !m.is_empty()) && reply.as_object().unwrap().len() == 1,
            "{path} {body:.80}: not Ollama's error shape: {reply}"
        );
    }
    // Wrong method: the router's 405, reshaped too.
    let resp = c.get(server.at("/api/embed")).send().unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.json::<Value>().unwrap()["error"].is_string());
    // Over-long inputs are cut by default (Ollama's truncate default), empty lists embed nothing.
    let (status, reply) = post(
        "/api/embed",
        "application/json",
        &json!({"model": "all-MiniLM-L6-v2", "input": long}).to_string(),
    );
    assert_eq!(
        (status, reply["embeddings"][0].as_array().map(Vec::len)),
        (200, Some(384))
    );
    let (status, reply) = post(
        "/api/embed",
        "application/json",
        r#"{"model": "all-MiniLM-L6-v2", "input": []}"#,
    );
    assert_eq!((status, reply["embeddings"].as_array().map(Vec::len)), (200, Some(0)));
}

/// TEI's routes answer bad requests in TEI's shape, `{"error", "error_type"}`, with TEI's
/// statuses (422 invalid, 400 empty or an output no served model has), and serve the first model
/// of the kind they need.
#[test]
fn tei_routes_answer_errors_in_teis_shape() {
    let fixtures = root().join("../shared/fixtures/tiny");
    let default = format!("{}=all-MiniLM-L6-v2", common::model_dir().display());
    let classifier = format!("{}=sentiment", fixtures.join("classifier_bert").display());
    let server = Server::start(&["--model", &default, "--model", &classifier]);
    let c = client();
    let post = |path: &str, content_type: &str, body: &str| common::post_raw(&server, path, content_type, body);
    let long = "word ".repeat(600);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("/embed", "application/json", "{\"inputs\": ".into(), 422, "Validation"),
        (
            "/embed",
            "application/json",
            r#"{"inputs": 5}"#.into(),
            422,
            "Validation",
        ),
        ("/embed", "application/json", r#"{"inputs": []}"#.into(), 400, "Empty"),
        (
            "/embed",
            "application/json",
            r#"{"inputs": "x", "model": "nope"}"#.into(),
            404,
            "Validation",
        ),
        (
            "/embed",
            "application/json",
            r#"{"inputs": "x", "model": "sentiment"}"#.into(),
            400,
            "Validation",
        ),
        ("/embed", "text/plain", r#"{"inputs": "x"}"#.into(), 415, "Validation"),
        (
            "/embed",
            "application/json",
            json!({"inputs": long}).to_string(),
            422,
            "Validation",
        ),
        (
            "/embed",
            "application/json",
            json!({"inputs": vec!["x"; 2049]}).to_string(),
            422,
            "Validation",
        ),
        (
            "/embed",
            "application/json",
            r#"{"inputs": "x", "prompt_name": "nope"}"#.into(),
            422,
            "Validation",
        ),
        (
            "/embed",
            "application/json",
            r#"{"inputs": "x", "dimensions": 0}"#.into(),
            422,
            "Validation",
        ),
        ("/predict", "application/json", r#"{"inputs": []}"#.into(), 400, "Empty"),
        (
            "/predict",
            "application/json",
            r#"{"inputs": ["a", "b", "c"]}"#.into(),
            422,
            "Validation",
        ),
        (
            "/predict",
            "application/json",
            r#"{"inputs": [["a"], []]}"#.into(),
            422,
            "Validation",
        ),
        (
            "/predict",
            "application/json",
            r#"{"inputs": "x", "model": "all-MiniLM-L6-v2"}"#.into(),
            400,
            "Validation",
        ),
        (
            "/predict",
            "application/json",
            json!({"inputs": vec![long.clone(); 1]}).to_string(),
            422,
            "Validation",
        ),
        (
            "/rerank",
            "application/json",
            r#"{"query": "q", "texts": ["d"]}"#.into(),
            400,
            "Validation",
        ),
        (
            "/embed_sparse",
            "application/json",
            r#"{"inputs": "x", "model": "all-MiniLM-L6-v2"}"#.into(),
            400,
            "Validation",
        ),
        (
            "/similarity",
            "application/json",
            r#"{"inputs": {"source_sentence": "a", "sentences": []}}"#.into(),
            400,
            "Empty",
        ),
        (
            "/tokenize",
            "application/json",
            r#"{"inputs": []}"#.into(),
            400,
            "Empty",
        ),
        (
            "/tokenize",
            "application/json",
            r#"{"inputs": "x", "prompt_name": "nope"}"#.into(),
            422,
            "Validation",
        ),
        (
            "/decode",
            "application/json",
            r#"{"ids": [999999]}"#.into(),
            422,
            "Validation",
        ),
        ("/decode", "application/json", r#"{"ids": []}"#.into(), 400, "Empty"),
        ("/", "application/json", r#"{"inputs": 5}"#.into(), 422, "Validation"),
        (
            "/",
            "application/json",
            r#"{"inputs": "x", "model": "sentiment", "parameters": {"function_to_apply": "tanh"}}"#.into(),
            422,
            "Validation",
        ),
    ];
    for (path, content_type, body, want, kind) in &cases {
        let (status, reply) = post(path, content_type, body);
        assert_eq!(status, *want, "{path} {body:.80}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|m| !m.is_empty())
                && reply["error_type"] == json!(kind)
                && reply.as_object().unwrap().len() == 2,
            "{path} {body:.80}: not TEI's error shape: {reply}"
        );
    }
    // Wrong method: the router's 405, reshaped too.
    let resp = c.get(server.at("/embed")).send().unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.json::<Value>().unwrap()["error_type"].is_string());

    // Each route serves the first model of its kind; `/` follows the first model's kind.
    let (status, vectors) = post("/embed", "application/json", r#"{"inputs": ["a b", "c"]}"#);
    assert_eq!((status, vectors.as_array().map(Vec::len)), (200, Some(2)));
    let (_, same) = post("/", "application/json", r#"{"inputs": ["a b", "c"]}"#);
    assert_eq!(same, vectors);
    let (_, cut) = post(
        "/embed",
        "application/json",
        &json!({"inputs": long, "truncate": true}).to_string(),
    );
    assert_eq!(cut[0].as_array().map(Vec::len), Some(384));
    let (status, labels) = post("/predict", "application/json", r#"{"inputs": "good"}"#);
    assert_eq!(status, 200, "{labels}");
    let labels = labels.as_array().unwrap();
    assert_eq!(labels.len(), 3, "one text: every label, best first");
    assert!(labels
        .windows(2)
        .all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    let total: f64 = labels.iter().map(|l| l["score"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-5, "softmax scores sum to 1: {total}");
    let (_, batch) = post("/predict", "application/json", r#"{"inputs": [["good"], ["a", "b"]]}"#);
    assert_eq!(batch.as_array().map(Vec::len), Some(2));
    let (_, top) = post(
        "/",
        "application/json",
        r#"{"inputs": "good", "model": "sentiment", "parameters": {"top_k": 1}}"#,
    );
    assert_eq!(top, json!([[labels[0]]]), "the Inference API's shape");
    let (_, tokens) = post("/tokenize", "application/json", r#"{"inputs": "Hello naïve world"}"#);
    let tokens = tokens[0].as_array().unwrap();
    assert_eq!(tokens.first().unwrap()["special"], json!(true));
    assert_eq!(tokens[2]["text"], json!("naïve"));
    assert_eq!(
        (tokens[2]["start"].as_u64(), tokens[2]["stop"].as_u64()),
        (Some(6), Some(12))
    );
    let ids: Vec<Value> = tokens.iter().map(|t| t["id"].clone()).collect();
    let (_, text) = post("/decode", "application/json", &json!({"ids": ids}).to_string());
    assert_eq!(text, json!(["hello naive world"]));
    // /embed_all: one row per token, whose mean (MiniLM's pooling), normalized, is /embed's vector.
    let (status, rows) = post("/embed_all", "application/json", r#"{"inputs": ["hello world", "a"]}"#);
    assert_eq!(status, 200, "{rows}");
    let (_, vectors) = post("/embed", "application/json", r#"{"inputs": ["hello world", "a"]}"#);
    for (input, want) in [(0, 4), (1, 3)] {
        let rows = rows[input].as_array().unwrap();
        assert_eq!(rows.len(), want, "[CLS] … [SEP]");
        let mut mean = vec![0.0f64; 384];
        for row in rows {
            for (m, x) in mean.iter_mut().zip(row.as_array().unwrap()) {
                *m += x.as_f64().unwrap() / rows.len() as f64;
            }
        }
        let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
        let vector = vectors[input].as_array().unwrap();
        for (m, v) in mean.iter().zip(vector) {
            assert!((m / norm - v.as_f64().unwrap()).abs() < 1e-5);
        }
    }
    let info: Value = c.get(server.at("/info")).send().unwrap().json().unwrap();
    assert_eq!(info["model_id"], json!("all-MiniLM-L6-v2"));
    assert_eq!(info["model_type"]["embedding"]["pooling"], json!("mean"));
    assert_eq!(info["max_input_length"], json!(256));
}

/// Cohere's embed routes answer bad requests in Cohere's shape, `{"message": "…"}`.
#[test]
fn cohere_routes_answer_errors_in_coheres_shape() {
    let server = Server::start(&[]);
    let post = |path: &str, body: &str| common::post_raw(&server, path, "application/json", body);
    let m = "all-MiniLM-L6-v2";
    let long = "word ".repeat(600);
    let cases: Vec<(&str, String, u16)> = vec![
        ("/v2/embed", "{\"model\": ".into(), 400),
        (
            "/v2/embed",
            json!({"model": m, "texts": 5, "input_type": "search_query"}).to_string(),
            400,
        ),
        (
            "/v2/embed",
            json!({"model": m, "texts": [], "input_type": "search_query"}).to_string(),
            400,
        ),
        ("/v2/embed", json!({"model": m, "texts": ["x"]}).to_string(), 400),
        (
            "/v2/embed",
            json!({"model": "nope", "texts": ["x"], "input_type": "search_query"}).to_string(),
            404,
        ),
        (
            "/v2/embed",
            json!({"model": m, "texts": vec!["x"; 2049], "input_type": "search_query"}).to_string(),
            400,
        ),
        (
            "/v2/embed",
            json!({"model": m, "texts": [long], "input_type": "search_query", "truncate": "NONE"}).to_string(),
            400,
        ),
        (
            "/v2/embed",
            json!({"model": m, "texts": ["x"], "input_type": "search_query", "truncate": "MIDDLE"}).to_string(),
            400,
        ),
        (
            "/v2/embed",
            json!({"model": m, "texts": ["x"], "input_type": "search_query", "embedding_types": ["int4"]}).to_string(),
            400,
        ),
        (
            "/v2/embed",
            json!({"model": m, "texts": ["x"], "inputs": [], "input_type": "search_query"}).to_string(),
            400,
        ),
        (
            "/v2/embed",
            json!({"model": m, "inputs": [{"content": [{"type": "image_url"}]}], "input_type": "search_query"})
                .to_string(),
            400,
        ),
        (
            "/v1/embed",
            json!({"model": m, "texts": ["x"], "output_dimension": 0}).to_string(),
            400,
        ),
    ];
    for (path, body, want) in &cases {
        let (status, reply) = post(path, body);
        assert_eq!(status, *want, "{path} {body:.80}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()) && reply.as_object().unwrap().len() == 1,
            "{path} {body:.80}: not Cohere's error shape: {reply}"
        );
    }
    // Over-long texts are cut by default (truncate END), and v2 inputs of text parts embed.
    let (status, reply) = post(
        "/v2/embed",
        &json!({"model": m, "texts": [long], "input_type": "search_document", "embedding_types": ["float", "ubinary"]})
            .to_string(),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["embeddings"]["float"][0].as_array().map(Vec::len), Some(384));
    assert_eq!(reply["embeddings"]["ubinary"][0].as_array().map(Vec::len), Some(48));
    assert!(reply["meta"]["billed_units"]["input_tokens"].as_u64() >= Some(256));
    let (_, parts) = post(
        "/v2/embed",
        &json!({"model": m, "inputs": [{"content": [{"type": "text", "text": "hello"}]}], "input_type": "search_query"}).to_string(),
    );
    let (_, texts) = post(
        "/v2/embed",
        &json!({"model": m, "texts": ["hello"], "input_type": "search_query"}).to_string(),
    );
    assert_eq!(parts["embeddings"], texts["embeddings"]);
}

/// TEI's `/embed_sparse` (and `POST /` of a SPLADE model) answers the non-zero vocabulary
/// weights sentence-transformers' SparseEncoder gives; dense routes refuse a sparse model.
#[test]
fn tei_embed_sparse_equals_the_sparse_encoder() {
    let dir = root().join("../shared/fixtures/tiny/splade");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let spec = format!("{}=splade", dir.display());
    let server = Server::start(&["--model", &spec, "--auto-truncate"]);
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let body = json!({"inputs": texts}).to_string();
    let (status, got) = common::post_raw(&server, "/embed_sparse", "application/json", &body);
    assert_eq!(status, 200, "{got}");
    let (_, root_route) = common::post_raw(&server, "/", "application/json", &body);
    assert_eq!(root_route, got, "POST / of a SPLADE model is /embed_sparse");
    for (i, case) in cases.iter().enumerate() {
        let dense = |entries: &Value| {
            let mut v = vec![0.0f64; 1000];
            for e in entries.as_array().unwrap() {
                v[e["index"].as_u64().unwrap() as usize] = e["value"].as_f64().unwrap();
            }
            v
        };
        let (g, w) = (dense(&got[i]), dense(&case["encode"]));
        let diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff <= 1e-5, "case {i}: {diff}");
        assert!(got[i]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["value"].as_f64() > Some(0.0)));
    }
    // `max_active_dims` keeps each input's largest weights, `min_weight` drops the small ones:
    // the same entries as cutting the full answer.
    let body = json!({"inputs": texts, "max_active_dims": 5, "min_weight": 0.2}).to_string();
    let (status, limited) = common::post_raw(&server, "/embed_sparse", "application/json", &body);
    assert_eq!(status, 200, "{limited}");
    for (i, full) in got.as_array().unwrap().iter().enumerate() {
        let mut want: Vec<(u64, f64)> = full
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["index"].as_u64().unwrap(), e["value"].as_f64().unwrap()))
            .filter(|(_, v)| *v >= 0.2f32 as f64)
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        want.truncate(5);
        want.sort_by_key(|e| e.0);
        let got: Vec<(u64, f64)> = limited[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["index"].as_u64().unwrap(), e["value"].as_f64().unwrap()))
            .collect();
        assert_eq!(got, want, "case {i}");
    }
    let (status, reply) = common::post_raw(
        &server,
        "/embed_sparse",
        "application/json",
        &json!({"inputs": "x", "max_active_dims": 0}).to_string(),
    );
    assert_eq!(
        (status, reply["error_type"].as_str()),
        (422, Some("Validation")),
        "{reply}"
    );
    let (status, reply) = common::post_raw(
        &server,
        "/v1/embeddings",
        "application/json",
        r#"{"model": "splade", "input": "x"}"#,
    );
    assert_eq!(status, 400);
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("/embed_sparse"),
        "{reply}"
    );
    let (status, reply) = common::post_raw(&server, "/embed", "application/json", r#"{"inputs": "x"}"#);
    assert_eq!(
        (status, reply["error_type"].as_str()),
        (400, Some("Validation")),
        "{reply}"
    );
    assert!(
        reply["error"].as_str().unwrap().contains("'splade' (sparse)"),
        "{reply}"
    );
}

/// An inference-free model over TEI's `/embed_sparse`: documents through the transformer,
/// queries (`is_query`) by table lookup, each equal to sentence-transformers' SparseEncoder.
#[test]
fn tei_embed_sparse_serves_inference_free_queries_and_documents() {
    let dir = root().join("../shared/fixtures/tiny/sparse_inference_free");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let spec = format!("{}=inference-free", dir.display());
    let server = Server::start(&["--model", &spec, "--auto-truncate"]);
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for (is_query, field) in [(false, "encode_document"), (true, "encode_query")] {
        let body = json!({"inputs": texts, "is_query": is_query}).to_string();
        let (status, got) = common::post_raw(&server, "/embed_sparse", "application/json", &body);
        assert_eq!(status, 200, "{got}");
        for (i, case) in cases.iter().enumerate() {
            let dense = |entries: &Value| {
                let mut v = vec![0.0f64; 1000];
                for e in entries.as_array().unwrap() {
                    v[e["index"].as_u64().unwrap() as usize] = e["value"].as_f64().unwrap();
                }
                v
            };
            let (g, w) = (dense(&got[i]), dense(&case[field]));
            let diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(diff <= 1e-5, "{field} case {i}: {diff}");
        }
    }
    let (status, reply) = common::post_raw(
        &server,
        "/embed_sparse",
        "application/json",
        r#"{"inputs": [[5, 6]], "is_query": true}"#,
    );
    assert_eq!(
        (status, reply["error_type"].as_str()),
        (422, Some("Validation")),
        "{reply}"
    );
}

/// A PyLate ColBERT model served: `/embed_all` gives its query and document token vectors as
/// PyLate encodes them (`is_query`), `/v1/rerank` scores by MaxSim as `pylate.rank.rerank`, the
/// model card lists its outputs, and routes for other outputs name the ones it has.
#[test]
fn colbert_token_vectors_and_maxsim_rerank_equal_pylate() {
    let dir = root().join("../shared/fixtures/tiny/colbert");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let spec = format!("{}=colbert", dir.display());
    let server = Server::start(&["--model", &spec]);
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for (is_query, side) in [(true, "query"), (false, "document")] {
        let body = json!({"inputs": texts, "is_query": is_query}).to_string();
        let (status, got) = common::post_raw(&server, "/embed_all", "application/json", &body);
        assert_eq!(status, 200, "{got}");
        for (i, case) in cases.iter().enumerate() {
            let want = case[side]["vectors"].as_array().unwrap();
            let rows = got[i].as_array().unwrap();
            assert_eq!(rows.len(), want.len(), "{side} {i}: kept tokens");
            for (g, w) in rows.iter().zip(want) {
                let diff = max_abs_diff(&floats(g), &floats(w));
                assert!(diff <= 1e-5, "{side} {i}: {diff}");
            }
        }
    }
    // POST / of a late-interaction model is /embed_all.
    let (_, root_route) = common::post_raw(
        &server,
        "/",
        "application/json",
        &json!({"inputs": texts[0]}).to_string(),
    );
    let (_, direct) = common::post_raw(
        &server,
        "/embed_all",
        "application/json",
        &json!({"inputs": texts[0]}).to_string(),
    );
    assert_eq!(root_route, direct);
    let scores = &reference["scores"];
    for (qi, query) in scores["queries"].as_array().unwrap().iter().enumerate() {
        let body = json!({"model": "colbert", "query": query, "documents": scores["documents"]}).to_string();
        let (status, reply) = common::post_raw(&server, "/v1/rerank", "application/json", &body);
        assert_eq!(status, 200, "{reply}");
        let want = scores["rerank"][qi].as_array().unwrap();
        let got = reply["results"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["index"], w["id"], "query {qi}: the same order");
            let (g, w) = (g["relevance_score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "query {qi}: {g} vs {w}");
        }
    }
    let card: Value = common::client()
        .get(server.at("/v1/models/colbert"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(card["outputs"], json!(["multi_vector"]), "{card}");
    assert_eq!(card["multi_vector_dimensions"], 16);
    let (status, reply) = common::post_raw(
        &server,
        "/v1/embeddings",
        "application/json",
        r#"{"model": "colbert", "input": "x"}"#,
    );
    assert_eq!(status, 400);
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("/embed_all"),
        "{reply}"
    );
    let (status, reply) = common::post_raw(
        &server,
        "/embed_sparse",
        "application/json",
        r#"{"model": "colbert", "inputs": "x"}"#,
    );
    assert_eq!(
        (status, reply["error_type"].as_str()),
        (400, Some("Validation")),
        "{reply}"
    );
    assert!(reply["error"].as_str().unwrap().contains("multi_vector"), "{reply}");
}

/// A server of the bge-m3 fixture, and its reference.
fn bge_m3_server() -> (Server, Value) {
    let dir = root().join("../shared/fixtures/tiny/bge_m3");
    let reference = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let spec = format!("{}=bge-m3", dir.display());
    (Server::start(&["--model", &spec]), reference)
}

/// A reference's cases with a text.
fn non_empty_cases(reference: &Value) -> Vec<&Value> {
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["text"].as_str().unwrap().is_empty())
        .collect()
}

/// `/v1/embeddings` and `/embed_sparse` answers for `texts` from the bge-m3 server.
fn dense_and_sparse(server: &Server, texts: &[&str]) -> (Value, Value) {
    let (status, _, dense) = common::embed(server, json!({"model": "bge-m3", "input": texts}));
    assert_eq!(status, 200, "{dense}");
    let (status, sparse) = common::post_raw(
        server,
        "/embed_sparse",
        "application/json",
        &json!({"inputs": texts}).to_string(),
    );
    assert_eq!(status, 200, "{sparse}");
    (dense, sparse)
}

/// bge-m3 from one server: `/v1/embeddings` gives its dense vectors, `/embed_sparse` its lexical
/// weights, `/embed_all` its ColBERT vectors (all equal to FlagEmbedding's `BGEM3FlagModel`), and
/// `/v1/rerank` its combined `colbert+sparse+dense` score.
#[test]
fn bge_m3_serves_dense_sparse_and_multi_vector_outputs() {
    let (server, reference) = bge_m3_server();
    let cases = non_empty_cases(&reference);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let (dense, sparse) = dense_and_sparse(&server, &texts);
    let (status, multi) = common::post_raw(
        &server,
        "/embed_all",
        "application/json",
        &json!({"inputs": texts}).to_string(),
    );
    assert_eq!(status, 200, "{multi}");
    for (i, case) in cases.iter().enumerate() {
        let diff = max_abs_diff(&floats(&dense["data"][i]["embedding"]), &floats(&case["dense_vecs"]));
        assert!(diff <= 1e-5, "case {i} dense: {diff}");
        let want = case["lexical_weights"].as_object().unwrap();
        let got = sparse[i].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "case {i}: the same ids");
        for e in got {
            let w = &want[&e["index"].to_string()];
            let w = w.as_str().map_or_else(|| w.as_f64().unwrap(), |s| s.parse().unwrap());
            assert!((e["value"].as_f64().unwrap() - w).abs() <= 1e-5, "case {i}: {e} vs {w}");
        }
        let want = case["colbert_vecs"].as_array().unwrap();
        assert_eq!(multi[i].as_array().unwrap().len(), want.len(), "case {i}");
        for (g, w) in multi[i].as_array().unwrap().iter().zip(want) {
            assert!(max_abs_diff(&floats(g), &floats(w)) <= 1e-5, "case {i} colbert");
        }
    }
    let card: Value = common::client()
        .get(server.at("/v1/models/bge-m3"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(card["outputs"], json!(["dense", "sparse", "multi_vector"]), "{card}");
    for pair in reference["scores"]["per_pair"].as_array().unwrap() {
        let body = json!({"model": "bge-m3", "query": pair["query"], "documents": [pair["passage"]]}).to_string();
        let (status, reply) = common::post_raw(&server, "/v1/rerank", "application/json", &body);
        assert_eq!(status, 200, "{reply}");
        let got = reply["results"][0]["relevance_score"].as_f64().unwrap();
        let want = pair["compute_score_alone"]["colbert+sparse+dense"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-5, "{got} vs {want}");
    }
}

/// Hybrid retrieval end to end with bge-m3: a small corpus embedded dense (`/v1/embeddings`)
/// and sparse (`/embed_sparse`), queries scored both ways and fused (FlagEmbedding's
/// `sparse+dense`: the mean of the two), ranked; equal to the same computed from the reference
/// outputs of the original library.
#[test]
fn hybrid_retrieval_with_bge_m3_equals_the_reference_outputs() {
    let (server, reference) = bge_m3_server();
    let cases = non_empty_cases(&reference);
    let corpus: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    // Queries: texts of the corpus (the reference holds their outputs too).
    let queries = [1usize, 3, 5];
    type Sparse = std::collections::BTreeMap<u64, f64>;
    let served = |texts: &[&str]| -> (Vec<Vec<f32>>, Vec<Sparse>) {
        let (dense, sparse) = dense_and_sparse(&server, texts);
        let dense = (0..texts.len())
            .map(|i| floats(&dense["data"][i]["embedding"]))
            .collect();
        let sparse = sparse
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e["index"].as_u64().unwrap(), e["value"].as_f64().unwrap()))
                    .collect()
            })
            .collect();
        (dense, sparse)
    };
    let from_reference = |c: &Value| -> (Vec<f32>, Sparse) {
        let sparse = c["lexical_weights"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.parse().unwrap(),
                    v.as_str().map_or_else(|| v.as_f64().unwrap(), |s| s.parse().unwrap()),
                )
            })
            .collect();
        (floats(&c["dense_vecs"]), sparse)
    };
    let (doc_dense, doc_sparse) = served(&corpus);
    let query_texts: Vec<&str> = queries.iter().map(|&q| corpus[q]).collect();
    let (q_dense, q_sparse) = served(&query_texts);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
    let sdot = |a: &Sparse, b: &Sparse| a.iter().filter_map(|(k, v)| b.get(k).map(|w| v * w)).sum::<f64>();
    let ranked = |scores: Vec<f64>| {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        (order, scores)
    };
    for (qi, &q) in queries.iter().enumerate() {
        let (rq_dense, rq_sparse) = from_reference(cases[q]);
        for mode in ["dense", "sparse", "sparse+dense"] {
            let score = |qd: &[f32], qs: &Sparse, dd: &[f32], ds: &Sparse| match mode {
                "dense" => dot(qd, dd),
                "sparse" => sdot(qs, ds),
                _ => (dot(qd, dd) + sdot(qs, ds)) / 2.0,
            };
            let (got_order, got) = ranked(
                (0..corpus.len())
                    .map(|d| score(&q_dense[qi], &q_sparse[qi], &doc_dense[d], &doc_sparse[d]))
                    .collect(),
            );
            let (want_order, want) = ranked(
                cases
                    .iter()
                    .map(|c| {
                        let (dd, ds) = from_reference(c);
                        score(&rq_dense, &rq_sparse, &dd, &ds)
                    })
                    .collect(),
            );
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "query {q} {mode}: {g} vs {w}");
            }
            assert_eq!(got_order, want_order, "query {q} {mode}: the same ranking");
        }
    }
}
