//! Qwen3 (Qwen3-Embedding): a decoder — causal attention, pre-RMSNorm, per-head q/k RMSNorm,
//! grouped-query attention, rotary positions, SwiGLU MLP, final RMSNorm; pooled by last token.
//! Causality holds per sequence in a packed batch because masks and positions are per sequence.

use crate::attention::{HeadLayout, Mask};
use crate::config::{ConfigJson, Dims};
use crate::models::{has_class, Architecture, YesNoReranker};
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::rotary::Rotary;
use crate::transformer::{
    Embeddings, GateOrder, Layer, Linear, Mlp, Norm, NormPlacement, QkNorm, SelfAttention, Transformer,
};
use crate::weights::Weights;

/// The architecture this file declares; its `Qwen3ForCausalLM` folders without
/// sentence-transformers files are yes/no rerankers (Qwen3-Reranker; Qwen3-Embedding ships them).
pub const ARCHITECTURE: Architecture = Architecture::new("qwen3", &["qwen3"], load).with_yes_no(YesNoReranker {
    detect: |dir, cfg| has_class(cfg, |c| c == "Qwen3ForCausalLM") && !dir.join("modules.json").exists(),
    tables: &["lm_head.weight", "embed_tokens.weight"],
});

/// Builds a Qwen3 decoder stack.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let kv_heads = cfg.usize_opt(&["num_key_value_heads"]).unwrap_or(heads);
    let head_dim = cfg.usize_opt(&["head_dim"]).unwrap_or(hidden / heads.max(1));
    let inter = cfg.usize(&["intermediate_size"])?;
    let eps = cfg.f64_opt(&["rms_norm_eps"]).unwrap_or(1e-6);
    let bias = cfg.bool_opt(&["attention_bias"]).unwrap_or(false);
    let act_name = cfg.str_opt(&["hidden_act"]).unwrap_or("silu");
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported hidden_act `{act_name}`")))?;
    if cfg.bool_opt(&["use_sliding_window"]) == Some(true) {
        return Err(Error::Unsupported(format!("{}: Qwen3 with use_sliding_window", cfg.path.display())));
    }
    let theta = super::rope_theta(cfg, None)?.unwrap_or(1_000_000.0);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(cfg.invalid(&format!("{heads} attention heads are not a multiple of {kv_heads} key/value heads")));
    }
    let layout = HeadLayout { heads, kv_heads, head_dim };
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let stack = (0..layers)
        .map(|i| {
            let p = |s: &str| format!("layers.{i}.{s}");
            let qkv = Linear::concat(vec![
                Linear::load_parts(w, &p("self_attn.q_proj"), hidden, q_width, bias)?,
                Linear::load_parts(w, &p("self_attn.k_proj"), hidden, kv_width, bias)?,
                Linear::load_parts(w, &p("self_attn.v_proj"), hidden, kv_width, bias)?,
            ], w.dtype());
            let up = Linear::concat(vec![
                Linear::load_parts(w, &p("mlp.gate_proj"), hidden, inter, false)?,
                Linear::load_parts(w, &p("mlp.up_proj"), hidden, inter, false)?,
            ], w.dtype());
            Ok(Layer {
                attention: SelfAttention {
                    qkv,
                    out: Linear::load(w, &p("self_attn.o_proj"), q_width, hidden, bias)?,
                    layout,
                    mask: Mask::Causal,
                    rotary: Some(Rotary::new(head_dim, 1.0, theta, false, max_pos)),
                    qk_norm: Some(QkNorm::rms(w, &p("self_attn"), head_dim, eps)?),
                },
                attention_norm: Some(Norm::rms(w, &p("input_layernorm"), hidden, eps)?),
                mlp: Mlp {
                    up,
                    down: Linear::load(w, &p("mlp.down_proj"), inter, hidden, false)?,
                    activation,
                    gated: Some(GateOrder::GateFirst),
                },
                mlp_norm: Norm::rms(w, &p("post_attention_layernorm"), hidden, eps)?,
                post_norms: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "qwen3".into(),
        hidden,
        vocab_size: vocab,
        max_positions: max_pos,
        embeddings: Embeddings {
            word: w.get("embed_tokens.weight", &[vocab, hidden])?,
            position: None,
            position_offset: 0,
            token_type: None,
            scale: None,
            lora: None,
            norm: None,
        },
        layers: stack,
        placement: NormPlacement::Pre,
        final_norm: Some(Norm::rms(w, "norm", hidden, eps)?),
        position_bias: None,
    })
}
