//! RoBERTa and XLM-RoBERTa (multilingual-e5, bge-m3, …): BERT whose positions start at
//! `pad_token_id + 1`.

use crate::config::ConfigJson;
use crate::models::Architecture;
use crate::error::Result;
use crate::rerank::RerankHead;
use crate::transformer::{Linear, Transformer};
use crate::weights::Weights;

/// The architecture this file declares.
pub const ARCHITECTURE: Architecture = Architecture::new("roberta", &["roberta", "xlm-roberta", "camembert"], load).with_classifier(classifier).with_weight_prefixes(&["roberta.", "xlm_roberta.", "model."]);

/// Builds a RoBERTa-family encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let pad = cfg.usize_opt(&["pad_token_id"]).unwrap_or(1);
    super::bert::load_with_position_offset(cfg, w, pad + 1)
}

/// XLM-RoBERTa's sequence-classification head: `classifier.out_proj(tanh(classifier.dense(h[0])))`.
fn classifier(_: &ConfigJson, w: &Weights, hidden: usize, labels: usize) -> Result<RerankHead> {
    Ok(RerankHead::FirstTokenTanh {
        dense: Linear::load(w, "classifier.dense", hidden, hidden, true)?,
        out: Linear::load(w, "classifier.out_proj", hidden, labels, true)?,
    })
}
