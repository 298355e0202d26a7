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
            decoder: Linear::new(weight, bias, decoder_dtype(w.dtype())),
            vocab,
        })
    }

    /// The text's vocabulary weights from its tokens' hidden states (`tokens × hidden`), into
    /// `out` (`vocab` long): `log(1 + relu(logit))`, pooled over the tokens.
    ///
    /// The logits are computed [`LOGIT_ROWS`] tokens at a time (bounded memory whatever the
    /// length). Max pooling takes the largest logit per entry and applies the activation once
    /// per entry: both activations are non-decreasing, so that is the max of the activated
    /// values, without a logarithm per token and entry.
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
        drop(x);
        let activate = |l: f32| match pooling.activation {
            SpladeActivation::Relu => l.max(0.0).ln_1p(),
            SpladeActivation::Log1pRelu => l.max(0.0).ln_1p().ln_1p(),
        };
        let rows = tokens.min(LOGIT_ROWS);
        let mut logits = vec![0.0f32; rows * self.vocab];
        // Max pooling: the running max of the raw logits (relu's floor is 0).
        let mut top = vec![
            0.0f32;
            if pooling.strategy == SpladeStrategy::Max {
                self.vocab
            } else {
                0
            }
        ];
        for chunk in normed.chunks(LOGIT_ROWS * hidden) {
            let n = chunk.len() / hidden;
            let logits = &mut logits[..n * self.vocab];
            self.decoder.forward(chunk, n, logits, threads);
            for row in logits.chunks_exact(self.vocab) {
                match pooling.strategy {
                    SpladeStrategy::Max => top.iter_mut().zip(row).for_each(|(m, &l)| *m = m.max(l)),
                    SpladeStrategy::Sum => out.iter_mut().zip(row).for_each(|(o, &l)| *o += activate(l)),
                }
            }
        }
        if pooling.strategy == SpladeStrategy::Max {
            for (o, m) in out.iter_mut().zip(top) {
                *o = if m > 0.0 { activate(m) } else { 0.0 };
            }
        }
    }
}

/// The precision of the vocabulary projection: the model's, except that an int8 model runs it in
/// bf16 where the CPU has AMX. Measured there (openembed-bench --workloads sparse, BERT-base,
/// 30,522 entries): 1.47× the dense vector's cost instead of 1.6× (bf16 spares the activation
/// quantization and the dequantizing epilogue of a 30,522-wide output), and closer to float32.
/// On CPUs without AMX int8 stays (its VNNI kernel is the faster there).
fn decoder_dtype(dtype: crate::DType) -> crate::DType {
    if dtype == crate::DType::Int8 && crate::kernels::bf16::amx_usable() {
        crate::DType::Bfloat16
    } else {
        dtype
    }
}

/// Tokens whose vocabulary logits are held at once (about 16 MB at a 30,522-entry vocabulary):
/// enough rows for the decoder's GEMM to run at full speed.
const LOGIT_ROWS: usize = 128;

impl MlmHead {
    /// [`Self::weights`] of several inputs of one packed batch at once (`hidden_states`: the
    /// batch's `tokens × hidden` rows; `inputs`: each input's token range), as each input's
    /// non-zero `(id, weight)` pairs by id. The tokens of all inputs share the head's GEMMs,
    /// [`LOGIT_ROWS`] at a time, and each input's pooled row lives only while its tokens are
    /// in flight.
    pub fn sparse_rows(
        &self,
        hidden_states: &[f32],
        hidden: usize,
        inputs: &[std::ops::Range<usize>],
        pooling: SpladePooling,
        threads: usize,
    ) -> Vec<Vec<(u32, f32)>> {
        use rayon::prelude::*;
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
        let mut logits = vec![0.0f32; tokens.min(LOGIT_ROWS) * vocab];
        // Pooled rows of the inputs whose tokens are in flight (max: of raw logits).
        let mut open: Vec<(usize, Vec<f32>)> = Vec::new();
        let finish = |input: usize, acc: Vec<f32>, out: &mut Vec<Vec<(u32, f32)>>| {
            out[input] = acc
                .into_iter()
                .enumerate()
                .filter_map(|(id, v)| {
                    let w = match pooling.strategy {
                        SpladeStrategy::Max if v > 0.0 => activate(v),
                        SpladeStrategy::Max => 0.0,
                        SpladeStrategy::Sum => v,
                    };
                    (w != 0.0).then_some((id as u32, w))
                })
                .collect();
        };
        for (c, chunk) in rows.chunks(LOGIT_ROWS * hidden).enumerate() {
            let n = chunk.len() / hidden;
            let first = c * LOGIT_ROWS;
            let logits = &mut logits[..n * vocab];
            self.decoder.forward(chunk, n, logits, threads);
            // Open the inputs that start in this chunk.
            for &input in &owner[first..first + n] {
                if open.last().is_none_or(|(i, _)| *i != input) {
                    open.push((input, vec![0.0f32; vocab]));
                }
            }
            // Fold the chunk's rows into their inputs, the vocabulary split among the threads.
            let blocks = vocab.div_ceil(threads.max(1) * 4).max(1024);
            let logits = &*logits;
            // Each row's place among the open inputs (in order, as the rows are).
            let mut slot = Vec::with_capacity(n);
            let mut at = 0;
            for &input in &owner[first..first + n] {
                while open[at].0 != input {
                    at += 1;
                }
                slot.push(at);
            }
            let slot = &slot;
            let mut accs: Vec<&mut Vec<f32>> = open.iter_mut().map(|(_, acc)| acc).collect();
            let mut columns: Vec<(usize, Vec<&mut [f32]>)> = Vec::new();
            {
                let mut splits: Vec<std::slice::ChunksMut<'_, f32>> =
                    accs.iter_mut().map(|a| a.chunks_mut(blocks)).collect();
                for b in 0..vocab.div_ceil(blocks) {
                    columns.push((b * blocks, splits.iter_mut().filter_map(|s| s.next()).collect()));
                }
            }
            columns.into_par_iter().for_each(|(c0, mut accs)| {
                for (k, row) in logits.chunks_exact(vocab).enumerate() {
                    let acc = &mut accs[slot[k]];
                    let src = &row[c0..c0 + acc.len()];
                    match pooling.strategy {
                        SpladeStrategy::Max => acc.iter_mut().zip(src).for_each(|(m, &l)| *m = m.max(l)),
                        SpladeStrategy::Sum => acc.iter_mut().zip(src).for_each(|(o, &l)| *o += activate(l)),
                    }
                }
            });
            // Inputs whose last token was in this chunk are done.
            let last = owner[first + n - 1];
            let still_open = tokens > first + n && owner[first + n] == last;
            let done = open.len() - usize::from(still_open);
            for (input, acc) in open.drain(..done) {
                finish(input, acc, &mut out);
            }
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
