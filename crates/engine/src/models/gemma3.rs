//! Gemma3 text encoder (`model_type` `gemma3_text`; EmbeddingGemma): pre- and post-RMSNorm
//! around each block ("sandwich", Gemma's `x · (1 + w)` scaling, folded into the weights at
//! load), word embeddings × √hidden, GeGLU MLP, grouped-query attention with q/k RMSNorm and
//! `query_pre_attn_scalar`, per-layer sliding-window or full attention with the rotary theta of
//! each kind, final norm. Only the bidirectional form (`use_bidirectional_attention`, as
//! EmbeddingGemma sets it) is an encoder; causal Gemma3 is refused.

use crate::attention::{HeadLayout, Mask};
use crate::config::{ConfigJson, Dims};
use crate::models::Architecture;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::rotary::Rotary;
use crate::transformer::{
    Embeddings, GateOrder, Layer, Linear, Mlp, Norm, NormPlacement, PostNorms, QkNorm, SelfAttention, Transformer,
};
use crate::weights::{Tensor, Weights};

/// The architecture this file declares.
pub const ARCHITECTURE: Architecture = Architecture::new("gemma3_text", &["gemma3_text"], load);

/// Gemma's RMSNorm weight `w` as the plain RMSNorm scale `(1 + w) · factor`.
fn gemma_scale(w: &Weights, name: &str, width: usize, factor: f32) -> Result<Tensor> {
    let raw = w.get(name, &[width])?;
    Ok(Tensor::from_vec(raw.data().iter().map(|v| (1.0 + v) * factor).collect(), vec![width]))
}

fn gemma_norm(w: &Weights, prefix: &str, width: usize, eps: f64) -> Result<Norm> {
    Ok(Norm::Rms {
        weight: gemma_scale(w, &format!("{prefix}.weight"), width, 1.0)?,
        eps: eps as f32,
    })
}

/// Refuses settings that change results and are not computed here.
fn refuse_unimplemented(cfg: &ConfigJson) -> Result<()> {
    let refuse = |what: String| Err(Error::Unsupported(format!("{}: Gemma3 with {what}", cfg.path.display())));
    if cfg.bool_opt(&["use_bidirectional_attention"]) != Some(true) {
        return refuse("`use_bidirectional_attention` unset or false (causal Gemma3 is a generator, not an encoder)".into());
    }
    for name in ["attn_logit_softcapping"] {
        if let Some(v) = cfg.value.get(name).filter(|v| !v.is_null()) {
            return refuse(format!("`{name}` = {v}"));
        }
    }
    Ok(())
}

