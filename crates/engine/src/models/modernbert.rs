//! ModernBERT (gte-modernbert, modernbert-embed): pre-LayerNorm without biases, GeGLU MLP,
//! rotary positions with a global and a local theta, sliding-window attention on all layers but
//! every `global_attn_every_n_layers`-th, identity attention norm on the first layer, final norm.

use crate::attention::Mask;
use crate::config::{ConfigJson, Dims};
use crate::models::Architecture;
use crate::error::{Error, Result};
use crate::pooling::Pooling;
use crate::rerank::RerankHead;
use crate::kernels::activation::Activation;
use crate::rotary::Rotary;
use crate::transformer::{Embeddings, GateOrder, Layer, Linear, Mlp, Norm, NormPlacement, SelfAttention, Transformer};
use crate::weights::Weights;

/// The architecture this file declares.
pub const ARCHITECTURE: Architecture = Architecture::new("modernbert", &["modernbert"], load).with_classifier(classifier);

/// Builds a ModernBERT encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let inter = cfg.usize(&["intermediate_size"])?;
    let eps = cfg.f64_opt(&["norm_eps"]).unwrap_or(1e-5);
    let every = cfg.usize_opt(&["global_attn_every_n_layers"]).unwrap_or(3).max(1);
    let window = cfg.usize_opt(&["local_attention"]).unwrap_or(128);
    let global_theta = super::rope_theta(cfg, Some("full_attention"))?
        .or(cfg.f64_opt(&["global_rope_theta"]))
        .unwrap_or(160_000.0);
    let local_theta = super::rope_theta(cfg, Some("sliding_attention"))?
        .or(cfg.f64_opt(&["local_rope_theta"]))
        .unwrap_or(10_000.0);
    let act_name = cfg.str_opt(&["hidden_activation", "hidden_act"]).unwrap_or("gelu");
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported hidden_activation `{act_name}`")))?;
    let layout = super::bert::head_layout(cfg, hidden, heads)?;
    let layer_types: Option<Vec<String>> = cfg.value.get("layer_types").and_then(|v| {
        v.as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
    });
    let stack = (0..layers)
        .map(|i| {
            let p = |s: &str| format!("layers.{i}.{s}");
            let global = match &layer_types {
                Some(types) => types.get(i).is_none_or(|t| t == "full_attention"),
                None => i % every == 0,
            };
            let (mask, theta) =
                if global { (Mask::Bidirectional, global_theta) } else { (Mask::SlidingWindow(window), local_theta) };
            let attention_norm = if w.contains(&p("attn_norm.weight")) {
                Some(Norm::layer(w, &p("attn_norm"), hidden, eps)?)
            } else {
                None // identity on the first layer
            };
            Ok(Layer {
                attention: SelfAttention {
                    qkv: Linear::load_opt_bias(w, &p("attn.Wqkv"), hidden, 3 * hidden)?,
                    out: Linear::load_opt_bias(w, &p("attn.Wo"), hidden, hidden)?,
                    layout,
                    mask,
                    rotary: Some(Rotary::new(layout.head_dim, 1.0, theta, false, max_pos)),
                    qk_norm: None,
                },
                attention_norm,
                mlp: Mlp {
                    // Wi gives [input | gate]; GeGLU is act(input) * gate.
                    up: Linear::load_opt_bias(w, &p("mlp.Wi"), hidden, 2 * inter)?,
                    down: Linear::load_opt_bias(w, &p("mlp.Wo"), inter, hidden)?,
                    activation,
                    gated: Some(GateOrder::GateFirst),
                },
                mlp_norm: Norm::layer(w, &p("mlp_norm"), hidden, eps)?,
                post_norms: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "modernbert".into(),
        hidden,
        vocab_size: vocab,
        max_positions: max_pos,
        embeddings: Embeddings {
            word: w.get("embeddings.tok_embeddings.weight", &[vocab, hidden])?,
            position: None,
            position_offset: 0,
            token_type: None,
            scale: None,
            lora: None,
            norm: Some(Norm::layer(w, "embeddings.norm", hidden, eps)?),
        },
        layers: stack,
        placement: NormPlacement::Pre,
        final_norm: Some(Norm::layer(w, "final_norm", hidden, eps)?),
        position_bias: None,
    })
}

/// ModernBERT's sequence-classification head: `classifier(head.norm(act(head.dense(pool(h)))))`, pooled
/// by `classifier_pooling`, activated by `classifier_activation`.
fn classifier(cfg: &ConfigJson, w: &Weights, hidden: usize, labels: usize) -> Result<RerankHead> {
    let pooling = match cfg.str_opt(&["classifier_pooling"]).unwrap_or("cls") {
        "cls" => Pooling::Cls,
        "mean" => Pooling::Mean,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: classifier_pooling `{other}`",
                cfg.path.display()
            )))
        }
    };
    let act = cfg.str_opt(&["classifier_activation"]).unwrap_or("gelu");
    Ok(RerankHead::Pooled {
        pooling,
        dense: Linear::load_opt_bias(w, "head.dense", hidden, hidden)?,
        activation: Activation::from_name(act)
            .ok_or_else(|| cfg.invalid(&format!("unsupported classifier_activation `{act}`")))?,
        norm: Norm::layer(w, "head.norm", hidden, cfg.f64_opt(&["norm_eps"]).unwrap_or(1e-5))?,
        out: Linear::load_opt_bias(w, "classifier", hidden, labels)?,
    })
}
