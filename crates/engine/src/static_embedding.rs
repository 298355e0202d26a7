//! Static embedding models: a token → vector table and a mean, no transformer. Two on-disk
//! formats, each with its own semantics:
//!
//! - sentence-transformers' `StaticEmbedding` module (`model.safetensors` key
//!   `embedding.weight`, e.g. static-retrieval-mrl-en-v1): every token of the text, the unknown
//!   token included, goes into the mean;
//! - model2vec's folder (`config.json` `model_type` `model2vec`, key `embeddings`, optional
//!   per-token `weights` and vocabulary-quantization `mapping`; potion-base-8M …): the unknown
//!   token is dropped and a text with no other token is the zero vector.
//!
//! Neither adds special tokens; normalization is the pipeline's (`Normalize` module or model2vec's
//! `normalize`).

use crate::config::{read_json, ConfigJson};
use crate::error::{Error, Result};
use crate::weights::{Tensor, Weights};
use std::path::Path;

/// Which library's semantics a static model follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticFormat {
    /// sentence-transformers `StaticEmbedding`: unknown tokens count.
    SentenceTransformers,
    /// model2vec `StaticModel`: unknown tokens are dropped.
    Model2Vec,
}

/// A loaded static embedding table.
pub struct StaticEmbedding {
    table: Tensor,
    dim: usize,
    /// Token id → table row (model2vec vocabulary quantization).
    mapping: Option<Vec<u32>>,
    /// Per-token factor applied before the mean (model2vec `weights`).
    token_weights: Option<Vec<f32>>,
    /// Token id left out of the mean.
    skipped: Option<u32>,
    ids: usize,
    format: StaticFormat,
}

/// What a model2vec `config.json` says beyond the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Model2VecConfig {
    /// L2-normalize the mean.
    pub normalize: bool,
    /// Token limit of `encode` (`max_length`, default 512; `None` = no limit).
    pub max_length: Option<usize>,
}

impl Model2VecConfig {
    /// Reads `dir/config.json` when it is a model2vec configuration.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("config.json");
        if !path.exists() {
            return Ok(None);
        }
        let cfg = ConfigJson {
            value: read_json(&path)?,
            path,
        };
        let is_model2vec = cfg.str_opt(&["model_type"]) == Some("model2vec")
            || cfg
                .value
                .get("architectures")
                .and_then(|a| a.as_array())
                .is_some_and(|a| a.iter().any(|c| c.as_str() == Some("StaticModel")));
        if !is_model2vec {
            return Ok(None);
        }
        let max_length = match cfg.value.get("max_length") {
            None => Some(512),
            Some(v) if v.is_null() => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| cfg.invalid("`max_length` is not an integer or null"))? as usize,
            ),
        };
        Ok(Some(Self {
            normalize: cfg.bool_opt(&["normalize"]).unwrap_or(false),
            max_length,
        }))
    }
}

impl StaticEmbedding {
    /// Loads the table in `dir/model.safetensors`: key `embedding.weight` for
    /// sentence-transformers, `embeddings` (+ optional `weights`, `mapping`) for model2vec.
    /// `unknown_id` is the tokenizer's unknown token, dropped by model2vec.
    pub fn load(dir: &Path, format: StaticFormat, unknown_id: Option<u32>) -> Result<Self> {
        let w = Weights::open(dir, "static", &[])?;
        let key = match format {
            StaticFormat::SentenceTransformers => "embedding.weight",
            StaticFormat::Model2Vec => "embeddings",
        };
        let shape = w
            .shape_of(key)
            .map(<[usize]>::to_vec)
            .ok_or_else(|| Error::InvalidFile {
                path: dir.join("model.safetensors"),
                message: format!("no tensor `{key}` (the static embedding table)"),
            })?;
        let [rows, dim] = shape[..] else {
            return Err(Error::InvalidFile {
                path: dir.join("model.safetensors"),
                message: format!("`{key}` has shape {shape:?}, expected [vocabulary, dimension]"),
            });
        };
        let table = w.get(key, &[rows, dim])?;
        let mut ids = rows;
        let mapping = match w.shape_of("mapping").map(<[usize]>::to_vec) {
            Some(s) if format == StaticFormat::Model2Vec => {
                let n = s.iter().product::<usize>();
                let m = w.get_ints("mapping", &[n])?;
                if let Some(bad) = m.iter().find(|&&r| r as usize >= rows) {
                    return Err(Error::InvalidFile {
                        path: dir.join("model.safetensors"),
                        message: format!("`mapping` points at row {bad} of a {rows}-row table"),
                    });
                }
                ids = n;
                Some(m)
            }
            _ => None,
        };
        let token_weights = match w.shape_of("weights").map(<[usize]>::to_vec) {
            Some(s) if format == StaticFormat::Model2Vec => {
                let n = s.iter().product::<usize>();
                if n != ids {
                    return Err(Error::InvalidFile {
                        path: dir.join("model.safetensors"),
                        message: format!("`weights` has {n} entries for {ids} token ids"),
                    });
                }
                Some(w.get("weights", &[n])?.data().to_vec())
            }
            _ => None,
        };
        Ok(Self {
            table,
            dim,
            mapping,
            token_weights,
            skipped: if format == StaticFormat::Model2Vec {
                unknown_id
            } else {
                None
            },
            ids,
            format,
        })
    }

    /// Length of the vectors.
    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Number of token ids the table covers; ids must be below this.
    pub fn vocab_size(&self) -> usize {
        self.ids
    }

    /// The semantics in use.
    pub fn format(&self) -> StaticFormat {
        self.format
    }

    /// The (weighted) vector of token `id`, or `None` when the id is left out of the mean.
    fn row(&self, id: u32, out: &mut [f32]) -> bool {
        if Some(id) == self.skipped {
            return false;
        }
        let row = self.mapping.as_ref().map_or(id as usize, |m| m[id as usize] as usize);
        let v = self.table.row(row);
        match &self.token_weights {
            Some(w) => {
                let f = w[id as usize];
                out.iter_mut().zip(v).for_each(|(o, x)| *o = x * f);
            }
            None => out.copy_from_slice(v),
        }
        true
    }

    /// The token vectors of `ids` (`ids.len() × dimension`, left-out tokens as zeros): what a
    /// static model has for hidden states.
    pub fn token_vectors(&self, ids: &[u32]) -> Vec<f32> {
        let mut out = vec![0.0; ids.len() * self.dim];
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.dim)) {
            self.row(id, o);
        }
        out
    }

    /// Mean of the vectors of `ids` into `out` (`dimension` wide); zeros when no token counts.
    /// Ids must be below [`Self::vocab_size`].
    pub fn mean(&self, ids: &[u32], out: &mut [f32]) {
        out.fill(0.0);
        let mut row = vec![0.0f32; self.dim];
        let mut count = 0usize;
        for &id in ids {
            if self.row(id, &mut row) {
                out.iter_mut().zip(&row).for_each(|(o, x)| *o += x);
                count += 1;
            }
        }
        if count > 0 {
            let n = count as f32;
            out.iter_mut().for_each(|o| *o /= n);
        }
    }
}
