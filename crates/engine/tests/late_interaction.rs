//! Multi-vector and lexical outputs against the original libraries on the tiny fixtures:
//! PyLate's ColBERT (query and document ids, kept tokens, token vectors, MaxSim) and
//! FlagEmbedding's `BGEM3FlagModel` (dense, lexical weights, ColBERT vectors, scores), each text
//! alone and all in one batch.

mod common;

use common::*;
use openembed_engine::{maxsim, sparse_dot, sparse_pairs, LoadOptions, Model, ModelKind, Output, Side, Truncation};
use serde_json::Value;

fn reference(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn rows(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect()
}

/// Runs `texts` for `output`, all in one batch and each alone; both must agree with `want`.
fn both_ways(model: &Model, ids: &[&[u32]], output: Output) -> Vec<Vec<f32>> {
    let outputs = vec![output; ids.len()];
    let batched = model.run_yielding(ids, None, Some(&outputs), &mut || {}).unwrap();
    for (i, one) in ids.iter().enumerate() {
        let alone = model.run_yielding(&[one], None, Some(&[output]), &mut || {}).unwrap();
        let diff = max_abs_diff(&alone[0], &batched[i]);
        assert!(diff <= 1e-5, "input {i} {output:?}: alone and batched differ by {diff}");
    }
    batched
}

#[test]
fn colbert_equals_pylate() {
    let dir = shared_dir().join("fixtures/tiny/colbert");
    let r = reference(&dir);
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    let info = model.info();
    assert_eq!(info.kind(), ModelKind::MultiVector);
    assert_eq!((info.multi_vector, info.multi_vector_sides), (Some(16), true));
    assert_eq!(info.outputs(), vec!["multi_vector"]);
    let cases = r["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for (side, key) in [(Side::Query, "query"), (Side::Document, "document")] {
        let toks = model.tokenize_side(&texts, None, Truncation::None, side).unwrap();
        let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
        let got = both_ways(&model, &ids, Output::MultiVector(side));
        for (i, case) in cases.iter().enumerate() {
            let c = &case[key];
            assert_eq!(toks[i].ids, common::ids(&c["input_ids"]), "{key} {i}: ids");
            let kept = c["kept"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|k| k.as_bool().unwrap())
                .count();
            let want = rows(&c["vectors"]);
            assert_eq!(want.len(), kept * 16);
            assert_eq!(got[i].len(), want.len(), "{key} {i}: kept tokens");
            let diff = max_abs_diff(&got[i], &want);
            assert!(diff <= 1e-5, "{key} {i}: max abs diff {diff}");
        }
    }
    // MaxSim of the reference's queries and documents.
    let s = &r["scores"];
    let strings = |k: &str| -> Vec<String> {
        s[k].as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    let (queries, documents) = (strings("queries"), strings("documents"));
    let encode = |texts: &[String], side| {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let toks = model.tokenize_side(&refs, None, Truncation::None, side).unwrap();
        let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
        model
            .run_yielding(
                &ids,
                None,
                Some(&vec![Output::MultiVector(side); ids.len()]),
                &mut || {},
            )
            .unwrap()
    };
    let (q, d) = (encode(&queries, Side::Query), encode(&documents, Side::Document));
    for (qi, row) in s["maxsim"].as_array().unwrap().iter().enumerate() {
        for (di, want) in row.as_array().unwrap().iter().enumerate() {
            let got = maxsim(&q[qi], &d[di], 16);
            let want = want.as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "maxsim[{qi}][{di}]: {got} vs {want}"
            );
        }
    }
    // No single vector: asking for one names the outputs the model has.
    let err = model.embed_ids(&[&[2, 1001, 149, 3][..]]).unwrap_err().to_string();
    assert!(err.contains("multi_vector"), "{err}");
}

#[test]
fn bge_m3_equals_flag_embedding() {
    let dir = shared_dir().join("fixtures/tiny/bge_m3");
    let r = reference(&dir);
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    let info = model.info();
    assert_eq!(info.kind(), ModelKind::Embedding);
    assert_eq!(info.outputs(), vec!["dense", "sparse", "multi_vector"]);
    assert_eq!(
        (info.multi_vector, info.multi_vector_sides, info.lexical),
        (Some(32), false, true)
    );
    let cases = r["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let toks = model.tokenize(&texts, None, Truncation::End).unwrap();
    let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
    let dense = both_ways(&model, &ids, Output::Pooled);
    let sparse = both_ways(&model, &ids, Output::Sparse);
    let multi = both_ways(&model, &ids, Output::MultiVector(Side::Document));
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(toks[i].ids, common::ids(&case["input_ids"]), "case {i}: ids");
        let want: Vec<f32> = case["dense_vecs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let diff = max_abs_diff(&dense[i], &want);
        assert!(diff <= 1e-5, "case {i}: dense diff {diff}");
        let mut want: Vec<(u32, f32)> = case["lexical_weights"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.parse().unwrap(),
                    v.as_str().map_or_else(|| v.as_f64().unwrap(), |s| s.parse().unwrap()) as f32,
                )
            })
            .collect();
        want.sort_by_key(|p| p.0);
        let got: Vec<(u32, f32)> = sparse_pairs(&sparse[i]).collect();
        assert_eq!(
            got.iter().map(|p| p.0).collect::<Vec<_>>(),
            want.iter().map(|p| p.0).collect::<Vec<_>>(),
            "case {i}: ids"
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() <= 1e-5, "case {i} id {}: {} vs {}", g.0, g.1, w.1);
        }
        let want = rows(&case["colbert_vecs"]);
        assert_eq!(multi[i].len(), want.len(), "case {i}: one vector per token after <s>");
        let diff = max_abs_diff(&multi[i], &want);
        assert!(diff <= 1e-5, "case {i}: colbert diff {diff}");
    }
    // FlagEmbedding's scores of (query, passage) pairs.
    for pair in r["scores"]["per_pair"].as_array().unwrap() {
        let texts = [pair["query"].as_str().unwrap(), pair["passage"].as_str().unwrap()];
        let toks = model.tokenize(&texts, None, Truncation::End).unwrap();
        let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
        let d = model
            .run_yielding(&ids, None, Some(&[Output::Pooled; 2]), &mut || {})
            .unwrap();
        let s = model
            .run_yielding(&ids, None, Some(&[Output::Sparse; 2]), &mut || {})
            .unwrap();
        let m = model
            .run_yielding(&ids, None, Some(&[Output::MultiVector(Side::Document); 2]), &mut || {})
            .unwrap();
        let dense: f32 = d[0].iter().zip(&d[1]).map(|(a, b)| a * b).sum();
        let (qs, ps): (Vec<_>, Vec<_>) = (sparse_pairs(&s[0]).collect(), sparse_pairs(&s[1]).collect());
        let lexical = sparse_dot(&qs, &ps);
        let colbert = maxsim(&m[0], &m[1], 32) / (m[0].len() / 32) as f32;
        let close = |got: f32, key: &str, want: &Value| {
            let want = want.as_f64().unwrap() as f32;
            assert!((got - want).abs() <= 1e-5, "{key}: {got} vs {want}");
        };
        close(dense, "dense_dot", &pair["dense_dot"]);
        close(lexical, "lexical", &pair["compute_lexical_matching_score"]);
        close(colbert, "colbert", &pair["colbert_score"]);
        let alone = &pair["compute_score_alone"];
        close((dense + lexical) / 2.0, "sparse+dense", &alone["sparse+dense"]);
        close(
            (dense + lexical + colbert) / 3.0,
            "colbert+sparse+dense",
            &alone["colbert+sparse+dense"],
        );
    }
}

