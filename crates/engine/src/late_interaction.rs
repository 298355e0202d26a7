//! Multi-vector outputs and the per-token heads beside a transformer: ColBERT (PyLate's
//! folders: query and document prefixes, query expansion, a `Dense` projection, the documents'
//! skiplist), bge-m3's `colbert_linear` and its lexical weights (`sparse_linear`), and the MaxSim
//! score of late interaction.

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::pooling::{normalize, Dense};
use crate::tokenize::{TextTokenizer, TokenizedInput, Truncation};
use crate::transformer::Linear;
use crate::weights::Tensor;
use crate::DType;
use serde_json::Value;
use std::path::Path;

/// Which side of a retrieval pair an input is: models with a query side of their own (ColBERT's
/// query prefix and expansion, an inference-free sparse model's query table) treat the two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Side {
    /// A search query.
    Query,
    /// A document (the default, and the only side of most models).
    #[default]
    Document,
}

/// How a ColBERT model (PyLate's `config_sentence_transformers.json`, `model_type` `ColBERT`)
/// tokenizes and which token vectors it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct ColbertSpec {
    /// Token put after `[CLS]` of a query (`query_prefix`).
    pub query_prefix: u32,
    /// Token put after `[CLS]` of a document (`document_prefix`).
    pub document_prefix: u32,
    /// Tokens of a query, prefix included (`query_length`).
    pub query_length: usize,
    /// Most tokens of a document, prefix included (`document_length`).
    pub document_length: usize,
    /// Queries are padded with the mask token to `query_length` (`do_query_expansion`).
    pub expand_queries: bool,
    /// The padding takes part in attention (`attend_to_expansion_tokens`).
    pub attend_to_expansion: bool,
    /// The token that pads queries (PyLate's pad token: the mask token).
    pub expansion_id: u32,
    /// Ids whose vectors a document drops (`skiplist_words`), sorted.
    pub skiplist: Vec<u32>,
}

/// PyLate's defaults for settings a folder leaves out.
const DEFAULT_QUERY_PREFIX: &str = "[unused0]";
const DEFAULT_DOCUMENT_PREFIX: &str = "[unused1]";
const DEFAULT_QUERY_LENGTH: u64 = 32;
const DEFAULT_DOCUMENT_LENGTH: u64 = 180;
const DEFAULT_SKIPLIST: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// The token a special-token setting names (`"[MASK]"` or `{"content": "[MASK]", …}`) in the
/// folder's `tokenizer_config.json` or `special_tokens_map.json`.
pub fn special_token_id(dir: &Path, tokenizer: &TextTokenizer, key: &str) -> Option<u32> {
    ["tokenizer_config.json", "special_tokens_map.json"]
        .iter()
        .filter_map(|f| read_json(&dir.join(f)).ok())
        .find_map(|v| {
            let t = v.get(key)?;
            let text = t.as_str().or_else(|| t.get("content").and_then(Value::as_str))?;
            tokenizer.token_id(text)
        })
}

impl ColbertSpec {
    /// Reads the ColBERT settings of `dir`, or `None` when the folder is not a ColBERT model.
    pub fn load(dir: &Path, tokenizer: &TextTokenizer) -> Result<Option<Self>> {
        let path = dir.join("config_sentence_transformers.json");
        if !path.exists() {
            return Ok(None);
        }
        let v = read_json(&path)?;
        if v.get("model_type").and_then(Value::as_str) != Some("ColBERT") {
            return Ok(None);
        }
        let invalid = |message: String| Error::InvalidFile {
            path: path.clone(),
            message,
        };
        let text = |key: &str, default: &str| v.get(key).and_then(Value::as_str).unwrap_or(default).to_owned();
        let prefix = |key: &str, default: &str| -> Result<u32> {
            let token = text(key, default);
            tokenizer
                .token_id(&token)
                .ok_or_else(|| invalid(format!("`{key}` {token:?} is not a token of the model's tokenizer")))
        };
        let length = |key: &str, default: u64| -> Result<usize> {
            match v.get(key).and_then(Value::as_u64).unwrap_or(default) {
                n if n >= 3 => Ok(n as usize),
                n => Err(invalid(format!("`{key}` {n} leaves no room for text"))),
            }
        };
        let flag = |key: &str, default: bool| v.get(key).and_then(Value::as_bool).unwrap_or(default);
        // PyLate pads queries with the mask token (else end-of-sequence, else padding).
        let expansion_id = ["mask_token", "eos_token", "pad_token"]
            .iter()
            .find_map(|k| special_token_id(dir, tokenizer, k))
            .or_else(|| ["[MASK]", "<mask>"].iter().find_map(|t| tokenizer.token_id(t)));
        let expand_queries = flag("do_query_expansion", true);
        let expansion_id = match (expansion_id, expand_queries) {
            (Some(id), _) => id,
            (None, false) => 0,
            (None, true) => {
                return Err(invalid(
                    "query expansion needs a mask token, and the tokenizer has none".into(),
                ))
            }
        };
        // As PyLate's `convert_tokens_to_ids`: a word outside the vocabulary is the unknown token.
        let words: Vec<String> = match v.get("skiplist_words").and_then(Value::as_array) {
            Some(list) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            None => DEFAULT_SKIPLIST.chars().map(String::from).collect(),
        };
        let mut skiplist: Vec<u32> = words
            .iter()
            .filter_map(|w| tokenizer.token_id(w).or_else(|| tokenizer.unknown_id()))
            .collect();
        skiplist.sort_unstable();
        skiplist.dedup();
        Ok(Some(Self {
            query_prefix: prefix("query_prefix", DEFAULT_QUERY_PREFIX)?,
            document_prefix: prefix("document_prefix", DEFAULT_DOCUMENT_PREFIX)?,
            query_length: length("query_length", DEFAULT_QUERY_LENGTH)?,
            document_length: length("document_length", DEFAULT_DOCUMENT_LENGTH)?,
            expand_queries,
            attend_to_expansion: flag("attend_to_expansion_tokens", false),
            expansion_id,
            skiplist,
        }))
    }

