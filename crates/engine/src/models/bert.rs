//! BERT (MiniLM, bge, e5, gte-small, …): post-norm encoder, absolute positions, token types.

use crate::attention::{HeadLayout, Mask};
use crate::config::{ConfigJson, Dims};
use crate::models::Architecture;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::rerank::RerankHead;
use crate::transformer::{Embeddings, GateOrder, Layer, Linear, Mlp, Norm, NormPlacement, SelfAttention, Transformer};
use crate::weights::Weights;

/// The architecture this file declares.
pub const ARCHITECTURE: Architecture = Architecture::new("bert", &["bert"], load).with_classifier(classifier).with_weight_prefixes(&["bert.", "model."]);

/// Builds a BERT encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    load_with_position_offset(cfg, w, 0)
}

/// The BERT layout with positions starting at `position_offset` (RoBERTa uses `pad_token_id + 1`).
pub fn load_with_position_offset(cfg: &ConfigJson, w: &Weights, position_offset: usize) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let inter = cfg.usize(&["intermediate_size"])?;
    let eps = cfg.f64_opt(&["layer_norm_eps"]).unwrap_or(1e-12);
    let act_name = cfg.str_opt(&["hidden_act"]).unwrap_or("gelu");
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported hidden_act `{act_name}`")))?;
    if let Some(kind) = cfg.str_opt(&["position_embedding_type"]) {
        if kind != "absolute" {
            return Err(Error::Unsupported(format!("{}: position_embedding_type `{kind}`", cfg.path.display())));
        }
    }
    let layout = head_layout(cfg, hidden, heads)?;
    let token_type = Embeddings::token_type_table(w, "embeddings.token_type_embeddings.weight", hidden)?;
    let embeddings = Embeddings {
        word: w.get("embeddings.word_embeddings.weight", &[vocab, hidden])?,
        position: Some(w.get("embeddings.position_embeddings.weight", &[max_pos, hidden])?),
        position_offset,
        token_type,
        scale: None,
        lora: None,
        norm: Some(Norm::layer(w, "embeddings.LayerNorm", hidden, eps)?),
    };
    let names = PostNormNames {
        layer_prefix: "encoder.layer",
        query: "attention.self.query",
        key: "attention.self.key",
        value: "attention.self.value",
        attention_out: "attention.output.dense",
        attention_norm: "attention.output.LayerNorm",
        up: "intermediate.dense",
        down: "output.dense",
        mlp_norm: "output.LayerNorm",
    };
    let stack = (0..layers)
        .map(|i| post_norm_layer(w, &names, i, hidden, inter, eps, activation, layout, None))
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: cfg.model_type()?,
        hidden,
        vocab_size: vocab,
        max_positions: max_pos.saturating_sub(position_offset),
        embeddings,
        layers: stack,
        placement: NormPlacement::Post,
        final_norm: None,
        position_bias: None,
    })
}

/// BERT's sequence-classification head (cross-encoders, classifiers): `classifier(tanh(pooler.dense(h[0])))`.
fn classifier(_: &ConfigJson, w: &Weights, hidden: usize, labels: usize) -> Result<RerankHead> {
    Ok(RerankHead::FirstTokenTanh {
        dense: Linear::load(w, "pooler.dense", hidden, hidden, true)?,
        out: Linear::load(w, "classifier", hidden, labels, true)?,
    })
}

/// Checks that `heads` divides `hidden` and returns the head layout.
pub fn head_layout(cfg: &ConfigJson, hidden: usize, heads: usize) -> Result<HeadLayout> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(cfg.invalid(&format!("hidden size {hidden} is not divisible by {heads} attention heads")));
    }
    Ok(HeadLayout { heads, kv_heads: heads, head_dim: hidden / heads })
}

/// Tensor names of a post-norm (BERT-style) layer, relative to `{layer_prefix}.{i}`.
pub struct PostNormNames {
    /// Prefix of the layer list, e.g. `encoder.layer`.
    pub layer_prefix: &'static str,
    /// Query projection.
    pub query: &'static str,
    /// Key projection.
    pub key: &'static str,
    /// Value projection.
    pub value: &'static str,
    /// Attention output projection.
    pub attention_out: &'static str,
    /// LayerNorm after attention.
    pub attention_norm: &'static str,
    /// MLP input projection.
    pub up: &'static str,
    /// MLP output projection.
    pub down: &'static str,
    /// LayerNorm after the MLP.
    pub mlp_norm: &'static str,
}

/// Loads layer `i` of a post-norm encoder with biases everywhere (the MLP input's is optional),
/// fusing q|k|v; `gated` MLPs have a `2 × inter` input projection.
#[allow(clippy::too_many_arguments)]
pub fn post_norm_layer(
    w: &Weights,
    names: &PostNormNames,
    i: usize,
    hidden: usize,
    inter: usize,
    eps: f64,
    activation: Activation,
    layout: HeadLayout,
    gated: Option<GateOrder>,
) -> Result<Layer> {
    let p = format!("{}.{i}", names.layer_prefix);
    let name = |suffix: &str| format!("{p}.{suffix}");
    let qkv = Linear::concat(vec![
        Linear::load_parts(w, &name(names.query), hidden, hidden, true)?,
        Linear::load_parts(w, &name(names.key), hidden, hidden, true)?,
        Linear::load_parts(w, &name(names.value), hidden, hidden, true)?,
    ], w.dtype());
    Ok(Layer {
        attention: SelfAttention {
            qkv,
            out: Linear::load(w, &name(names.attention_out), hidden, hidden, true)?,
            layout,
            mask: Mask::Bidirectional,
            rotary: None,
            qk_norm: None,
        },
        attention_norm: Some(Norm::layer(w, &name(names.attention_norm), hidden, eps)?),
        mlp: Mlp {
            up: Linear::load_opt_bias(w, &name(names.up), hidden, if gated.is_some() { 2 * inter } else { inter })?,
            down: Linear::load(w, &name(names.down), inter, hidden, true)?,
            activation,
            gated,
        },
        mlp_norm: Norm::layer(w, &name(names.mlp_norm), hidden, eps)?,
        post_norms: None,
    })
}
