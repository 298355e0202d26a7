//! Rerankers: a query–document pair in, one relevance score out.
//!
//! Two kinds, both running on the shared transformer:
//! - cross-encoders (`*ForSequenceClassification` folders: BERT, XLM-RoBERTa, ModernBERT), whose
//!   classification head turns the pair's hidden states into a logit;
//! - Qwen3-Reranker (a `Qwen3ForCausalLM` folder without sentence-transformers files), whose
//!   score is `softmax([no, yes])[yes]` of the language-model logits at the last position of the
//!   model card's prompt. Only the two rows of the output embedding are kept.
//!
//! The engine returns raw logits; [`ScoreActivation`] says what `CrossEncoder.predict` applies.

use crate::config::{read_json, ConfigJson};
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::models::Architecture;
use crate::pooling::Pooling;
use crate::transformer::{Linear, Norm};
use crate::weights::Weights;
use std::path::Path;

/// The function applied to a reranker's logit to give its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreActivation {
    /// `1 / (1 + e^-x)`: sentence-transformers' default for one label.
    Sigmoid,
    /// The logit itself.
    Identity,
}

impl ScoreActivation {
    /// Applies the activation.
    pub fn apply(self, logit: f32) -> f32 {
        match self {
            Self::Sigmoid => 1.0 / (1.0 + (-logit).exp()),
            Self::Identity => logit,
        }
    }

    /// What `config.json` names (`sentence_transformers.activation_fn` or the legacy
    /// `sbert_ce_default_activation_function`), Sigmoid when it names none.
    pub(crate) fn from_config(cfg: &ConfigJson) -> Result<Self> {
        let named = cfg
            .value
            .get("sentence_transformers")
            .and_then(|v| v.get("activation_fn"))
            .and_then(|v| v.as_str())
            .or(cfg.str_opt(&["sbert_ce_default_activation_function"]));
        match named.map(|n| n.rsplit('.').next().unwrap_or(n)) {
            None | Some("Sigmoid") => Ok(Self::Sigmoid),
            Some("Identity") => Ok(Self::Identity),
            Some(other) => Err(Error::Unsupported(format!(
                "{}: reranker activation `{other}` (openembed applies Sigmoid or Identity)",
                cfg.path.display()
            ))),
        }
    }
}

/// The prompt of a yes/no reranker (Qwen3-Reranker's model card by default, or
/// `rerank_template.json` in the model folder).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct YesNoTemplate {
    /// Text before the body (system turn, user turn opening).
    pub prefix: String,
    /// Body with `{instruction}`, `{query}` and `{doc}`.
    pub format: String,
    /// Text after the body (assistant turn opening).
    pub suffix: String,
    /// Instruction used when a request gives none.
    pub instruction: String,
    /// The token whose logit means "relevant".
    pub yes_token: String,
    /// The token whose logit means "not relevant".
    pub no_token: String,
}

impl Default for YesNoTemplate {
    fn default() -> Self {
        Self {
            prefix: "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and \
                     the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n\
                     <|im_start|>user\n"
                .into(),
            format: "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".into(),
            suffix: "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n".into(),
            instruction: "Given a web search query, retrieve relevant passages that answer the query".into(),
            yes_token: "yes".into(),
            no_token: "no".into(),
        }
    }
}

impl YesNoTemplate {
    /// File in a model folder that overrides the defaults.
    pub const FILE: &'static str = "rerank_template.json";

    /// The folder's template file, else the model card's defaults.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        if !path.exists() {
            return Ok(Self::default());
        }
        serde_json::from_value(read_json(&path)?).map_err(|e| Error::InvalidFile {
            path,
            message: format!("expected prefix, format, suffix, instruction, yes_token, no_token: {e}"),
        })
    }

    /// The body for one pair.
    pub fn body(&self, instruction: Option<&str>, query: &str, doc: &str) -> String {
        self.format
            .replace("{instruction}", instruction.unwrap_or(&self.instruction))
            .replace("{query}", query)
            .replace("{doc}", doc)
    }
}

