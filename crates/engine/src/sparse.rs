//! Learned sparse vectors (SPLADE, sentence-transformers' `SparseEncoder`: `MLMTransformer` +
//! `SpladePooling`): the masked-LM head turns every token's hidden state into one logit per
//! vocabulary entry, `log(1 + relu(logit))` makes them non-negative, and the text's weight of
//! each entry is their max (or sum) over the text's tokens. The output is one weight per
//! vocabulary entry, almost all zero; front ends hand back the non-zero ones.

use crate::config::{read_json, ConfigJson};
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::transformer::{Linear, Norm};
use crate::weights::Weights;
use std::path::Path;

/// How token weights become the text's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpladeStrategy {
    /// The largest over the tokens.
    Max,
    /// The sum over the tokens.
    Sum,
}

/// What turns a logit into a token's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpladeActivation {
    /// `log(1 + relu(x))` (`relu`).
    Relu,
    /// `log(1 + log(1 + relu(x)))` (`log1p_relu`, OpenSearch's inference-free documents).
    Log1pRelu,
}

/// `SpladePooling`'s configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpladePooling {
    /// Max or sum over tokens.
    pub strategy: SpladeStrategy,
    /// The activation before pooling.
    pub activation: SpladeActivation,
}

impl SpladePooling {
    /// Reads `config.json` of a `SpladePooling` module folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let v = if path.exists() {
            read_json(&path)?
        } else {
            serde_json::Value::Null
        };
        let strategy = match v.get("pooling_strategy").and_then(|s| s.as_str()).unwrap_or("max") {
            "max" => SpladeStrategy::Max,
            "sum" => SpladeStrategy::Sum,
            other => {
                return Err(Error::InvalidFile {
                    path,
                    message: format!("pooling_strategy `{other}` (expected max or sum)"),
                })
            }
        };
        let activation = match v.get("activation_function").and_then(|s| s.as_str()).unwrap_or("relu") {
            "relu" => SpladeActivation::Relu,
            "log1p_relu" => SpladeActivation::Log1pRelu,
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: SPLADE activation_function `{other}` (openembed applies relu or log1p_relu)",
                    path.display()
                )))
            }
        };
        Ok(Self { strategy, activation })
    }
}

/// The masked-LM head: `decoder(norm(act(dense(h))))`, the decoder tied to the word embeddings
/// unless the checkpoint has its own.
pub struct MlmHead {
    dense: Linear,
    activation: Activation,
    norm: Norm,
    decoder: Linear,
    /// Vocabulary entries (the decoder's outputs).
    pub vocab: usize,
}

/// Tensor names of a family's MLM head: (dense, norm, own decoder, tied table, bias).
const HEADS: [(&str, &str, &str, &str, &str); 3] = [
    // BERT (`BertForMaskedLM`).
    (
        "cls.predictions.transform.dense",
        "cls.predictions.transform.LayerNorm",
        "cls.predictions.decoder",
        "embeddings.word_embeddings",
        "cls.predictions.bias",
    ),
    // RoBERTa / XLM-R (`RobertaForMaskedLM`).
    (
        "lm_head.dense",
        "lm_head.layer_norm",
        "lm_head.decoder",
        "embeddings.word_embeddings",
        "lm_head.bias",
    ),
    // DistilBERT (`DistilBertForMaskedLM`).
    (
        "vocab_transform",
        "vocab_layer_norm",
        "vocab_projector",
        "embeddings.word_embeddings",
        "vocab_projector.bias",
    ),
];

