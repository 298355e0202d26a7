//! int8 and bfloat16 against sentence-transformers' vectors and against our own float32:
//! cosine to every reference line (min and mean), identical token counts, and top-10
//! retrieval over 2,000 corpus texts with 200 of them as queries.

mod common;

use common::*;
use openembed_engine::{DType, LoadOptions, Model, Truncation};
use std::path::Path;

/// (min, mean) cosine to the reference each reduced dtype must reach.
fn bounds(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::Int8 => (0.995, 0.998),
        DType::Bfloat16 => (0.9995, 0.9999),
        DType::Float32 => (0.99999, 0.99999),
    }
}

fn load(dir: &Path, dtype: DType) -> Model {
    let model = Model::load(
        dir,
        &LoadOptions {
            dtype,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(model.info().dtype, dtype);
    model
}

/// Every reference line in one packed batch; returns (min, mean) cosine.
fn fidelity(model: &Model, reference: &Path) -> (f64, f64) {
    let lines = read_jsonl(reference);
    let cases = &lines[1..];
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let tokenized = model.tokenize(&texts, None, Truncation::End).unwrap();
    for (case, tok) in cases.iter().zip(&tokenized) {
        assert_eq!(
            tok.tokens(),
            case["tokens"].as_u64().unwrap() as usize,
            "token count of {:?}",
            case["text"]
        );
    }
    let all: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    let got = model.embed_ids(&all).unwrap();
    let cosines: Vec<f64> = cases
        .iter()
        .zip(&got)
        .map(|(case, v)| cosine(v, &floats(&case["embedding"])))
        .collect();
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    (min, mean)
}

fn check_fidelity(dir: &Path, reference: &Path) {
    for dtype in [DType::Bfloat16, DType::Int8] {
        let model = load(dir, dtype);
        let (min, mean) = fidelity(&model, reference);
        let (want_min, want_mean) = bounds(dtype);
        eprintln!(
            "{} {dtype} ({}): cosine min {min:.6}, mean {mean:.6}",
            dir.display(),
            openembed_engine::kernels::isa_name()
        );
        assert!(
            min >= want_min && mean >= want_mean,
            "{dtype}: cosine min {min}, mean {mean}"
        );
    }
}

#[test]
fn all_minilm_l6_v2_int8_and_bf16_stay_close_to_sentence_transformers() {
    check_fidelity(
        &minilm_dir(),
        &shared_dir().join("fixtures/reference/all-MiniLM-L6-v2.jsonl"),
    );
}

#[test]
#[ignore = "needs models/all-mpnet-base-v2 (make fetch-mpnet); make test runs it when the model is present"]
fn all_mpnet_base_v2_int8_and_bf16_stay_close_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-mpnet-base-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} not present (run `make fetch-mpnet`)",
        dir.display()
    );
    check_fidelity(&dir, &shared_dir().join("fixtures/reference/all-mpnet-base-v2.jsonl"));
}

/// The first `n` texts of the mixed benchmark corpus.
fn corpus(n: usize) -> Vec<String> {
    let path = shared_dir().join("bench/corpus/mixed.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .take(n)
        .map(|l| serde_json::from_str::<String>(l).expect("a JSON string per line"))
        .collect()
}

fn embed_all(model: &Model, texts: &[&str]) -> Vec<Vec<f32>> {
    texts
        .chunks(64)
        .flat_map(|chunk| model.embed_texts(chunk, Truncation::End).unwrap())
        .collect()
}

/// Indices of the `k` nearest documents (cosine; vectors are normalized) to each query.
fn top_k(docs: &[Vec<f32>], queries: &[usize], k: usize) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|&q| {
            let mut scored: Vec<(f32, usize)> = docs
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != q)
                .map(|(i, d)| (d.iter().zip(&docs[q]).map(|(a, b)| a * b).sum(), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.into_iter().take(k).map(|(_, i)| i).collect()
        })
        .collect()
}

#[test]
fn retrieval_top10_with_int8_and_bf16_overlaps_float32() {
    let texts = corpus(2_000);
    assert_eq!(texts.len(), 2_000);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let queries: Vec<usize> = (0..200).map(|i| i * 10).collect();
    let base = top_k(&embed_all(&load(&minilm_dir(), DType::Float32), &refs), &queries, 10);
    for dtype in [DType::Bfloat16, DType::Int8] {
        let found = top_k(&embed_all(&load(&minilm_dir(), dtype), &refs), &queries, 10);
        let overlap: f64 = base
            .iter()
            .zip(&found)
            .map(|(a, b)| a.iter().filter(|i| b.contains(i)).count() as f64 / 10.0)
            .sum::<f64>()
            / queries.len() as f64;
        eprintln!("{dtype}: top-10 overlap with float32 {overlap:.4}");
        assert!(overlap >= 0.95, "{dtype}: top-10 overlap {overlap}");
    }
}

#[test]
fn a_texts_vector_does_not_depend_on_its_batch() {
    // Every dtype quantizes each row on its own, so a text gives the same vector alone and
    // among other texts of any length (caches and deduplication rely on it).
    let texts = corpus(300);
    let all: Vec<&str> = texts.iter().map(String::as_str).collect();
    for dtype in [DType::Float32, DType::Bfloat16, DType::Int8] {
        let model = load(&minilm_dir(), dtype);
        let batch = model.embed_texts(&all, Truncation::End).unwrap();
        for i in (0..all.len()).step_by(23) {
            let alone = model.embed_texts(&all[i..i + 1], Truncation::End).unwrap();
            assert_eq!(
                alone[0], batch[i],
                "{dtype}: text {i} alone differs from the same text in a batch"
            );
        }
    }
}
