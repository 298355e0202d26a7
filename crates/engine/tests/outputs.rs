//! Token vectors and vectors from one forward pass: in a batch whose inputs ask for different
//! outputs, each gets what it would get in a batch of its own kind.

mod common;

use common::*;
use openembed_engine::{LoadOptions, Model, Output};

#[test]
fn mixed_outputs_equal_separate_passes() {
    // Pooling + Dense + Normalize, a static table, a classifier head, ALiBi, a reranker.
    for fixture in [
        "gemma3_embedding",
        "static_embedding",
        "classifier_bert",
        "jina_bert_v2",
        "rerank_xlm_roberta",
    ] {
        let dir = shared_dir().join("fixtures/tiny").join(fixture);
        let model = Model::load(&dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        let ids: [&[u32]; 4] = [
            &[2, 15, 16, 17, 3],
            &[2, 18, 3],
            &[2, 40, 41, 42, 43, 44, 45, 3],
            &[2, 19, 20, 3],
        ];
        let outputs = [Output::Tokens, Output::Pooled, Output::Pooled, Output::Tokens];
        let mixed = model.run_yielding(&ids, None, Some(&outputs), &mut || {}).unwrap();
        let hidden = model.hidden_states(&ids).unwrap();
        let vectors = model.embed_ids(&ids).unwrap();
        for (i, output) in outputs.iter().enumerate() {
            let want = match output {
                Output::Tokens => &hidden[i],
                Output::Pooled => &vectors[i],
                other => unreachable!("{other:?} is not asked for here"),
            };
            assert_eq!(mixed[i].len(), want.len(), "{fixture} input {i}");
            let diff = max_abs_diff(&mixed[i], want);
            assert!(diff <= 1e-6, "{fixture} input {i} ({output:?}): {diff}");
        }
    }
}
