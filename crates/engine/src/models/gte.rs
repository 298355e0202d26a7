//! Alibaba's GTE "NewModel" (`model_type` `new`: gte-base/large-en-v1.5, gte-multilingual-base,
//! snowflake-arctic-embed-m-v2.0): a post-norm encoder with a packed `qkv_proj`, a GLU MLP
//! (`up_gate_proj` = `[up | gate]`, no bias), rotary positions (optionally NTK-scaled, as the
//! original code applies the scaling: always, at load) and optional token types.

use crate::attention::Mask;
use crate::config::{ConfigJson, Dims};
use crate::models::Architecture;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::rotary::Rotary;
use crate::transformer::{Embeddings, GateOrder, Layer, Linear, Mlp, Norm, NormPlacement, SelfAttention, Transformer};
use crate::weights::Weights;

/// The architecture this file declares.
pub const ARCHITECTURE: Architecture = Architecture::new("new", &["new"], load);

/// The rotary frequencies of the original `NewModel` code. With `rope_scaling` `{type: ntk,
/// factor}` its cache is built for `max_position_embeddings × factor` positions at load, which
/// always takes the scaled branch: base × factor and `inv_freq / factor^(2/dim)` (or, with
/// `mixed_b`, `inv_freq / exp(a·i^b)`, `a = ln(factor) / (dim/2)^b`).
fn rope_frequencies(cfg: &ConfigJson, head_dim: usize) -> Result<Vec<f32>> {
    let theta = cfg.f64_opt(&["rope_theta"]).unwrap_or(10_000.0);
    let Some(scaling) = cfg.value.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(Rotary::inv_freq(head_dim, 1.0, theta));
    };
    let kind = scaling.get("type").or(scaling.get("rope_type")).and_then(|v| v.as_str()).unwrap_or("");
    if kind != "ntk" {
        return Err(Error::Unsupported(format!(
            "{}: GTE rope_scaling type `{kind}` (openembed computes `ntk`, as the original code does)",
            cfg.path.display()
        )));
    }
    let factor = scaling
        .get("factor")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| cfg.invalid("rope_scaling without a numeric `factor`"))?;
    if factor <= 1.0 {
        // The cache then never exceeds max_position_embeddings: no scaling.
        return Ok(Rotary::inv_freq(head_dim, 1.0, theta));
    }
    let mixed_b = scaling.get("mixed_b").and_then(|v| v.as_f64());
    let half = head_dim / 2;
    Ok(match mixed_b {
        None => {
            let divisor = factor.powf(2.0 / head_dim as f64) as f32;
            Rotary::inv_freq(head_dim, 1.0, theta * factor)
                .into_iter()
                .map(|f| f / divisor)
                .collect()
        }
        Some(b) => {
            let a = (factor as f32).ln() / (half as f32).powf(b as f32);
            Rotary::inv_freq(head_dim, 1.0, theta)
                .into_iter()
                .enumerate()
                .map(|(i, f)| f / (a * ((i + 1) as f32).powf(b as f32)).exp())
                .collect()
        }
    })
}

/// Refuses flags of the original code that change results and are not computed here.
fn refuse_unimplemented(cfg: &ConfigJson) -> Result<()> {
    for name in ["logn_attention_scale", "logn_attention_clip1"] {
        if cfg.bool_opt(&[name]) == Some(true) {
            return Err(Error::Unsupported(format!("{}: GTE with `{name}` = true", cfg.path.display())));
        }
    }
    Ok(())
}

/// Builds a GTE NewModel encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let inter = cfg.usize(&["intermediate_size"])?;
    let eps = cfg.f64_opt(&["layer_norm_eps"]).unwrap_or(1e-12);
    refuse_unimplemented(cfg)?;
    let act_name = cfg.str_opt(&["hidden_act"]).unwrap_or("gelu");
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported hidden_act `{act_name}`")))?;
    let layout = super::bert::head_layout(cfg, hidden, heads)?;
    let norm = |prefix: &str| match cfg.str_opt(&["layer_norm_type"]).unwrap_or("layer_norm") {
        "layer_norm" => Norm::layer(w, prefix, hidden, eps),
        "rms_norm" => Norm::rms(w, prefix, hidden, eps),
        other => Err(Error::Unsupported(format!("{}: GTE layer_norm_type `{other}`", cfg.path.display()))),
    };
    let (position, rotary) = match cfg.str_opt(&["position_embedding_type"]).unwrap_or("rope") {
        "rope" => (None, Some(rope_frequencies(cfg, layout.head_dim)?)),
        "absolute" => (Some(w.get("embeddings.position_embeddings.weight", &[max_pos, hidden])?), None),
        other => {
            return Err(Error::Unsupported(format!(
                "{}: GTE position_embedding_type `{other}`",
                cfg.path.display()
            )))
        }
    };
    let token_type = Embeddings::token_type_table(w, "embeddings.token_type_embeddings.weight", hidden)?;
    let pack_qkv = cfg.bool_opt(&["pack_qkv"]).unwrap_or(true);
    let stack = (0..layers)
        .map(|i| {
            let p = |s: &str| format!("encoder.layer.{i}.{s}");
            let qkv = if pack_qkv {
                Linear::load(w, &p("attention.qkv_proj"), hidden, 3 * hidden, true)?
            } else {
                Linear::concat(
                    ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .map(|n| Linear::load_parts(w, &p(&format!("attention.{n}")), hidden, hidden, true))
                        .collect::<Result<Vec<_>>>()?,
                    w.dtype(),
                )
            };
            Ok(Layer {
                attention: SelfAttention {
                    qkv,
                    out: Linear::load(w, &p("attention.o_proj"), hidden, hidden, true)?,
                    layout,
                    mask: Mask::Bidirectional,
                    rotary: rotary
                        .as_ref()
                        .map(|f| Rotary::from_inv_freq(f.clone(), false, max_pos)),
                    qk_norm: None,
                },
                attention_norm: Some(norm(&p("attn_ln"))?),
                mlp: Mlp {
                    up: Linear::load(w, &p("mlp.up_gate_proj"), hidden, 2 * inter, false)?,
                    down: Linear::load(w, &p("mlp.down_proj"), inter, hidden, true)?,
                    activation,
                    gated: Some(GateOrder::UpFirst),
                },
                mlp_norm: norm(&p("mlp_ln"))?,
                post_norms: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "new".into(),
        hidden,
        vocab_size: vocab,
        max_positions: max_pos,
        embeddings: Embeddings {
            word: w.get("embeddings.word_embeddings.weight", &[vocab, hidden])?,
            position,
            position_offset: 0,
            token_type,
            scale: None,
            lora: None,
            norm: Some(Norm::layer(w, "embeddings.LayerNorm", hidden, eps)?),
        },
        layers: stack,
        placement: NormPlacement::Post,
        final_norm: None,
        position_bias: None,
    })
}
