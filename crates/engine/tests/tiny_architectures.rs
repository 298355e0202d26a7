//! Every architecture against the random-weight reference models in `../shared/fixtures/tiny`:
//! last hidden state and pooled rows within 1e-4, alone and packed into one batch.

mod common;

use common::*;

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

/// Empty sequences anywhere in a packed batch leave the other sequences' rows exactly as they
/// are without them, and a batch of only empty sequences runs without touching anything.
#[test]
fn empty_sequences_in_a_packed_batch() {
    use openembed_engine::models::load_transformer;
    use openembed_engine::transformer::Scratch;
    use openembed_engine::PackedBatch;
    for name in TINY_ARCHITECTURES {
        let model = load_transformer(&shared_dir().join("fixtures/tiny").join(name)).unwrap();
        let h = model.hidden;
        let a: Vec<u32> = vec![1, 5, 7, 9, 2];
        let b: Vec<u32> = vec![3, 4];
        let mut scratch = Scratch::default();
        model.forward(&PackedBatch::new(&[a.as_slice(), b.as_slice()]), &mut scratch, 2);
        let want = scratch.hidden[..7 * h].to_vec();
        let empty: &[u32] = &[];
        let batch = PackedBatch::new(&[empty, a.as_slice(), empty, b.as_slice(), empty]);
        let mut scratch = Scratch::default();
        model.forward(&batch, &mut scratch, 2);
        assert_eq!(batch.range(2), 5..5);
        assert_eq!(scratch.hidden[..7 * h], want[..], "{name}");
        let batch = PackedBatch::new(&[empty, empty]);
        model.forward(&batch, &mut Scratch::default(), 2);
    }
}

#[test]
fn gte_new_en() {
    check_architecture("gte_new_en");
}

#[test]
fn gte_new_multilingual() {
    check_architecture("gte_new_multilingual");
}

#[test]
fn jina_bert_v2() {
    check_architecture("jina_bert_v2");
}

#[test]
fn gemma3_embedding() {
    check_architecture("gemma3_embedding");
}