    /// The longest input: a query or a document, prefix included.
    pub fn max_tokens(&self) -> usize {
        self.query_length.max(self.document_length)
    }

    /// Tokenizes as PyLate does: at most `length − 1` tokens (always cut at the end: the
    /// lengths are the model's), the side's prefix put after the first token, and queries padded
    /// with the expansion token to `query_length`.
    pub fn tokenize(&self, tokenizer: &TextTokenizer, texts: &[&str], side: Side) -> Result<Vec<TokenizedInput>> {
        let (length, prefix) = match side {
            Side::Query => (self.query_length, self.query_prefix),
            Side::Document => (self.document_length, self.document_prefix),
        };
        let mut out = tokenizer.tokenize_within(texts, None, Truncation::End, length - 1)?;
        for t in &mut out {
            t.ids.insert(t.ids.len().min(1), prefix);
            t.untruncated_tokens += 1;
            // Cut to the model's length: not an error for a ColBERT model.
            t.over_limit = false;
            if side == Side::Query && self.expand_queries {
                t.ids.resize(self.query_length.max(t.ids.len()), self.expansion_id);
            }
        }
        Ok(out)
    }

    /// The tokens a query's positions attend to: all but the expansion padding, unless the model
    /// attends to it (a trailing run of the expansion token after the text).
    pub fn attended(&self, ids: &[u32], side: Side) -> usize {
        if side != Side::Query || !self.expand_queries || self.attend_to_expansion {
            return ids.len();
        }
        let padding = ids.iter().rev().take_while(|&&id| id == self.expansion_id).count();
        // The text itself keeps at least `[CLS]`, the prefix and `[SEP]`.
        (ids.len() - padding).max(ids.len().min(1))
    }

    /// Whether the vector of a token with this id is returned.
    fn keeps(&self, id: u32, side: Side) -> bool {
        side == Side::Query || self.skiplist.binary_search(&id).is_err()
    }
}

/// A model's multi-vector output: one normalized vector per kept token.
pub enum MultiVectorHead {
    /// ColBERT: the `Dense` modules on every token, the documents' skiplist.
    Colbert {
        /// Tokenization and which tokens are kept.
        spec: ColbertSpec,
        /// The projection, in order.
        projection: Vec<Dense>,
    },
    /// bge-m3: `colbert_linear` on every token after the first.
    BgeM3 {
        /// `colbert_linear`.
        projection: Linear,
    },
}

impl MultiVectorHead {
    /// Width of each token vector.
    pub fn dimension(&self) -> usize {
        match self {
            Self::Colbert { projection, .. } => projection.last().map_or(0, Dense::out_features),
            Self::BgeM3 { projection } => projection.out_features,
        }
    }

    /// The token vectors of one input (its ids and last hidden states, `h` wide), flat.
    pub fn vectors(&self, ids: &[u32], hidden: &[f32], h: usize, side: Side) -> Vec<f32> {
        let kept: Vec<usize> = match self {
            Self::Colbert { spec, .. } => (0..ids.len()).filter(|&t| spec.keeps(ids[t], side)).collect(),
            Self::BgeM3 { .. } => (1..ids.len()).collect(),
        };
        let mut rows = Vec::with_capacity(kept.len() * h);
        for &t in &kept {
            rows.extend_from_slice(&hidden[t * h..(t + 1) * h]);
        }
        let mut out = match self {
            Self::Colbert { projection, .. } => projection.iter().fold(rows, |x, d| d.forward(&x, kept.len())),
            Self::BgeM3 { projection } => {
                let mut out = vec![0.0; kept.len() * projection.out_features];
                projection.forward(&rows, kept.len(), &mut out, 1);
                out
            }
        };
        let dim = self.dimension().max(1);
        out.chunks_exact_mut(dim).for_each(normalize);
        out
    }
}

