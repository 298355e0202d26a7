//! RoBERTa and XLM-RoBERTa (multilingual-e5, bge-m3, …): BERT whose positions start at
//! `pad_token_id + 1`.

use crate::config::ConfigJson;
use crate::error::Result;
use crate::transformer::Transformer;
use crate::weights::Weights;

/// `model_type` values handled here.
pub const MODEL_TYPES: &[&str] = &["roberta", "xlm-roberta", "camembert"];

/// Builds a RoBERTa-family encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let pad = cfg.usize_opt(&["pad_token_id"]).unwrap_or(1);
    super::bert::load_with_position_offset(cfg, w, pad + 1)
}
