//! JinaBERT v2 (jina-embeddings-v2-small/base-en, -code, -de, -zh): a post-norm BERT without
//! position embeddings, symmetric ALiBi attention bias (`-slope_h · |i - j|`) and a gated MLP
//! (`gated_layers` = `[gate | up]` without bias, GELU or ReLU, `wo`, `layernorm`). Its folders say
//! `model_type` `bert` with `position_embedding_type` `alibi`.

use crate::config::{ConfigJson, Dims};
use crate::models::{has_class, model_type_in, Architecture};
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::models::bert::{head_layout, post_norm_layer, PostNormNames};
use crate::transformer::{Embeddings, GateOrder, Norm, NormPlacement, PositionBias, Transformer};
use crate::weights::Weights;

/// The architecture this file declares: BERT folders with ALiBi positions or a JinaBert class
/// (registered before BERT).
pub const ARCHITECTURE: Architecture = Architecture::new("jina_bert", &["bert", "jina_bert"], load).claiming(|cfg| {
        model_type_in(cfg, &["jina_bert"])
            || (model_type_in(cfg, &["bert"])
                && (cfg.str_opt(&["position_embedding_type"]) == Some("alibi")
                    || has_class(cfg, |c| c.starts_with("JinaBert"))))
    }).with_weight_prefixes(&["bert.", "model."]);

/// ALiBi slopes as the original code computes them: a geometric series starting at
/// `2^(-8/n)` for a power-of-two head count, else the nearest lower power of two's series
/// followed by every other slope of the next power of two's.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    fn power_of_two(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
        (0..n).map(|i| start * start.powi(i as i32)).collect()
    }
    if heads == 0 {
        return Vec::new();
    }
    let slopes = if heads.is_power_of_two() {
        power_of_two(heads)
    } else {
        let closest = 1usize << heads.ilog2();
        let mut s = power_of_two(closest);
        let extra = alibi_slopes(2 * closest);
        s.extend(extra.iter().step_by(2).take(heads - closest).map(|&v| v as f64));
        s
    };
    slopes.into_iter().map(|v| v as f32).collect()
}

/// Builds a JinaBERT v2 encoder.
pub fn load(cfg: &ConfigJson, w: &Weights) -> Result<Transformer> {
    let Dims { hidden, layers, heads, vocab, max_pos } = cfg.dims()?;
    let inter = cfg.usize(&["intermediate_size"])?;
    let eps = cfg.f64_opt(&["layer_norm_eps"]).unwrap_or(1e-12);
    let activation = match cfg.str_opt(&["feed_forward_type"]).unwrap_or("geglu") {
        "geglu" => Activation::Gelu,
        "reglu" => Activation::Relu,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: JinaBERT feed_forward_type `{other}` (openembed computes geglu and reglu)",
                cfg.path.display()
            )))
        }
    };
    if let Some(scaling) = cfg.f64_opt(&["alibi_scaling"]).filter(|s| *s != 1.0) {
        return Err(Error::Unsupported(format!("{}: JinaBERT alibi_scaling = {scaling}", cfg.path.display())));
    }
    let layout = head_layout(cfg, hidden, heads)?;
    let token_type = Embeddings::token_type_table(w, "embeddings.token_type_embeddings.weight", hidden)?;
    let names = PostNormNames {
        layer_prefix: "encoder.layer",
        query: "attention.self.query",
        key: "attention.self.key",
        value: "attention.self.value",
        attention_out: "attention.output.dense",
        attention_norm: "attention.output.LayerNorm",
        up: "mlp.gated_layers",
        down: "mlp.wo",
        mlp_norm: "mlp.layernorm",
    };
    let stack = (0..layers)
        .map(|i| post_norm_layer(w, &names, i, hidden, inter, eps, activation, layout, Some(GateOrder::GateFirst)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Transformer {
        architecture: "jina_bert".into(),
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
            norm: Some(Norm::layer(w, "embeddings.LayerNorm", hidden, eps)?),
        },
        layers: stack,
        placement: NormPlacement::Post,
        final_norm: None,
        position_bias: Some(PositionBias::Alibi(alibi_slopes(heads))),
    })
}

#[cfg(test)]
mod tests {
    use super::alibi_slopes;

    #[test]
    fn slopes_match_the_alibi_paper() {
        let s = alibi_slopes(8);
        assert!((s[0] - 0.5).abs() < 1e-7 && (s[7] - 1.0 / 256.0).abs() < 1e-9);
        // 12 heads (BERT-base): the 8-head series, then slopes 1, 3, 5, 7 of the 16-head one.
        let s12 = alibi_slopes(12);
        let s16 = alibi_slopes(16);
        assert_eq!(&s12[..8], &s[..]);
        assert_eq!(&s12[8..], &[s16[0], s16[2], s16[4], s16[6]]);
    }
}
