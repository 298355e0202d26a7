//! Real models against sentence-transformers' own outputs in `../shared/fixtures/reference`:
//! same token ids and counts, cosine ≥ 0.99999 and max abs diff ≤ 1e-4 on every line.

mod common;

use common::*;
use openembed_engine::{Error, LoadOptions, Model, Truncation};
use std::path::Path;

fn check_reference(model: &Model, reference: &Path) {
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

#[test]
fn all_minilm_l6_v2_matches_sentence_transformers() {
    let model = Model::load(&minilm_dir(), &LoadOptions::default()).unwrap();
    assert_eq!(model.info().architecture, "bert");
    assert!(model.info().normalize);
    check_reference(&model, &shared_dir().join("fixtures/reference/all-MiniLM-L6-v2.jsonl"));
}

#[test]
fn all_minilm_l6_v2_single_thread_gives_same_vectors() {
    let multi = Model::load(&minilm_dir(), &LoadOptions::default()).unwrap();
    let single = Model::load(&minilm_dir(), &LoadOptions { threads: Some(1) }).unwrap();
    assert_eq!(single.threads(), 1);
    let texts = [
        "a short one",
        "a somewhat longer sentence about the weather in Naples",
        "x",
    ];
    let a = multi.embed_texts(&texts, Truncation::None).unwrap();
    let b = single.embed_texts(&texts, Truncation::None).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(max_abs_diff(x, y) <= 1e-5);
    }
}

/// Runs when `models/all-mpnet-base-v2` exists (`make fetch-mpnet` fetches it); CI skips it.
#[test]
fn all_mpnet_base_v2_matches_sentence_transformers_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-mpnet-base-v2");
    if !dir.join("model.safetensors").exists() {
        eprintln!("skipped: {} not present (run `make fetch-mpnet`)", dir.display());
        return;
    }
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().architecture, "mpnet");
    check_reference(&model, &shared_dir().join("fixtures/reference/all-mpnet-base-v2.jsonl"));
}
