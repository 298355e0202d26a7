//! Rerank through the real server: every tiny reranker fixture through `/v1/rerank`,
//! `/v2/rerank` and TEI's `/rerank`, scores within 1e-5; ordering, ties, `top_n`,
//! `return_documents`, raw scores and the errors.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;

fn tiny(name: &str) -> PathBuf {
    root().join("../shared/fixtures/tiny").join(name)
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(tiny(name).join("reference.json")).unwrap()).unwrap()
}

/// The Qwen3-Reranker fixture with its stand-in template as `rerank_template.json`.
fn qwen3_reranker(scratch: &std::path::Path) -> PathBuf {
    let r = reference("qwen3_reranker");
    let dir = scratch.join("qwen3_reranker");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(tiny("qwen3_reranker").join(f), dir.join(f)).unwrap();
    }
    let t = &r["template"];
    let template = json!({"prefix": t["prefix"], "suffix": t["suffix"], "format": t["format"],
        "instruction": t["instruction"], "yes_token": r["yes_token"], "no_token": r["no_token"]});
    std::fs::write(dir.join("rerank_template.json"), template.to_string()).unwrap();
    dir
}

fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let resp = client().post(server.at(path)).json(&body).send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap())
}

/// The fixture's (query, document, expected score) per pair case.
fn pairs(name: &str) -> Vec<(String, String, f32, f32)> {
    reference(name)["pair_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let (raw, score) = match c.get("logit") {
                Some(l) => (l.as_f64().unwrap(), c["predict_default"].as_f64().unwrap()),
                None => (
                    c["logit_yes"].as_f64().unwrap() - c["logit_no"].as_f64().unwrap(),
                    c["score"].as_f64().unwrap(),
                ),
            };
            (
                c["query"].as_str().unwrap().to_string(),
                c["document"].as_str().unwrap().to_string(),
                raw as f32,
                score as f32,
            )
        })
        .collect()
}

