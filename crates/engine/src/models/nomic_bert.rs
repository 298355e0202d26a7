//! NomicBERT (nomic-embed-text): a post-norm BERT with rotary positions instead of a position
//! table, a fused `Wqkv`, a SwiGLU MLP (`fc11`, gate `fc12`, `fc2`) and, in released models, no
//! biases. Config names as on the hub (`n_embd`, `n_layer`, `n_head`, `n_inner`, `n_positions`,
//! `rotary_emb_*`) or transformers-style (`hidden_size`, …, `rope_parameters`).

use crate::attention::Mask;
use crate::config::{ConfigJson, Dims};
use crate::models::Architecture;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::rotary::Rotary;
use crate::transformer::{Embeddings, GateOrder, Layer, Linear, Mlp, Norm, NormPlacement, SelfAttention, Transformer};
use crate::weights::Weights;

/// The architecture this file declares.
pub const ARCHITECTURE: Architecture = Architecture::new("nomic_bert", &["nomic_bert"], load).with_weight_prefixes(&["bert.", "model."]);

/// Refuses configs whose flags ask for something this file does not compute (any value but the
/// one computed here is refused rather than ignored): scaled or dynamic rotary
/// embeddings, RMSNorm, parallel blocks, causal attention, pre-norm, per-layer attention scaling.
fn refuse_unimplemented(cfg: &ConfigJson) -> Result<()> {
    use serde_json::Value;
    // (name, what the engine computes): absent or null always matches.
    let expected: [(&str, Value); 8] = [
        ("rotary_scaling_factor", Value::Null),
        ("rotary_emb_scale_base", Value::Null),
        ("use_rms_norm", Value::Bool(false)),
        ("parallel_block", Value::Bool(false)),
        ("causal", Value::Bool(false)),
        ("prenorm", Value::Bool(false)),
        ("scale_attn_by_inverse_layer_idx", Value::Bool(false)),
        ("scale_attn_weights", Value::Bool(true)),
    ];
    for (name, want) in expected {
        match cfg.value.get(name) {
            None | Some(Value::Null) => {}
            Some(v) if *v == want => {}
            Some(v) => {
                return Err(Error::Unsupported(format!(
                    "{}: NomicBERT with `{name}` = {v} (openembed computes {name} = {want})",
                    cfg.path.display()
                )))
            }
        }
    }
    Ok(())
}

/// Builds a NomicBERT encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let inter = cfg.usize_opt(&["n_inner", "intermediate_size"]).unwrap_or(4 * hidden);
    let eps = cfg.f64_opt(&["layer_norm_epsilon", "layer_norm_eps"]).unwrap_or(1e-12);
    let theta = match cfg.f64_opt(&["rotary_emb_base"]) {
        Some(t) => t,
        None => super::rope_theta(cfg, None)?.unwrap_or(10_000.0),
    };
    let fraction = cfg.f64_opt(&["rotary_emb_fraction"]).unwrap_or(1.0);
    let interleaved = cfg.bool_opt(&["rotary_emb_interleaved"]).unwrap_or(false);
    refuse_unimplemented(cfg)?;
    let act_name = match cfg.str_opt(&["activation_function", "hidden_act"]).unwrap_or("swiglu") {
        "swiglu" => "silu",
        "geglu" => "gelu",
        other => other,
    };
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported activation `{act_name}`")))?;
    let layout = super::bert::head_layout(cfg, hidden, heads)?;
    let token_type = Embeddings::token_type_table(w, "embeddings.token_type_embeddings.weight", hidden)?;
    let stack = (0..layers)
        .map(|i| {
            let p = |s: &str| format!("encoder.layers.{i}.{s}");
            let fc11 = &p("mlp.fc11");
            let fc12 = &p("mlp.fc12");
            let up = Linear::concat(vec![
                Linear::load_parts(w, fc11, hidden, inter, w.contains(&format!("{fc11}.bias")))?,
                Linear::load_parts(w, fc12, hidden, inter, w.contains(&format!("{fc12}.bias")))?,
            ], w.dtype());
            Ok(Layer {
                attention: SelfAttention {
                    qkv: Linear::load_opt_bias(w, &p("attn.Wqkv"), hidden, 3 * hidden)?,
                    out: Linear::load_opt_bias(w, &p("attn.out_proj"), hidden, hidden)?,
                    layout,
                    mask: Mask::Bidirectional,
                    rotary: Some(Rotary::new(layout.head_dim, fraction, theta, interleaved, max_pos)),
                    qk_norm: None,
                },
                attention_norm: Some(Norm::layer(w, &p("norm1"), hidden, eps)?),
                mlp: Mlp {
                    // [fc11 | fc12]: fc11(x) * act(fc12(x)).
                    up,
                    down: Linear::load_opt_bias(w, &p("mlp.fc2"), inter, hidden)?,
                    activation,
                    gated: Some(GateOrder::UpFirst),
                },
                mlp_norm: Norm::layer(w, &p("norm2"), hidden, eps)?,
                post_norms: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "nomic_bert".into(),
        hidden,
        vocab_size: vocab,
        max_positions: max_pos,
        embeddings: Embeddings {
            word: w.get("embeddings.word_embeddings.weight", &[vocab, hidden])?,
            position: None,
            position_offset: 0,
            token_type,
            scale: None,
            lora: None,
            norm: Some(Norm::layer(w, "emb_ln", hidden, eps)?),
        },
        layers: stack,
        placement: NormPlacement::Post,
        final_norm: None,
        position_bias: None,
    })
}
