//! MPNet (all-mpnet-base-v2, …): BERT-like post-norm encoder with positions from
//! `pad_token_id + 1` and a bucketed relative position bias shared by all layers.

use super::bert::{post_norm_layer, PostNormNames};
use crate::config::{ConfigJson, Dims};
use crate::models::Architecture;
use crate::error::Result;
use crate::kernels::activation::Activation;
use crate::transformer::{BucketedPositionBias, PositionBias, Embeddings, Norm, NormPlacement, Transformer};
use crate::weights::Weights;

/// The architecture this file declares.
pub const ARCHITECTURE: Architecture = Architecture::new("mpnet", &["mpnet"], load).with_weight_prefixes(&["mpnet.", "model."]);

/// Builds an MPNet encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let inter = cfg.usize(&["intermediate_size"])?;
    let buckets = cfg.usize_opt(&["relative_attention_num_buckets"]).unwrap_or(32);
    let eps = cfg.f64_opt(&["layer_norm_eps"]).unwrap_or(1e-12);
    let pad = cfg.usize_opt(&["pad_token_id"]).unwrap_or(1);
    let act_name = cfg.str_opt(&["hidden_act"]).unwrap_or("gelu");
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported hidden_act `{act_name}`")))?;
    let layout = super::bert::head_layout(cfg, hidden, heads)?;
    let embeddings = Embeddings {
        word: w.get("embeddings.word_embeddings.weight", &[vocab, hidden])?,
        position: Some(w.get("embeddings.position_embeddings.weight", &[max_pos, hidden])?),
        position_offset: pad + 1,
        token_type: None,
        scale: None,
        lora: None,
        norm: Some(Norm::layer(w, "embeddings.LayerNorm", hidden, eps)?),
    };
    let names = PostNormNames {
        layer_prefix: "encoder.layer",
        query: "attention.attn.q",
        key: "attention.attn.k",
        value: "attention.attn.v",
        attention_out: "attention.attn.o",
        attention_norm: "attention.LayerNorm",
        up: "intermediate.dense",
        down: "output.dense",
        mlp_norm: "output.LayerNorm",
    };
    let stack = (0..layers)
        .map(|i| post_norm_layer(w, &names, i, hidden, inter, eps, activation, layout, None))
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "mpnet".into(),
        hidden,
        vocab_size: vocab,
        max_positions: max_pos.saturating_sub(pad + 1),
        embeddings,
        layers: stack,
        placement: NormPlacement::Post,
        final_norm: None,
        position_bias: Some(PositionBias::Bucketed(BucketedPositionBias {
            table: w.get("encoder.relative_attention_bias.weight", &[buckets, heads])?,
            buckets,
            max_distance: 128,
        })),
    })
}
