//! DistilBERT: BERT without token types, with its own tensor names and config keys.

use super::bert::{post_norm_layer, PostNormNames};
use crate::config::{ConfigJson, Dims};
use crate::models::Architecture;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::transformer::{Embeddings, Norm, NormPlacement, Transformer};
use crate::weights::Weights;

/// The architecture this file declares.
pub const ARCHITECTURE: Architecture = Architecture::new("distilbert", &["distilbert"], load).with_weight_prefixes(&["distilbert.", "model."]);

/// Builds a DistilBERT encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let inter = cfg.usize(&["hidden_dim", "intermediate_size"])?;
    let act_name = cfg.str_opt(&["activation"]).unwrap_or("gelu");
    let activation = Activation::from_name(act_name)
        .ok_or_else(|| cfg.invalid(&format!("unsupported activation `{act_name}`")))?;
    if cfg.bool_opt(&["sinusoidal_pos_embds"]) == Some(true) && !w.contains("embeddings.position_embeddings.weight") {
        return Err(Error::Unsupported(format!("{}: sinusoidal_pos_embds without stored table", cfg.path.display())));
    }
    let eps = 1e-12;
    let layout = super::bert::head_layout(cfg, hidden, heads)?;
    let embeddings = Embeddings {
        word: w.get("embeddings.word_embeddings.weight", &[vocab, hidden])?,
        position: Some(w.get("embeddings.position_embeddings.weight", &[max_pos, hidden])?),
        position_offset: 0,
        token_type: None,
        scale: None,
        lora: None,
        norm: Some(Norm::layer(w, "embeddings.LayerNorm", hidden, eps)?),
    };
    let names = PostNormNames {
        layer_prefix: "transformer.layer",
        query: "attention.q_lin",
        key: "attention.k_lin",
        value: "attention.v_lin",
        attention_out: "attention.out_lin",
        attention_norm: "sa_layer_norm",
        up: "ffn.lin1",
        down: "ffn.lin2",
        mlp_norm: "output_layer_norm",
    };
    let stack = (0..layers)
        .map(|i| post_norm_layer(w, &names, i, hidden, inter, eps, activation, layout, None))
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "distilbert".into(),
        hidden,
        vocab_size: vocab,
        max_positions: max_pos,
        embeddings,
        layers: stack,
        placement: NormPlacement::Post,
        final_norm: None,
        position_bias: None,
    })
}