#[test]
fn rerankers_through_every_route() {
    let scratch = std::env::temp_dir().join(format!("oe-rerank-{}", std::process::id()));
    let qwen = qwen3_reranker(&scratch);
    let specs = [
        (tiny("rerank_bert"), "rerank_bert"),
        (tiny("rerank_xlm_roberta"), "rerank_xlm_roberta"),
        (tiny("rerank_modernbert"), "rerank_modernbert"),
        (qwen, "qwen3_reranker"),
    ];
    let mut args = Vec::new();
    let owned: Vec<String> = specs.iter().map(|(d, n)| format!("{}={n}", d.display())).collect();
    for s in &owned {
        args.extend(["--model", s.as_str()]);
    }
    let server = Server::start(&args);
    for (_, name) in &specs {
        for (query, doc, raw, score) in pairs(name) {
            // One document at a time per route, then all of a query's documents packed together.
            for path in ["/v1/rerank", "/v2/rerank"] {
                let (status, out) = post(
                    &server,
                    path,
                    json!({"model": name, "query": query, "documents": [doc]}),
                );
                assert_eq!(status, 200, "{name} {path}: {out}");
                let got = out["results"][0]["relevance_score"].as_f64().unwrap() as f32;
                assert!((got - score).abs() <= 1e-5, "{name} {path}: {got} vs {score}");
            }
            let (status, out) = post(
                &server,
                "/rerank",
                json!({"model": name, "query": query, "texts": [doc], "raw_scores": true}),
            );
            assert_eq!(status, 200, "{name} /rerank: {out}");
            let got = out[0]["score"].as_f64().unwrap() as f32;
            assert!((got - raw).abs() <= 1e-5, "{name} /rerank raw: {got} vs {raw}");
        }
        // All pairs that share a query, in one request: ranked by score.
        let all = pairs(name);
        let query = &all[0].0;
        let same: Vec<&(String, String, f32, f32)> = all.iter().filter(|p| &p.0 == query).collect();
        let docs: Vec<&str> = same.iter().map(|p| p.1.as_str()).collect();
        let (status, out) = post(
            &server,
            "/v1/rerank",
            json!({"model": name, "query": query, "documents": docs, "return_documents": true}),
        );
        assert_eq!(status, 200, "{out}");
        let results = out["results"].as_array().unwrap();
        assert_eq!(results.len(), docs.len());
        let mut last = f64::INFINITY;
        for r in results {
            let i = r["index"].as_u64().unwrap() as usize;
            let s = r["relevance_score"].as_f64().unwrap();
            assert!(s <= last, "sorted best first");
            last = s;
            assert!((s as f32 - same[i].3).abs() <= 1e-5);
            assert_eq!(r["document"]["text"], json!(docs[i]));
        }
        assert!(out["usage"]["total_tokens"].as_u64().unwrap() > 0);
        assert_eq!(out["meta"]["tokens"]["input_tokens"], out["usage"]["total_tokens"]);
    }

    // top_n, ties (equal documents keep request order), documents as objects, no documents back
    // unless asked.
    let (status, out) = post(
        &server,
        "/v2/rerank",
        json!({"model": "rerank_bert", "query": "t5 t6", "documents": ["t9 t10", {"text": "t7"}, "t9 t10", "t11"], "top_n": 2}),
    );
    assert_eq!(status, 200, "{out}");
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.get("document").is_none()));
    let (_, all) = post(
        &server,
        "/v2/rerank",
        json!({"model": "rerank_bert", "query": "t5 t6", "documents": ["t9 t10", "t7", "t9 t10", "t11"]}),
    );
    let order: Vec<u64> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    let p0 = order.iter().position(|&i| i == 0).unwrap();
    let p2 = order.iter().position(|&i| i == 2).unwrap();
    assert_eq!(p2, p0 + 1, "a tie keeps request order: {order:?}");
    assert_eq!(results[0]["index"], all["results"][0]["index"]);

    // TEI: return_text, ranked.
    let (status, out) = post(
        &server,
        "/rerank",
        json!({"model": "rerank_bert", "query": "t5", "texts": ["t7", "t8 t9"], "return_text": true}),
    );
    assert_eq!(status, 200, "{out}");
    let arr = out.as_array().unwrap();
    assert!(arr[0]["score"].as_f64() >= arr[1]["score"].as_f64());
    assert!(arr.iter().all(|r| r["text"].is_string()));

    // Errors, in OpenAI's shape.
    for (path, body, status, param) in [
        (
            "/v1/rerank",
            json!({"model": "rerank_bert", "query": "q", "documents": []}),
            400,
            Some("documents"),
        ),
        (
            "/v1/rerank",
            json!({"model": "rerank_bert", "query": "", "documents": ["d"]}),
            400,
            Some("query"),
        ),
        (
            "/v1/rerank",
            json!({"model": "nope", "query": "q", "documents": ["d"]}),
            404,
            Some("model"),
        ),
        (
            "/v1/rerank",
            json!({"model": "rerank_bert", "query": "q", "documents": ["d"], "top_n": 0}),
            400,
            Some("top_n"),
        ),
        (
            "/v1/rerank",
            json!({"model": "rerank_bert", "documents": ["d"]}),
            400,
            None,
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["d"]}),
            400,
            Some("model"),
        ),
        (
            "/v1/embeddings",
            json!({"model": "rerank_bert", "input": "hello"}),
            400,
            Some("model"),
        ),
    ] {
        let (got, out) = post(&server, path, body.clone());
        assert_eq!(got, status, "{path} {body}: {out}");
        let error = assert_error(&out);
        if let Some(p) = param {
            assert_eq!(error["param"], json!(p), "{out}");
        }
    }
    let too_many: Vec<String> = (0..1001).map(|i| format!("t{}", 5 + i % 900)).collect();
    let (status, _) = post(
        &server,
        "/v1/rerank",
        json!({"model": "rerank_bert", "query": "q", "documents": too_many}),
    );
    assert_eq!(status, 400);
    // Over the limit: TEI refuses unless truncate; Cohere's routes cut the document.
    let long = (0..600)
        .map(|i| format!("t{}", 5 + i % 900))
        .collect::<Vec<_>>()
        .join(" ");
    let (status, out) = post(
        &server,
        "/rerank",
        json!({"model": "rerank_bert", "query": "q", "texts": [long]}),
    );
    assert_eq!(
        (status, out["error_type"].as_str()),
        (422, Some("Validation")),
        "TEI's shape: {out}"
    );
    let (status, _) = post(
        &server,
        "/rerank",
        json!({"model": "rerank_bert", "query": "q", "texts": [long], "truncate": true}),
    );
    assert_eq!(status, 200);
    let (status, _) = post(
        &server,
        "/v1/rerank",
        json!({"model": "rerank_bert", "query": "q", "documents": [long]}),
    );
    assert_eq!(status, 200);

    // The models list says what each model serves.
    let models: Value = client()
        .get(server.at("/v1/models/rerank_bert"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["serves"], json!("rerank"));
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// An embedding model on a rerank route is a 400 that says what to use.
#[test]
fn an_embedding_model_does_not_rerank() {
    let server = Server::start(&[]);
    let (status, out) = post(
        &server,
        "/v1/rerank",
        json!({"model": "all-MiniLM-L6-v2", "query": "q", "documents": ["d"]}),
    );
    assert_eq!(status, 400, "{out}");
    assert!(
        out["error"]["message"].as_str().unwrap().contains("/v1/embeddings"),
        "{out}"
    );
    let models: Value = client()
        .get(server.at("/v1/models/all-MiniLM-L6-v2"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["serves"], json!("embeddings"));
}