/// Which kind of reranker a folder holds, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerankKind {
    /// A `*ForSequenceClassification` cross-encoder.
    CrossEncoder,
    /// A causal LM scored by its yes/no logits (Qwen3-Reranker).
    YesNo,
}

impl RerankKind {
    /// Detects a reranker folder of `architecture`: a sequence-classification class, or what the
    /// architecture's file says marks its yes/no rerankers.
    pub fn detect(dir: &Path, cfg: &ConfigJson, architecture: &Architecture) -> Option<Self> {
        if crate::models::has_class(cfg, |c| c.ends_with("ForSequenceClassification")) {
            Some(Self::CrossEncoder)
        } else if architecture.yes_no.is_some_and(|y| (y.detect)(dir, cfg)) {
            Some(Self::YesNo)
        } else {
            None
        }
    }
}

/// The head that turns a pair's hidden states into a logit.
pub enum RerankHead {
    /// `out(tanh(dense(h[0])))` (BERT's pooler + classifier, XLM-RoBERTa's classifier).
    FirstTokenTanh {
        /// Dense layer on the first token.
        dense: Linear,
        /// Projection to the label.
        out: Linear,
    },
    /// `out(norm(act(dense(pool(h)))))` (ModernBERT's head).
    Pooled {
        /// `cls` or `mean`.
        pooling: Pooling,
        /// Dense layer on the pooled state.
        dense: Linear,
        /// Its activation.
        activation: Activation,
        /// Norm after it.
        norm: Norm,
        /// Projection to the label.
        out: Linear,
    },
    /// Causal LM: `yes·h[last] - no·h[last]`, softmax over the pair = sigmoid of that.
    YesNo {
        /// Output-embedding row of the yes token.
        yes: Vec<f32>,
        /// Output-embedding row of the no token.
        no: Vec<f32>,
    },
}

impl RerankHead {
    /// Loads the sequence-classification head of `architecture` (its file says how) with the
    /// folder's labels: a one-label cross-encoder (a reranker) or a classifier.
    pub fn classifier(
        cfg: &ConfigJson,
        w: &Weights,
        architecture: &Architecture,
        hidden: usize,
    ) -> Result<(Self, ClassifierInfo)> {
        let info = ClassifierInfo::from_config(cfg)?;
        let loader = architecture.classifier.ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: a `{}` sequence-classification model (openembed serves those of {})",
                cfg.path.display(),
                architecture.name,
                crate::models::ARCHITECTURES
                    .iter()
                    .filter(|a| a.classifier.is_some())
                    .map(|a| a.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let head = loader(cfg, w, hidden, info.labels.len())?;
        Ok((head, info))
    }

    /// The yes/no head of a causal LM: the two rows of the first of `tables` present (its output
    /// embedding, or the word embeddings when they are tied).
    pub fn yes_no(w: &Weights, tables: &[&str], vocab: usize, hidden: usize, yes: u32, no: u32) -> Result<Self> {
        // None present: the last one's error names what was looked for.
        let table = tables
            .iter()
            .copied()
            .find(|t| w.contains(t))
            .or(tables.last().copied())
            .ok_or_else(|| Error::Unsupported("a yes/no reranker without an output table".into()))?;
        let t = w.get(table, &[vocab, hidden])?;
        Ok(Self::YesNo {
            yes: t.row(yes as usize).to_vec(),
            no: t.row(no as usize).to_vec(),
        })
    }

    /// How many logits the head gives per input.
    pub fn labels(&self) -> usize {
        match self {
            Self::FirstTokenTanh { out, .. } | Self::Pooled { out, .. } => out.out_features,
            Self::YesNo { .. } => 1,
        }
    }

    /// The logits of one input (a text or a pair) from its hidden states (`tokens × hidden`),
    /// written to `out` (`labels()` long).
    pub fn logits(&self, hidden_states: &[f32], hidden: usize, out: &mut [f32]) {
        let tokens = hidden_states.len() / hidden.max(1);
        if tokens == 0 {
            out.fill(0.0);
            return;
        }
        match self {
            Self::FirstTokenTanh { dense, out: proj } => {
                let mut x = vec![0.0f32; hidden];
                dense.forward_act(&hidden_states[..hidden], 1, &mut x, Activation::Tanh, 1);
                proj.forward(&x, 1, out, 1);
            }
            Self::Pooled {
                pooling,
                dense,
                activation,
                norm,
                out: proj,
            } => {
                let mut pooled = vec![0.0f32; hidden];
                pooling.pool(hidden_states, hidden, &mut pooled);
                let mut x = vec![0.0f32; hidden];
                dense.forward_act(&pooled, 1, &mut x, *activation, 1);
                let mut normed = vec![0.0f32; hidden];
                norm.apply(&x, &mut normed, hidden);
                proj.forward(&normed, 1, out, 1);
            }
            Self::YesNo { yes, no } => {
                let last = &hidden_states[(tokens - 1) * hidden..tokens * hidden];
                let dot = |w: &[f32]| last.iter().zip(w).map(|(a, b)| a * b).sum::<f32>();
                out[0] = dot(yes) - dot(no);
            }
        }
    }
}

/// What turns a classifier's logits into its scores, as transformers' text-classification
/// pipeline names them (`function_to_apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelFunction {
    /// `e^x / Σ e^x` over the labels (one label per text).
    Softmax,
    /// `1 / (1 + e^-x)` per label (several labels per text, or one-label models).
    Sigmoid,
    /// The logits themselves.
    None,
}

