//! Every architecture against the random-weight reference models in `../shared/fixtures/tiny`:
//! last hidden state and pooled rows within 1e-4, alone and packed into one batch.

mod common;

use common::*;
use openembed_engine::models::load_transformer;
use openembed_engine::transformer::Scratch;
use openembed_engine::{PackedBatch, Pooling};

const TOLERANCE: f32 = 1e-4;

fn check_architecture(name: &str) {
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

#[test]
fn bert() {
    check_architecture("bert");
}

#[test]
fn distilbert() {
    check_architecture("distilbert");
}

#[test]
fn roberta() {
    check_architecture("roberta");
}

#[test]
fn xlm_roberta() {
    check_architecture("xlm-roberta");
}

#[test]
fn mpnet() {
    check_architecture("mpnet");
}

#[test]
fn nomic_bert() {
    check_architecture("nomic_bert");
}

#[test]
fn modernbert() {
    check_architecture("modernbert");
}

#[test]
fn qwen3() {
    check_architecture("qwen3");
}