/// Builds a bidirectional Gemma3 encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    refuse_unimplemented(cfg)?;
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let kv_heads = cfg.usize_opt(&["num_key_value_heads"]).unwrap_or(heads);
    let head_dim = cfg.usize_opt(&["head_dim"]).unwrap_or(hidden / heads.max(1));
    let inter = cfg.usize(&["intermediate_size"])?;
    let eps = cfg.f64_opt(&["rms_norm_eps"]).unwrap_or(1e-6);
    let bias = cfg.bool_opt(&["attention_bias"]).unwrap_or(false);
    let window = cfg.usize_opt(&["sliding_window"]).unwrap_or(4096);
    let scalar = cfg.f64_opt(&["query_pre_attn_scalar"]).unwrap_or(head_dim as f64);
    let act_name = cfg.str_opt(&["hidden_activation", "hidden_act"]).unwrap_or("gelu_pytorch_tanh");
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported hidden_activation `{act_name}`")))?;
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(cfg.invalid(&format!("{heads} attention heads are not a multiple of {kv_heads} key/value heads")));
    }
    // transformers 5 keeps a theta per layer kind in `rope_parameters`; 4.x has `rope_theta`
    // (full layers) and `rope_local_base_freq` (sliding layers).
    let global_theta = super::rope_theta(cfg, Some("full_attention"))?.unwrap_or(1_000_000.0);
    let local_theta = match cfg.value.get("rope_parameters") {
        Some(_) => super::rope_theta(cfg, Some("sliding_attention"))?,
        None => cfg.f64_opt(&["rope_local_base_freq"]),
    }
    .unwrap_or(10_000.0);
    let layer_types: Option<Vec<String>> = cfg.value.get("layer_types").and_then(|v| {
        v.as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
    });
    let pattern = cfg.usize_opt(&["sliding_window_pattern", "_sliding_window_pattern"]).unwrap_or(6).max(1);
    let layout = HeadLayout { heads, kv_heads, head_dim };
    // The kernels scale scores by 1/√head_dim; Gemma scales by 1/√query_pre_attn_scalar. The
    // difference is folded into the query norm (rotation is linear, so the order is free).
    let query_factor = ((head_dim as f64).sqrt() / scalar.sqrt()) as f32;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let stack = (0..layers)
        .map(|i| {
            let p = |s: &str| format!("layers.{i}.{s}");
            let sliding = match &layer_types {
                Some(types) => types.get(i).is_some_and(|t| t == "sliding_attention"),
                None => (i + 1) % pattern != 0,
            };
            let (mask, theta) = if sliding {
                (Mask::SlidingWindow(window), local_theta)
            } else {
                (Mask::Bidirectional, global_theta)
            };
            let qkv = Linear::concat(
                vec![
                    Linear::load_parts(w, &p("self_attn.q_proj"), hidden, q_width, bias)?,
                    Linear::load_parts(w, &p("self_attn.k_proj"), hidden, kv_width, bias)?,
                    Linear::load_parts(w, &p("self_attn.v_proj"), hidden, kv_width, bias)?,
                ],
                w.dtype(),
            );
            let up = Linear::concat(
                vec![
                    Linear::load_parts(w, &p("mlp.gate_proj"), hidden, inter, false)?,
                    Linear::load_parts(w, &p("mlp.up_proj"), hidden, inter, false)?,
                ],
                w.dtype(),
            );
            Ok(Layer {
                attention: SelfAttention {
                    qkv,
                    out: Linear::load(w, &p("self_attn.o_proj"), q_width, hidden, bias)?,
                    layout,
                    mask,
                    rotary: Some(Rotary::new(head_dim, 1.0, theta, false, max_pos)),
                    qk_norm: Some(QkNorm {
                        q: gemma_scale(w, &p("self_attn.q_norm.weight"), head_dim, query_factor)?,
                        k: gemma_scale(w, &p("self_attn.k_norm.weight"), head_dim, 1.0)?,
                        eps: eps as f32,
                    }),
                },
                attention_norm: Some(gemma_norm(w, &p("input_layernorm"), hidden, eps)?),
                mlp: Mlp {
                    up,
                    down: Linear::load(w, &p("mlp.down_proj"), inter, hidden, false)?,
                    activation,
                    gated: Some(GateOrder::GateFirst),
                },
                mlp_norm: gemma_norm(w, &p("pre_feedforward_layernorm"), hidden, eps)?,
                post_norms: Some(PostNorms {
                    attention: gemma_norm(w, &p("post_attention_layernorm"), hidden, eps)?,
                    mlp: gemma_norm(w, &p("post_feedforward_layernorm"), hidden, eps)?,
                }),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "gemma3_text".into(),
        hidden,
        vocab_size: vocab,
        max_positions: max_pos,
        embeddings: Embeddings {
            word: w.get("embed_tokens.weight", &[vocab, hidden])?,
            position: None,
            position_offset: 0,
            token_type: None,
            // As transformers computes it: √hidden rounded to the weights' dtype (f32).
            scale: Some((hidden as f32).sqrt()),
            lora: None,
            norm: None,
        },
        layers: stack,
        placement: NormPlacement::Pre,
        final_norm: Some(gemma_norm(w, "norm", hidden, eps)?),
        position_bias: None,
    })
}
