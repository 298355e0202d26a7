//! Rerankers against the tiny reference fixtures: pair ids, raw logits and scores within 1e-5,
//! every pair alone and all of them in one packed batch.

mod common;

use common::*;
use openembed_engine::{LoadOptions, Model, Truncation};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// A copy of the Qwen3-Reranker fixture with its stand-in template written as the folder's
/// `rerank_template.json`.
pub fn qwen3_reranker_dir() -> PathBuf {
    let src = shared_dir().join("fixtures/tiny/qwen3_reranker");
    let r = reference(&src);
    let dir = std::env::temp_dir().join(format!("oe-qwen3-reranker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let t = &r["template"];
    let template = serde_json::json!({
        "prefix": t["prefix"], "suffix": t["suffix"], "format": t["format"], "instruction": t["instruction"],
        "yes_token": r["yes_token"], "no_token": r["no_token"],
    });
    std::fs::write(dir.join("rerank_template.json"), template.to_string()).unwrap();
    dir
}

fn check(dir: &Path, label: &str) {
    let r = reference(&shared_dir().join("fixtures/tiny").join(label));
    let model = Model::load(dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert!(model.info().rerank.is_some(), "{label} is a reranker");
    let cases = r["pair_cases"].as_array().unwrap();
    let mut all = Vec::new();
    for case in cases {
        let (q, d) = (case["query"].as_str().unwrap(), case["document"].as_str().unwrap());
        let tok = model
            .tokenize_pairs(q, &[d], None, Truncation::None, None)
            .unwrap()
            .remove(0);
        assert_eq!(tok.ids, ids(&case["input_ids"]), "{label}: pair ids");
        let raw = model.score_ids(&[tok.ids.as_slice()], true).unwrap()[0];
        let score = model.score_ids(&[tok.ids.as_slice()], false).unwrap()[0];
        let (want_raw, want_score) = match case.get("logit") {
            Some(l) => (
                l.as_f64().unwrap() as f32,
                case["predict_default"].as_f64().unwrap() as f32,
            ),
            None => (
                (case["logit_yes"].as_f64().unwrap() - case["logit_no"].as_f64().unwrap()) as f32,
                case["score"].as_f64().unwrap() as f32,
            ),
        };
        assert!((raw - want_raw).abs() <= 1e-5, "{label}: logit {raw} vs {want_raw}");
        assert!(
            (score - want_score).abs() <= 1e-5,
            "{label}: score {score} vs {want_score}"
        );
        all.push((tok.ids, score));
    }
    // All pairs packed into one batch, in reverse order: the same scores.
    let order: Vec<usize> = (0..all.len()).rev().collect();
    let packed: Vec<&[u32]> = order.iter().map(|&i| all[i].0.as_slice()).collect();
    let scores = model.score_ids(&packed, false).unwrap();
    for (slot, &i) in order.iter().enumerate() {
        assert!(
            (scores[slot] - all[i].1).abs() <= 1e-6,
            "{label}: packing moved pair {i}"
        );
    }
}

#[test]
fn bert_cross_encoder() {
    check(&shared_dir().join("fixtures/tiny/rerank_bert"), "rerank_bert");
}

#[test]
fn xlm_roberta_cross_encoder() {
    check(
        &shared_dir().join("fixtures/tiny/rerank_xlm_roberta"),
        "rerank_xlm_roberta",
    );
}

#[test]
fn modernbert_cross_encoder() {
    check(
        &shared_dir().join("fixtures/tiny/rerank_modernbert"),
        "rerank_modernbert",
    );
}

#[test]
fn qwen3_reranker() {
    let dir = qwen3_reranker_dir();
    check(&dir, "qwen3_reranker");
    let _ = std::fs::remove_dir_all(dir);
}

/// The document is cut first when a pair is over the limit, and only when truncation is asked.
#[test]
fn over_long_pairs_cut_the_document_first() {
    let model = Model::load(&shared_dir().join("fixtures/tiny/rerank_bert"), &LoadOptions::default()).unwrap();
    let limit = model.info().max_input_tokens;
    let doc = (0..limit * 2)
        .map(|i| format!("t{}", 5 + i % 900))
        .collect::<Vec<_>>()
        .join(" ");
    let whole = model
        .tokenize_pairs("t7 t8", &[&doc], None, Truncation::None, None)
        .unwrap()
        .remove(0);
    assert!(whole.over_limit && whole.ids.len() > limit);
    let cut = model
        .tokenize_pairs("t7 t8", &[&doc], None, Truncation::End, None)
        .unwrap()
        .remove(0);
    assert_eq!(cut.ids.len(), limit);
    assert_eq!(&cut.ids[..4], &[2, 7, 8, 3], "the query is kept whole");
    // An embedding model does not rerank.
    let embedder = Model::load(
        &shared_dir().join("fixtures/tiny/jina_bert_v2"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(embedder
        .tokenize_pairs("q", &["d"], None, Truncation::None, None)
        .is_err());
}

/// A configured Identity activation gives raw logits as scores (sentence-transformers' two
/// spellings).
#[test]
fn config_activation_identity() {
    let src = shared_dir().join("fixtures/tiny/rerank_bert");
    let r = reference(&src);
    for (key, value) in [
        (
            "sentence_transformers",
            serde_json::json!({"activation_fn": "torch.nn.modules.linear.Identity"}),
        ),
        (
            "sbert_ce_default_activation_function",
            serde_json::json!("torch.nn.modules.linear.Identity"),
        ),
    ] {
        let dir = std::env::temp_dir().join(format!("oe-ce-identity-{key}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let model = Model::load(&dir, &LoadOptions::default()).unwrap();
        let want = floats(&r["predict_with_config_activation_Identity"][key]);
        for (case, want) in r["pair_cases"].as_array().unwrap().iter().zip(want) {
            let tok = model
                .tokenize_pairs(
                    case["query"].as_str().unwrap(),
                    &[case["document"].as_str().unwrap()],
                    None,
                    Truncation::None,
                    None,
                )
                .unwrap()
                .remove(0);
            let got = model.score_ids(&[tok.ids.as_slice()], false).unwrap()[0];
            assert!((got - want).abs() <= 1e-5, "{key}: {got} vs {want}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
