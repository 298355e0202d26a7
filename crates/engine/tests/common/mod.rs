//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use openembed_engine::models::load_transformer;
use openembed_engine::transformer::Scratch;
use openembed_engine::{Error, Model, PackedBatch, Pooling, Truncation};
use std::path::{Path, PathBuf};

/// `../shared` relative to the workspace root.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// Folder of the default model, fetched by `make model` (run by `make test`).
pub fn minilm_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "the default model is missing: run `make model` (or `make test`, which does) first"
    );
    dir
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

/// A JSON array of numbers as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// A JSON array of integers as u32.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}

/// A real model against a sentence-transformers reference file: same token ids and counts,
/// cosine ≥ 0.99999 and max abs diff ≤ 1e-4 on every line, batched and alone.
pub fn check_reference(model: &Model, reference: &Path) {
    let lines = read_jsonl(reference);
    let header = &lines[0];
    assert_eq!(
        model.info().max_input_tokens,
        header["max_seq_length"].as_u64().unwrap() as usize
    );
    assert_eq!(model.info().dimension, header["dimension"].as_u64().unwrap() as usize);
    let cases = &lines[1..];
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();

    // Without truncation, over-long inputs are reported, not cut.
    let plain = model.tokenize(&texts, None, Truncation::None).unwrap();
    let tokenized = model.tokenize(&texts, None, Truncation::End).unwrap();
    for ((case, plain), tok) in cases.iter().zip(&plain).zip(&tokenized) {
        let untruncated = case["untruncated_tokens"].as_u64().unwrap() as usize;
        assert_eq!(plain.untruncated_tokens, untruncated, "{:?}", case["text"]);
        assert_eq!(plain.over_limit, untruncated > model.info().max_input_tokens);
        assert_eq!(plain.tokens(), untruncated, "no truncation unless asked");
        assert_eq!(tok.ids, ids(&case["input_ids"]), "input_ids of {:?}", case["text"]);
        assert_eq!(tok.tokens(), case["tokens"].as_u64().unwrap() as usize);
        assert_eq!(tok.truncated(), untruncated > tok.tokens());
    }

    // Over-long untruncated input is refused by the engine.
    if let Some(long) = plain.iter().position(|t| t.over_limit) {
        let err = model.embed_ids(&[plain[long].ids.as_slice()]).unwrap_err();
        assert!(matches!(err, Error::InputTooLong { .. }), "{err}");
    }

    // All lines in one packed batch, and each alone: both match the reference.
    let all: Vec<&[u32]> = tokenized.iter().map(|t| t.ids.as_slice()).collect();
    let batched = model.embed_ids(&all).unwrap();
    for (i, case) in cases.iter().enumerate() {
        let want = floats(&case["embedding"]);
        let alone = model.embed_ids(&[all[i]]).unwrap().remove(0);
        for (label, got) in [("batched", &batched[i]), ("alone", &alone)] {
            let cos = cosine(got, &want);
            let diff = max_abs_diff(got, &want);
            assert!(
                cos >= 0.99999 && diff <= 1e-4,
                "{label} {:?}: cosine {cos}, max abs diff {diff}",
                case["text"]
            );
        }
        let moved = max_abs_diff(&batched[i], &alone);
        assert!(moved <= 1e-5, "packing moved {:?} by {moved}", case["text"]);
    }
}

const TOLERANCE: f32 = 1e-4;

/// One tiny random-weight fixture: last hidden state and pooled rows within 1e-4, alone and
/// packed into one batch.
pub fn check_architecture(name: &str) {
    let dir = shared_dir().join("fixtures/tiny").join(name);
    let model = load_transformer(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"))
            .expect("json");
    let cases = reference["cases"].as_array().expect("cases");
    let h = model.hidden;
    let inputs: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["input_ids"])).collect();

    // Each case alone.
    let mut alone = Vec::new();
    for (case, input) in cases.iter().zip(&inputs) {
        let mut scratch = Scratch::default();
        let batch = PackedBatch::new(&[input.as_slice()]);
        model.forward(&batch, &mut scratch, 2);
        let hidden = scratch.hidden[..input.len() * h].to_vec();
        let want: Vec<f32> = case["last_hidden_state"]
            .as_array()
            .expect("rows")
            .iter()
            .flat_map(floats)
            .collect();
        let diff = max_abs_diff(&hidden, &want);
        assert!(
            diff <= TOLERANCE,
            "{name}: len {} last_hidden_state differs by {diff}",
            input.len()
        );
        for (key, mode) in [
            ("mean", Pooling::Mean),
            ("cls", Pooling::Cls),
            ("last", Pooling::LastToken),
        ] {
            let mut pooled = vec![0.0; h];
            mode.pool(&hidden, h, &mut pooled);
            let diff = max_abs_diff(&pooled, &floats(&case[key]));
            assert!(
                diff <= TOLERANCE,
                "{name}: len {} {key} pooling differs by {diff}",
                input.len()
            );
        }
        alone.push(hidden);
    }

    // All cases packed into one batch, in a mixed order: same rows as alone.
    let order: Vec<usize> = (0..inputs.len()).rev().collect();
    let packed: Vec<&[u32]> = order.iter().map(|&i| inputs[i].as_slice()).collect();
    let batch = PackedBatch::new(&packed);
    let mut scratch = Scratch::default();
    model.forward(&batch, &mut scratch, 2);
    for (slot, &i) in order.iter().enumerate() {
        let r = batch.range(slot);
        let diff = max_abs_diff(&scratch.hidden[r.start * h..r.end * h], &alone[i]);
        assert!(diff <= 1e-5, "{name}: packed batch moved sequence {i} by {diff}");
    }
}

/// The tiny reference models in `../shared/fixtures/tiny`, one per architecture.
pub const TINY_ARCHITECTURES: [&str; 8] = [
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "mpnet",
    "nomic_bert",
    "modernbert",
    "qwen3",
];

/// The default model against its reference lines, then every tiny architecture.
pub fn check_default_model_and_tiny_architectures() {
    let model = Model::load(&minilm_dir(), &openembed_engine::LoadOptions::default()).unwrap();
    check_reference(&model, &shared_dir().join("fixtures/reference/all-MiniLM-L6-v2.jsonl"));
    for name in TINY_ARCHITECTURES {
        check_architecture(name);
    }
}
