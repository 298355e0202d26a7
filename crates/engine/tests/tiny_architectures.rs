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
