//! `openembed-bench --workloads sparse`: what SPLADE's sparse output costs beside the same
//! encoder's dense vector. A BERT-base encoder with a masked-LM head over a 30,522-entry
//! vocabulary (naver/splade-v3's shape), random weights, each tensor drawn on its own (an int8
//! projection's speed depends on how many outlier channels its input has: none here, and none
//! in a trained SPLADE's head input, BERT-tiny, on 200 corpus texts). The same packed batches
//! run twice alternately: forward + mean pooling (dense), and forward + masked-LM head + max
//! pooling + the non-zero entries (sparse).

use anyhow::Result;
use openembed_engine::config::ConfigJson;
use openembed_engine::models::random_transformer;
use openembed_engine::sparse::{MlmHead, SpladeActivation, SpladePooling, SpladeStrategy};
use openembed_engine::transformer::{Scratch, Transformer};
use openembed_engine::weights::Weights;
use openembed_engine::{DType, PackedBatch, Pooling};
use serde_json::{json, Value};
use std::time::Instant;

const VOCAB: usize = 30_522;
const HIDDEN: usize = 768;

/// Batches of 32 inputs of mixed lengths (16 to 256 tokens, mean 100).
fn batches() -> Vec<Vec<Vec<u32>>> {
    let lengths = [16usize, 32, 48, 64, 96, 128, 192, 224];
    (0..8)
        .map(|b| {
            (0..32)
                .map(|i| {
                    let len = lengths[(b + i) % lengths.len()];
                    (0..len)
                        .map(|t| ((b * 131 + i * 31 + t * 7) % (VOCAB - 1000) + 1000) as u32)
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Seconds to run every batch: forward, then the batch's tokens through `head` (sparse, as the
/// engine's sparse output runs it) or each input's mean pooling (dense).
fn run(model: &Transformer, head: Option<&MlmHead>, batches: &[Vec<Vec<u32>>], threads: usize) -> f64 {
    let mut scratch = Scratch::default();
    let pooling = SpladePooling {
        strategy: SpladeStrategy::Max,
        activation: SpladeActivation::Relu,
    };
    let start = Instant::now();
    let mut kept = 0usize;
    for batch in batches {
        let packed = PackedBatch::new(batch);
        model.forward(&packed, &mut scratch, threads);
        let hidden = &scratch.hidden[..packed.total_tokens() * HIDDEN];
        match head {
            Some(head) => {
                let ranges: Vec<_> = (0..packed.len()).map(|i| packed.range(i)).collect();
                let rows = head.sparse_rows(hidden, HIDDEN, &ranges, pooling, threads);
                kept += rows.iter().map(Vec::len).sum::<usize>();
            }
            None => {
                for i in 0..packed.len() {
                    let r = packed.range(i);
                    let mut v = vec![0.0f32; HIDDEN];
                    Pooling::Mean.pool(&hidden[r.start * HIDDEN..r.end * HIDDEN], HIDDEN, &mut v);
                    kept += v.len();
                }
            }
        }
    }
    std::hint::black_box(kept);
    start.elapsed().as_secs_f64()
}

/// Runs the workload; `repeat` alternated pairs, medians reported.
pub fn bench(dtype: DType, threads: usize, repeat: usize, results: &mut Vec<Value>) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    let config = json!({"model_type": "bert", "hidden_size": HIDDEN, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "vocab_size": VOCAB, "max_position_embeddings": 512, "hidden_act": "gelu"});
    let cfg = ConfigJson {
        path: "config.json".into(),
        value: config.clone(),
    };
    let model = pool.install(|| random_transformer(config, dtype))?;
    let head = pool.install(|| MlmHead::load(&cfg, &Weights::random("bert").with_dtype(dtype), HIDDEN, VOCAB))?;
    let batches = batches();
    let tokens: usize = batches.iter().flatten().map(Vec::len).sum();
    pool.install(|| run(&model, Some(&head), &batches[..1], threads)); // warm up
    let (mut dense, mut sparse) = (Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        dense.push(pool.install(|| run(&model, None, &batches, threads)));
        sparse.push(pool.install(|| run(&model, Some(&head), &batches, threads)));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, s) = (median(dense), median(sparse));
    println!(
        "SPLADE BERT-base, vocabulary {VOCAB}, {dtype}, {threads} threads, 8 x 32 inputs ({tokens} tokens): dense \
         {:.0} tokens/s, sparse {:.0} tokens/s, sparse costs {:.2}x dense",
        tokens as f64 / d,
        tokens as f64 / s,
        s / d
    );
    results.push(
        json!({"workload": "sparse vs dense", "dtype": dtype.as_str(), "threads": threads,
        "dense_tokens_per_s": (tokens as f64 / d).round(), "sparse_tokens_per_s": (tokens as f64 / s).round(),
        "sparse_cost_vs_dense": s / d}),
    );
    Ok(())
}
