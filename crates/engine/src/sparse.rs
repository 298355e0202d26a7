//! Learned sparse vectors (SPLADE, sentence-transformers' `SparseEncoder`: `MLMTransformer` +
//! `SpladePooling`): the masked-LM head turns every token's hidden state into one logit per
//! vocabulary entry, `log(1 + relu(logit))` makes them non-negative, and the text's weight of
//! each entry is their max (or sum) over the text's tokens. The output is one weight per
//! vocabulary entry, almost all zero; front ends hand back the non-zero ones.

use crate::config::{read_json, ConfigJson};
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::kernels::sgemm::SendPtr;
use crate::kernels::FoldTile;
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
    /// `out` (`vocab` long): `log(1 + relu(logit))`, pooled over the tokens
    /// ([`Self::sparse_rows`] of one input).
    pub fn weights(
        &self,
        hidden_states: &[f32],
        hidden: usize,
        pooling: SpladePooling,
        out: &mut [f32],
        threads: usize,
    ) {
        out.fill(0.0);
        let tokens = hidden_states.len() / hidden.max(1);
        let whole = std::iter::once(0..tokens).collect::<Vec<_>>();
        let rows = self.sparse_rows(hidden_states, hidden, &whole, pooling, threads);
        for (id, w) in rows.into_iter().flatten() {
            out[id as usize] = w;
        }
    }
}

/// Tokens that go through the vocabulary projection in one call: its weights are read from
/// memory once per call, and a fused fold keeps these rows' bf16 copy (768 KB at BERT-base
/// width) in L2 beside the weight block it meets.
const HEAD_ROWS: usize = 512;

/// Inputs whose pooled rows are open in one call (each a whole vocabulary of fp32: 7.8 MB in
/// all at 30,522 entries).
const HEAD_INPUTS: usize = 64;

impl MlmHead {
    /// [`Self::weights`] of several inputs of one packed batch at once (`hidden_states`: the
    /// batch's `tokens × hidden` rows; `inputs`: each input's token range), as each input's
    /// non-zero `(id, weight)` pairs by id. The tokens of all inputs share the head's GEMMs,
    /// [`HEAD_ROWS`] at a time, and the vocabulary projection's output is pooled into each
    /// input's row as it is computed ([`Linear::forward_fold`]): max pooling takes the largest
    /// logit per entry and activates once per entry (both activations are non-decreasing, so
    /// that is the max of the activated values, without a logarithm per token and entry).
    pub fn sparse_rows(
        &self,
        hidden_states: &[f32],
        hidden: usize,
        inputs: &[std::ops::Range<usize>],
        pooling: SpladePooling,
        threads: usize,
    ) -> Vec<Vec<(u32, f32)>> {
        let mut out = vec![Vec::new(); inputs.len()];
        // The inputs' rows end to end, each tagged with its input.
        let owner: Vec<usize> = inputs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| std::iter::repeat_n(i, r.len()))
            .collect();
        let tokens = owner.len();
        if tokens == 0 {
            return out;
        }
        let mut rows = Vec::with_capacity(tokens * hidden);
        for r in inputs {
            rows.extend_from_slice(&hidden_states[r.start * hidden..r.end * hidden]);
        }
        let mut x = vec![0.0f32; tokens * hidden];
        self.dense.forward_act(&rows, tokens, &mut x, self.activation, threads);
        self.norm.apply(&x, &mut rows, hidden);
        drop(x);
        let activate = |l: f32| match pooling.activation {
            SpladeActivation::Relu => l.max(0.0).ln_1p(),
            SpladeActivation::Log1pRelu => l.max(0.0).ln_1p().ln_1p(),
        };
        let vocab = self.vocab;
        let zeros;
        let bias = match self.decoder.bias() {
            Some(b) => b,
            None => {
                zeros = vec![0.0f32; vocab];
                &zeros
            }
        };
        let open_rows = inputs.len().min(HEAD_INPUTS);
        // Pooled rows of the call's inputs: max pooling keeps the largest product per entry
        // (the bias is added once, after: max(x + b) = max(x) + b), sum pooling the sum of the
        // activated logits.
        let empty = match pooling.strategy {
            SpladeStrategy::Max => f32::NEG_INFINITY,
            SpladeStrategy::Sum => 0.0,
        };
        let mut table = vec![empty; open_rows * vocab];
        // Each token's row of the table in the current call.
        let mut slot = vec![0usize; HEAD_ROWS];
        let mut start = 0;
        while start < tokens {
            // The call's tokens: up to HEAD_ROWS, whole inputs past the first while they fit in
            // the table; an input longer than that continues in the next call in the same row.
            let (mut end, mut opened) = (start, 0);
            while end < tokens && end - start < HEAD_ROWS {
                if end == start || owner[end] != owner[end - 1] {
                    if opened == open_rows {
                        break;
                    }
                    opened += 1;
                }
                slot[end - start] = opened - 1;
                end += 1;
            }
            let table_ptr = SendPtr(table.as_mut_ptr());
            let table_ptr = &table_ptr;
            let slot = &slot;
            let fold = |t: FoldTile| {
                for i in 0..t.rows {
                    let src = &t.values[i * t.ld..][..t.cols];
                    // SAFETY: the row `slot` names lies inside the table (`opened ≤ open_rows`
                    // rows) and the columns inside the vocabulary; folds never run at once
                    // on the same columns (the `Fold` contract), so this slice is not aliased.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(table_ptr.0.add(slot[t.row + i] * vocab + t.col), t.cols)
                    };
                    match pooling.strategy {
                        SpladeStrategy::Max => dst.iter_mut().zip(src).for_each(|(m, &l)| *m = m.max(l)),
                        SpladeStrategy::Sum => {
                            let b = &bias[t.col..t.col + t.cols];
                            dst.iter_mut()
                                .zip(src)
                                .zip(b)
                                .for_each(|((o, &l), &b)| *o += activate(l + b))
                        }
                    }
                }
            };
            self.decoder
                .forward_fold(&rows[start * hidden..end * hidden], end - start, &fold, threads);
            // Every input of the call is done but one that continues past `end`.
            let continues = end < tokens && owner[end] == owner[end - 1];
            let mut g = 0;
            for t in start..end {
                let input = owner[t];
                if t + 1 < end && owner[t + 1] == input {
                    continue;
                }
                let acc = &mut table[g * vocab..(g + 1) * vocab];
                g += 1;
                if t + 1 == end && continues {
                    // Carried into row 0 of the next call (the other rows are reset already).
                    if g > 1 {
                        let (head, tail) = table.split_at_mut((g - 1) * vocab);
                        head[..vocab].copy_from_slice(&tail[..vocab]);
                        tail[..vocab].fill(empty);
                    }
                    break;
                }
                out[input] = acc
                    .iter()
                    .zip(bias)
                    .enumerate()
                    .filter_map(|(id, (&v, &b))| {
                        let w = match pooling.strategy {
                            SpladeStrategy::Max if v + b > 0.0 => activate(v + b),
                            SpladeStrategy::Max => 0.0,
                            SpladeStrategy::Sum => v,
                        };
                        (w != 0.0).then_some((id as u32, w))
                    })
                    .collect();
                acc.fill(empty);
            }
            start = end;
        }
        out
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