/// A model without a sparse head asked for sparse output says which outputs it has.
#[test]
fn outputs_a_model_lacks_are_refused_with_its_outputs_named() {
    let model = Model::load(&shared_dir().join("fixtures/tiny/colbert"), &LoadOptions::default()).unwrap();
    let err = model.run_yielding(&[&[2, 1001, 5, 3][..]], None, Some(&[Output::Sparse]), &mut || {});
    let err = err.unwrap_err().to_string();
    assert!(err.contains("does not give a sparse output"), "{err}");
    assert!(err.contains("multi_vector"), "{err}");
}

/// `Model::relevance` on retrieval rows: PyLate's rerank scores (MaxSim) for ColBERT, and
/// FlagEmbedding's `compute_score` (`colbert+sparse+dense`) for bge-m3.
#[test]
fn relevance_equals_the_libraries_rerank_scores() {
    let retrieval = |model: &Model, texts: &[&str], side| {
        let toks = model.tokenize_side(texts, None, Truncation::End, side).unwrap();
        let ids: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
        model
            .run_yielding(&ids, None, Some(&vec![Output::Retrieval(side); ids.len()]), &mut || {})
            .unwrap()
    };
    let dir = shared_dir().join("fixtures/tiny/colbert");
    let r = reference(&dir);
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    let strings = |k: &str| -> Vec<&str> {
        r["scores"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect()
    };
    let docs = retrieval(&model, &strings("documents"), Side::Document);
    for (qi, query) in strings("queries").into_iter().enumerate() {
        let q = retrieval(&model, &[query], Side::Query).remove(0);
        for entry in r["scores"]["rerank"][qi].as_array().unwrap() {
            let d = entry["id"].as_u64().unwrap() as usize;
            let (got, want) = (model.relevance(&q, &docs[d]), entry["score"].as_f64().unwrap() as f32);
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "query {qi} document {d}: {got} vs {want}"
            );
        }
    }
    let dir = shared_dir().join("fixtures/tiny/bge_m3");
    let r = reference(&dir);
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    for pair in r["scores"]["per_pair"].as_array().unwrap() {
        let q = retrieval(&model, &[pair["query"].as_str().unwrap()], Side::Query).remove(0);
        let p = retrieval(&model, &[pair["passage"].as_str().unwrap()], Side::Document).remove(0);
        let want = pair["compute_score_alone"]["colbert+sparse+dense"].as_f64().unwrap() as f32;
        let got = model.relevance(&q, &p);
        assert!((got - want).abs() <= 1e-5, "{got} vs {want}");
    }
}
