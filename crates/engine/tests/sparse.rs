//! SPLADE against sentence-transformers' `SparseEncoder` on the tiny fixture: input ids (cut at
//! `max_seq_length`), and every vocabulary weight within 1e-5 (the sparse reference compared as a
//! dense vector: an index missing on one side counts as 0), each text alone and all in one batch.

mod common;

use common::*;
use openembed_engine::{LoadOptions, Model, ModelKind, Truncation};
use serde_json::Value;

#[test]
fn splade_equals_sentence_transformers_sparse_encoder() {
    let dir = shared_dir().join("fixtures/tiny/splade");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().kind(), ModelKind::Sparse);
    assert_eq!(model.info().dimension, 1000, "one weight per vocabulary entry");
    assert_eq!(model.info().max_input_tokens, 64);
    let cases = r["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let toks = model.tokenize(&texts, None, Truncation::End).unwrap();
    let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
    let batched = model.embed_ids(&ids).unwrap();
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(toks[i].ids, common::ids(&case["input_ids"]), "case {i}: ids");
        let mut want = vec![0.0f32; 1000];
        for entry in case["encode"].as_array().unwrap() {
            want[entry["index"].as_u64().unwrap() as usize] = entry["value"].as_f64().unwrap() as f32;
        }
        let alone = model.embed_ids(&[ids[i]]).unwrap().remove(0);
        for (label, got) in [("alone", &alone), ("batched", &batched[i])] {
            let diff = max_abs_diff(got, &want);
            assert!(diff <= 1e-5, "case {i} {label}: max abs diff {diff}");
        }
        let active = alone.iter().filter(|&&x| x > 0.0).count();
        assert!(active < 1000, "case {i}: sparse ({active} active)");
    }
}

/// The document side of OpenSearch's inference-free model (DistilBERT masked-LM head,
/// `log1p_relu`), read through a folder whose modules.json names the fixture's document modules.
#[test]
fn distilbert_log1p_relu_document_side_equals_the_sparse_encoder() {
    let fixture = shared_dir().join("fixtures/tiny/sparse_inference_free");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("oe-inference-free-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": fixture.join("document_0_MLMTransformer"),
         "type": "sentence_transformers.sparse_encoder.models.MLMTransformer"},
        {"idx": 1, "name": "1", "path": fixture.join("document_1_SpladePooling"),
         "type": "sentence_transformers.sparse_encoder.models.SpladePooling"},
    ]);
    std::fs::write(dir.join("modules.json"), modules.to_string()).unwrap();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().kind(), ModelKind::Sparse);
    for (i, case) in r["cases"].as_array().unwrap().iter().enumerate() {
        let text = case["text"].as_str().unwrap();
        let tok = model.tokenize(&[text], None, Truncation::End).unwrap().remove(0);
        assert_eq!(tok.ids, common::ids(&case["document_input_ids"]), "case {i}: ids");
        let got = model.embed_ids(&[tok.ids.as_slice()]).unwrap().remove(0);
        let mut want = vec![0.0f32; got.len()];
        for entry in case["encode_document"].as_array().unwrap() {
            want[entry["index"].as_u64().unwrap() as usize] = entry["value"].as_f64().unwrap() as f32;
        }
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-5, "case {i}: max abs diff {diff}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