impl MlmHead {
    /// Loads the head of a `*ForMaskedLM` checkpoint (BERT, RoBERTa or DistilBERT layout).
    pub fn load(cfg: &ConfigJson, w: &Weights, hidden: usize, vocab: usize) -> Result<Self> {
        let (dense, norm, own, tied, bias) = HEADS
            .iter()
            .copied()
            .find(|(dense, ..)| w.contains(&format!("{dense}.weight")))
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: a SPLADE model without a BERT, RoBERTa or DistilBERT masked-LM head (cls.predictions.*, lm_head.*, vocab_transform.*)",
                    cfg.path.display()
                ))
            })?;
        let act = cfg.str_opt(&["hidden_act", "activation"]).unwrap_or("gelu");
        let activation =
            Activation::from_name(act).ok_or_else(|| cfg.invalid(&format!("unsupported hidden_act `{act}`")))?;
        let eps = cfg.f64_opt(&["layer_norm_eps"]).unwrap_or(1e-12);
        let table = if w.contains(&format!("{own}.weight")) {
            own
        } else {
            tied
        };
        let weight = w.get(&format!("{table}.weight"), &[vocab, hidden])?;
        let bias = match w.get_opt(bias, &[vocab])? {
            Some(b) => Some(b),
            None => w.get_opt(&format!("{own}.bias"), &[vocab])?,
        };
        Ok(Self {
            dense: Linear::load(w, dense, hidden, hidden, true)?,
            activation,
            norm: Norm::layer(w, norm, hidden, eps)?,
            decoder: Linear::new(weight, bias, w.dtype()),
            vocab,
        })
    }

    /// The text's vocabulary weights from its tokens' hidden states (`tokens × hidden`), into
    /// `out` (`vocab` long): `log(1 + relu(logit))`, pooled over the tokens.
    pub fn weights(
        &self,
        hidden_states: &[f32],
        hidden: usize,
        pooling: SpladePooling,
        out: &mut [f32],
        threads: usize,
    ) {
        let tokens = hidden_states.len() / hidden.max(1);
        out.fill(0.0);
        if tokens == 0 {
            return;
        }
        let mut x = vec![0.0f32; tokens * hidden];
        self.dense
            .forward_act(hidden_states, tokens, &mut x, self.activation, threads);
        let mut normed = vec![0.0f32; tokens * hidden];
        self.norm.apply(&x, &mut normed, hidden);
        let mut logits = vec![0.0f32; tokens * self.vocab];
        self.decoder.forward(&normed, tokens, &mut logits, threads);
        for row in logits.chunks_exact(self.vocab) {
            for (o, &l) in out.iter_mut().zip(row) {
                let v = match pooling.activation {
                    SpladeActivation::Relu => l.max(0.0).ln_1p(),
                    SpladeActivation::Log1pRelu => l.max(0.0).ln_1p().ln_1p(),
                };
                match pooling.strategy {
                    SpladeStrategy::Max => *o = o.max(v),
                    SpladeStrategy::Sum => *o += v,
                }
            }
        }
    }
}

/// The query side of an inference-free sparse model (sentence-transformers'
/// `SparseStaticEmbedding`, as OpenSearch's inference-free encoders ship it): no transformer —
/// a query's weight of each distinct token id it contains is that id's entry of a fixed table.
pub struct SparseStatic {
    weights: Vec<f32>,
    tokenizer: crate::tokenize::TextTokenizer,
}

impl SparseStatic {
    /// Loads a `SparseStaticEmbedding` folder: `model.safetensors` (`weight`, one per vocabulary
    /// entry) and its tokenizer, used without special tokens and cut at `model_max_length`.
    pub fn load(dir: &Path) -> Result<Self> {
        let limit = read_json(&dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|v| v.get("model_max_length").and_then(|n| n.as_u64()))
            .filter(|&n| n > 0 && n < 1 << 20)
            .map_or(512, |n| n as usize);
        let tokenizer = crate::tokenize::TextTokenizer::load(dir, limit)?.without_special_tokens();
        let w = Weights::open(dir, "SparseStaticEmbedding", &[])?;
        let shape = w.shape_of("weight").map(<[usize]>::to_vec).unwrap_or_default();
        let [vocab] = shape[..] else {
            return Err(Error::InvalidFile {
                path: dir.join("model.safetensors"),
                message: format!("expected a one-dimensional `weight` (one per vocabulary entry), found {shape:?}"),
            });
        };
        let weights = w.get("weight", &[vocab])?.data().to_vec();
        Ok(Self { weights, tokenizer })
    }

    /// The tokenizer of queries (no special tokens).
    pub fn tokenizer(&self) -> &crate::tokenize::TextTokenizer {
        &self.tokenizer
    }

    /// Entries of the table.
    pub fn vocab(&self) -> usize {
        self.weights.len()
    }

    /// A query's weights from its token ids: each distinct id once, dense (`vocab` long).
    pub fn weights(&self, ids: &[u32]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.weights.len()];
        for &id in ids {
            if let (Some(o), Some(&w)) = (out.get_mut(id as usize), self.weights.get(id as usize)) {
                *o = w;
            }
        }
        out
    }
}
