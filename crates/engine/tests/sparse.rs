//! SPLADE against sentence-transformers' `SparseEncoder` on the tiny fixture: input ids (cut at
//! `max_seq_length`), and every vocabulary weight within 1e-5 (the sparse reference compared as a
//! dense vector: an index missing on one side counts as 0), each text alone and all in one batch.

mod common;

use common::*;
use openembed_engine::{sparse_pairs, LoadOptions, Model, ModelKind, Output, Truncation};
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
    // The sparse output (the batch's tokens through the head together, in chunks that cross
    // inputs) holds the same weights, non-zero ones only, mixed with other outputs.
    let mut outputs = vec![Output::Sparse; ids.len()];
    outputs[2] = Output::Tokens;
    let sparse = model.run_yielding(&ids, None, Some(&outputs), &mut || {}).unwrap();
    for (i, row) in sparse.iter().enumerate().filter(|(i, _)| *i != 2) {
        let mut got = vec![0.0f32; 1000];
        for (id, w) in sparse_pairs(row) {
            assert!(w > 0.0, "case {i}: only non-zero weights");
            got[id as usize] = w;
        }
        let diff = max_abs_diff(&got, &batched[i]);
        assert!(diff <= 1e-6, "case {i} sparse output: {diff}");
    }
    // Many inputs in one pass (about 5,000 tokens): more rows and more inputs than the head
    // takes in one call, inputs cut between calls, each equal to the input alone.
    let many: Vec<&[u32]> = ids.iter().cycle().take(25 * ids.len()).copied().collect();
    let rows = model
        .run_yielding(&many, None, Some(&vec![Output::Sparse; many.len()]), &mut || {})
        .unwrap();
    for (i, row) in rows.iter().enumerate() {
        let mut got = vec![0.0f32; 1000];
        for (id, w) in sparse_pairs(row) {
            got[id as usize] = w;
        }
        let diff = max_abs_diff(&got, &batched[i % ids.len()]);
        assert!(diff <= 1e-6, "input {i} of many: {diff}");
    }
}

/// OpenSearch's inference-free model as sentence-transformers saves it (a `Router`): documents
/// through the DistilBERT masked-LM head with `log1p_relu`, queries by table lookup.
#[test]
fn inference_free_router_equals_the_sparse_encoder() {
    let dir = shared_dir().join("fixtures/tiny/sparse_inference_free");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().kind(), ModelKind::Sparse);
    assert!(model.info().sparse_query);
    let dense = |entries: &Value, n: usize| {
        let mut v = vec![0.0f32; n];
        for e in entries.as_array().unwrap() {
            v[e["index"].as_u64().unwrap() as usize] = e["value"].as_f64().unwrap() as f32;
        }
        v
    };
    let cases = r["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let queries = model.sparse_queries(&texts).unwrap().expect("a query side");
    for (i, case) in cases.iter().enumerate() {
        let tok = model.tokenize(&[texts[i]], None, Truncation::End).unwrap().remove(0);
        assert_eq!(tok.ids, common::ids(&case["document_input_ids"]), "case {i}: ids");
        let doc = model.embed_ids(&[tok.ids.as_slice()]).unwrap().remove(0);
        let diff = max_abs_diff(&doc, &dense(&case["encode_document"], doc.len()));
        assert!(diff <= 1e-5, "case {i} document: max abs diff {diff}");
        let mut query = vec![0.0f32; doc.len()];
        for (id, w) in sparse_pairs(&queries[i]) {
            query[id as usize] = w;
        }
        let diff = max_abs_diff(&query, &dense(&case["encode_query"], query.len()));
        assert!(diff <= 1e-6, "case {i} query: max abs diff {diff}");
    }
    // A plain SPLADE model has no query side of its own.
    let splade = Model::load(&shared_dir().join("fixtures/tiny/splade"), &LoadOptions::default()).unwrap();
    assert!(splade.sparse_queries(&["x"]).unwrap().is_none());
}