/// A `torch.nn.Linear` saved on its own (`<name>.pt`: a state dict with `weight` and `bias`).
fn linear_from_pt(path: &Path, in_features: usize) -> Result<Linear> {
    let mut dict = crate::torch_pickle::read_state_dict(path)?;
    let bad = |message: String| Error::InvalidFile {
        path: path.to_owned(),
        message,
    };
    let weight = dict.remove("weight").ok_or_else(|| bad("no `weight` tensor".into()))?;
    let [out_features, k] = weight.shape[..] else {
        return Err(bad(format!("`weight` has shape {:?}, not [out, in]", weight.shape)));
    };
    if k != in_features {
        return Err(bad(format!(
            "`weight` takes {k} inputs; the encoder's hidden size is {in_features}"
        )));
    }
    let bias = match dict.remove("bias") {
        Some(b) if b.shape == [out_features] => Some(Tensor::from_vec(b.values, vec![out_features])),
        Some(b) => return Err(bad(format!("`bias` has shape {:?}, not [{out_features}]", b.shape))),
        None => None,
    };
    Ok(Linear::new(
        Tensor::from_vec(weight.values, vec![out_features, in_features]),
        bias,
        DType::Float32,
    ))
}

/// bge-m3's lexical weights: `relu(sparse_linear(h))` per token, the largest per token id, the
/// tokenizer's special tokens left out.
pub struct LexicalHead {
    linear: Linear,
    /// `<s>`, `</s>`, `<pad>`, `<unk>` (FlagEmbedding's `unused_tokens`), sorted.
    unused: Vec<u32>,
}

/// bge-m3's heads, when the folder has them (`colbert_linear.pt`, `sparse_linear.pt`).
pub fn load_bge_m3_heads(
    dir: &Path,
    tokenizer: &TextTokenizer,
    hidden: usize,
) -> Result<(Option<MultiVectorHead>, Option<LexicalHead>)> {
    let colbert = dir.join("colbert_linear.pt");
    let multi = if colbert.exists() {
        Some(MultiVectorHead::BgeM3 {
            projection: linear_from_pt(&colbert, hidden)?,
        })
    } else {
        None
    };
    let sparse = dir.join("sparse_linear.pt");
    let lexical = if sparse.exists() {
        let linear = linear_from_pt(&sparse, hidden)?;
        if linear.out_features != 1 {
            return Err(Error::InvalidFile {
                path: sparse,
                message: format!("{} outputs; a token's lexical weight is one", linear.out_features),
            });
        }
        let mut unused: Vec<u32> = [
            "cls_token",
            "bos_token",
            "eos_token",
            "sep_token",
            "pad_token",
            "unk_token",
        ]
        .iter()
        .filter_map(|k| special_token_id(dir, tokenizer, k))
        .chain(tokenizer.unknown_id())
        .collect();
        unused.sort_unstable();
        unused.dedup();
        Some(LexicalHead { linear, unused })
    } else {
        None
    };
    Ok((multi, lexical))
}

impl LexicalHead {
    /// One input's `(token id, weight)` pairs, by id, weights above zero.
    pub fn weights(&self, ids: &[u32], hidden: &[f32]) -> Vec<(u32, f32)> {
        let mut w = vec![0.0f32; ids.len()];
        self.linear
            .forward(&hidden[..ids.len() * self.linear.in_features], ids.len(), &mut w, 1);
        let mut pairs: Vec<(u32, f32)> = ids
            .iter()
            .zip(w)
            .filter(|(id, w)| *w > 0.0 && self.unused.binary_search(id).is_err())
            .map(|(&id, w)| (id, w))
            .collect();
        pairs.sort_by_key(|p| p.0);
        pairs.dedup_by(|later, first| {
            if later.0 == first.0 {
                first.1 = first.1.max(later.1);
                true
            } else {
                false
            }
        });
        pairs
    }
}

/// Late-interaction relevance: for each query vector, its largest dot product with a document
/// vector, summed (ColBERT's MaxSim; vectors `dim` wide, flat). A query vector meets an empty
/// document with 0.
pub fn maxsim(query: &[f32], document: &[f32], dim: usize) -> f32 {
    let dim = dim.max(1);
    query
        .chunks_exact(dim)
        .map(|q| {
            document
                .chunks_exact(dim)
                .map(|d| q.iter().zip(d).map(|(a, b)| a * b).sum::<f32>())
                .fold(None, |m: Option<f32>, s| Some(m.map_or(s, |m| m.max(s))))
                .unwrap_or(0.0)
        })
        .sum()
}

/// The dot product of two sparse vectors given as `(id, weight)` pairs sorted by id
/// (FlagEmbedding's `compute_lexical_matching_score`).
pub fn sparse_dot(a: &[(u32, f32)], b: &[(u32, f32)]) -> f32 {
    let (mut i, mut j, mut sum) = (0, 0, 0.0f32);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                sum += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    sum
}