impl LabelFunction {
    /// `softmax`, `sigmoid` or `none`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "softmax" => Some(Self::Softmax),
            "sigmoid" => Some(Self::Sigmoid),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// The name `from_name` reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Softmax => "softmax",
            Self::Sigmoid => "sigmoid",
            Self::None => "none",
        }
    }

    /// The scores of one input's logits (float32, as the pipeline computes them).
    pub fn apply(self, logits: &[f32]) -> Vec<f32> {
        match self {
            Self::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
                let sum: f32 = exp.iter().sum();
                exp.into_iter().map(|e| e / sum).collect()
            }
            Self::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            Self::None => logits.to_vec(),
        }
    }
}

/// The labels of a sequence-classification model and its default score function.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierInfo {
    /// Label names in logit order (`id2label`; `LABEL_i` where the config names none).
    pub labels: Vec<String>,
    /// What the pipeline applies by default: `sigmoid` for `multi_label_classification` or one
    /// label, `softmax` for several, `none` for `regression`.
    pub function: LabelFunction,
}

impl ClassifierInfo {
    /// Reads `id2label` (or `num_labels`) and `problem_type` of a `config.json`.
    pub fn from_config(cfg: &ConfigJson) -> Result<Self> {
        let named = cfg.value.get("id2label").and_then(|m| m.as_object());
        let count = named
            .map(|m| m.len())
            .or(cfg.usize_opt(&["num_labels"]))
            .unwrap_or(1)
            .max(1);
        let mut labels: Vec<String> = (0..count).map(|i| format!("LABEL_{i}")).collect();
        for (id, name) in named.into_iter().flatten() {
            let slot = id.parse::<usize>().ok().and_then(|i| labels.get_mut(i));
            match (slot, name.as_str()) {
                (Some(slot), Some(name)) => *slot = name.to_owned(),
                _ => {
                    return Err(cfg.invalid(&format!(
                        "id2label entry {id:?}: {name} (expected ids 0..{count} with label names)"
                    )))
                }
            }
        }
        let function = match cfg.str_opt(&["problem_type"]) {
            Some("regression") => LabelFunction::None,
            Some("multi_label_classification") => LabelFunction::Sigmoid,
            _ if count == 1 => LabelFunction::Sigmoid,
            _ => LabelFunction::Softmax,
        };
        Ok(Self { labels, function })
    }

    /// Every label with its score (`function`, else the model's default), best first; equal
    /// scores keep label order.
    pub fn ranked(&self, logits: &[f32], function: Option<LabelFunction>) -> Vec<(usize, f32)> {
        rank_by_score(function.unwrap_or(self.function).apply(logits))
    }
}

/// Positions and scores, best first; equal scores keep their input order (a stable sort).
pub fn rank_by_score(scores: Vec<f32>) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}
