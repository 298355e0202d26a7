//! Text classifiers against the tiny fixtures made by transformers' `text-classification`
//! pipeline: input ids, raw logits, the default score function (softmax for one label per text,
//! sigmoid for multi-label) and `top_k=None`'s ranking, within 1e-5, each text alone and all
//! of them in one packed batch.

mod common;

use common::*;
use openembed_engine::{LabelFunction, LoadOptions, Model, Truncation};
use serde_json::Value;

fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diff = max_abs_diff(got, want);
    assert!(diff <= tolerance, "{what}: max abs diff {diff}");
}

fn check(label: &str, function: LabelFunction) {
    let dir = shared_dir().join("fixtures/tiny").join(label);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{label}: {e}"));
    let info = model.info().classifier.clone().expect("a classifier");
    assert!(model.info().rerank.is_none(), "{label}: several labels do not rerank");
    assert!(!model.info().embeds());
    assert_eq!(info.function, function, "{label}: default function");
    assert_eq!(info.function.name(), r["function_to_apply_default"].as_str().unwrap());
    let names: Vec<String> = (0..info.labels.len())
        .map(|i| r["id2label"][i.to_string()].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(info.labels, names, "{label}: labels in id order");
    let cases = r["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let toks = model.tokenize(&texts, None, Truncation::None).unwrap();
    let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
    let batched = model.embed_ids(&ids).unwrap();
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(toks[i].ids, common::ids(&case["input_ids"]), "{label} case {i}: ids");
        let alone = model.embed_ids(&[ids[i]]).unwrap().remove(0);
        let want = floats(&case["logits"]);
        assert_close(&alone, &want, 1e-5, &format!("{label} case {i}: logits"));
        assert_close(
            &batched[i],
            &want,
            1e-5,
            &format!("{label} case {i}: logits in a batch"),
        );
        let probabilities = info.function.apply(&alone);
        assert_close(
            &probabilities,
            &floats(&case["probabilities"]),
            1e-5,
            &format!("{label} case {i}: scores"),
        );
        let ranked = info.ranked(&alone, None);
        let want_ranked = case["pipeline_top_k_none"].as_array().unwrap();
        assert_eq!(ranked.len(), want_ranked.len());
        for ((index, score), w) in ranked.iter().zip(want_ranked) {
            assert_eq!(
                info.labels[*index],
                w["label"].as_str().unwrap(),
                "{label} case {i}: order"
            );
            assert!((score - w["score"].as_f64().unwrap() as f32).abs() <= 1e-5);
        }
        assert_eq!(
            info.labels[ranked[0].0],
            case["pipeline_default"]["label"].as_str().unwrap(),
            "{label} case {i}: the default call's label"
        );
    }
}

#[test]
fn single_label_classifier_equals_the_transformers_pipeline() {
    check("classifier_bert", LabelFunction::Softmax);
}

#[test]
fn multi_label_classifier_equals_the_transformers_pipeline() {
    check("classifier_multilabel", LabelFunction::Sigmoid);
}
