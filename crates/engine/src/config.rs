//! The sentence-transformers side of a model folder: modules, pooling, dense head, normalization,
//! sequence limit and prompts.

use crate::error::{Error, Result};
use crate::pooling::Pooling;
use crate::weights::read_to_string;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `modules.json` and its companion files say about turning hidden states into a vector.
#[derive(Debug, Clone)]
pub struct SentenceConfig {
    /// Folder holding `config.json`, `tokenizer.json` and the transformer weights.
    pub transformer_dir: PathBuf,
    /// `max_seq_length` from `sentence_bert_config.json`, if any.
    pub max_seq_length: Option<usize>,
    /// Pooling modes, concatenated in sentence-transformers order.
    pub pooling: Vec<Pooling>,
    /// Folder of a sentence-transformers `StaticEmbedding` module (a static model: no
    /// transformer, see [`crate::static_embedding`]).
    pub static_dir: Option<PathBuf>,
    /// Folders of `Dense` modules applied after pooling, in order.
    pub dense_dirs: Vec<PathBuf>,
    /// Whether a `Normalize` module ends the pipeline.
    pub normalize: bool,
    /// `do_lower_case` from `sentence_bert_config.json`: lowercase texts before tokenizing.
    pub do_lower_case: bool,
    /// Named prompts from `config_sentence_transformers.json`.
    pub prompts: BTreeMap<String, String>,
    /// The prompt applied when none is named.
    pub default_prompt_name: Option<String>,
    /// SPLADE pooling (`SpladePooling` after an `MLMTransformer`): the model's output is one
    /// weight per vocabulary entry.
    pub splade: Option<crate::sparse::SpladePooling>,
    /// The query side of an inference-free sparse model (a `Router` whose `query` route is a
    /// `SparseStaticEmbedding`): its folder.
    pub sparse_query_dir: Option<PathBuf>,
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::InvalidFile {
        path: path.to_owned(),
        message: format!("bad JSON: {e}"),
    })
}

impl SentenceConfig {
    /// Reads the sentence-transformers files of `dir`; a plain transformers folder gets mean
    /// pooling and no normalization, as sentence-transformers itself does.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut cfg = Self {
            transformer_dir: dir.to_owned(),
            max_seq_length: None,
            pooling: vec![Pooling::Mean],
            static_dir: None,
            dense_dirs: Vec::new(),
            normalize: false,
            do_lower_case: false,
            prompts: BTreeMap::new(),
            default_prompt_name: None,
            splade: None,
            sparse_query_dir: None,
        };
        let modules_path = dir.join("modules.json");
        if modules_path.exists() {
            let modules = read_json(&modules_path)?;
            let list = modules.as_array().ok_or_else(|| Error::InvalidFile {
                path: modules_path.clone(),
                message: "expected a JSON array of modules".into(),
            })?;
            for m in list {
                let kind = m.get("type").and_then(Value::as_str).unwrap_or_default();
                let sub = dir.join(m.get("path").and_then(Value::as_str).unwrap_or_default());
                let short = kind.rsplit('.').next().unwrap_or(kind);
                match short {
                    "Transformer" | "MLMTransformer" => cfg.transformer_dir = sub,
                    "SpladePooling" => cfg.splade = Some(crate::sparse::SpladePooling::load(&sub)?),
                    "Router" => cfg.route(&sub)?,
                    "StaticEmbedding" => {
                        cfg.transformer_dir = sub.clone();
                        cfg.static_dir = Some(sub);
                    }
                    "Pooling" => cfg.pooling = Pooling::from_config_dir(&sub)?,
                    "Dense" => cfg.dense_dirs.push(sub),
                    "Normalize" => cfg.normalize = true,
                    other => {
                        return Err(Error::Unsupported(format!(
                            "{}: module type `{other}` (supported: Transformer, MLMTransformer, StaticEmbedding, Pooling, Dense, \
                             Normalize, SpladePooling, Router)",
                            modules_path.display()
                        )))
                    }
                }
            }
        }
        for sbert in [
            cfg.transformer_dir.join("sentence_bert_config.json"),
            dir.join("sentence_bert_config.json"),
        ] {
            if sbert.exists() {
                let v = read_json(&sbert)?;
                cfg.max_seq_length = v.get("max_seq_length").and_then(Value::as_u64).map(|n| n as usize);
                cfg.do_lower_case = v.get("do_lower_case").and_then(Value::as_bool).unwrap_or(false);
                break;
            }
        }
        let st = dir.join("config_sentence_transformers.json");
        if st.exists() {
            let v = read_json(&st)?;
            if let Some(p) = v.get("prompts").and_then(Value::as_object) {
                for (k, v) in p {
                    if let Some(s) = v.as_str() {
                        cfg.prompts.insert(k.clone(), s.to_owned());
                    }
                }
            }
            cfg.default_prompt_name = v.get("default_prompt_name").and_then(Value::as_str).map(str::to_owned);
        }
        Ok(cfg)
    }
}

impl SentenceConfig {
    /// Reads a `Router` module (`router_config.json`): the document route's modules become the
    /// model's (a sparse encoder: `MLMTransformer` + `SpladePooling`), a query route of one
    /// `SparseStaticEmbedding` its query side. Other routes are refused.
    fn route(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("router_config.json");
        let v = read_json(&path)?;
        let invalid = |message: String| Error::Unsupported(format!("{}: {message}", path.display()));
        let types = v.get("types").and_then(Value::as_object).cloned().unwrap_or_default();
        let short = |name: &str| -> String {
            let kind = types.get(name).and_then(Value::as_str).unwrap_or_default();
            kind.rsplit('.').next().unwrap_or(kind).to_owned()
        };
        let structure = v
            .get("structure")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (route, modules) in &structure {
            let names: Vec<&str> = modules
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let kinds: Vec<String> = names.iter().map(|n| short(n)).collect();
            match (
                route.as_str(),
                kinds.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
            ) {
                ("document", ["MLMTransformer", "SpladePooling"]) => {
                    self.transformer_dir = dir.join(names[0]);
                    self.splade = Some(crate::sparse::SpladePooling::load(&dir.join(names[1]))?);
                }
                ("query", ["SparseStaticEmbedding"]) => self.sparse_query_dir = Some(dir.join(names[0])),
                (route, kinds) => {
                    return Err(invalid(format!(
                        "route `{route}` of {kinds:?} (openembed serves inference-free sparse routers: query = \
                         SparseStaticEmbedding, document = MLMTransformer + SpladePooling)"
                    )))
                }
            }
        }
        if self.splade.is_none() {
            return Err(invalid(
                "a router without a document route of MLMTransformer + SpladePooling".into(),
            ));
        }
        Ok(())
    }
}

/// Typed access to `config.json` fields with errors that name the file.
pub struct ConfigJson {
    /// Path of the file, for messages.
    pub path: PathBuf,
    /// The parsed content.
    pub value: Value,
}

/// The sizes every transformer config states, read under any of the names the families use
/// (BERT's `hidden_size`, DistilBERT's `dim`, nomic's `n_embd` …).
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Hidden width.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Vocabulary rows.
    pub vocab: usize,
    /// Position-table rows (or the trained context).
    pub max_pos: usize,
}

impl ConfigJson {
    /// The encoder's sizes ([`Dims`]).
    pub fn dims(&self) -> Result<Dims> {
        Ok(Dims {
            hidden: self.usize(&["hidden_size", "dim", "n_embd"])?,
            layers: self.usize(&["num_hidden_layers", "n_layers", "n_layer"])?,
            heads: self.usize(&["num_attention_heads", "n_heads", "n_head"])?,
            vocab: self.usize(&["vocab_size"])?,
            max_pos: self.usize(&["max_position_embeddings", "n_positions"])?,
        })
    }

    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.exists() {
            return Err(Error::MissingFile {
                path,
                expected: "the transformers model configuration".into(),
            });
        }
        let value = read_json(&path)?;
        Ok(Self { path, value })
    }

    /// `model_type`, the key that selects the architecture.
    pub fn model_type(&self) -> Result<String> {
        self.str_opt(&["model_type"])
            .map(str::to_owned)
            .ok_or_else(|| self.invalid("missing string field `model_type`"))
    }

    /// The first present of several alias names, as an unsigned integer.
    pub fn usize_opt(&self, names: &[&str]) -> Option<usize> {
        names
            .iter()
            .find_map(|n| self.value.get(*n).and_then(Value::as_u64))
            .map(|v| v as usize)
    }

    /// Like [`Self::usize_opt`] but required.
    pub fn usize(&self, names: &[&str]) -> Result<usize> {
        self.usize_opt(names)
            .ok_or_else(|| self.invalid(&format!("missing integer field `{}`", names.join("` or `"))))
    }

    /// The first present alias, as a float.
    pub fn f64_opt(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|n| self.value.get(*n).and_then(Value::as_f64))
    }

    /// The first present alias, as a string.
    pub fn str_opt(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.value.get(*n).and_then(Value::as_str))
    }

    /// The first present alias, as a bool.
    pub fn bool_opt(&self, names: &[&str]) -> Option<bool> {
        names.iter().find_map(|n| self.value.get(*n).and_then(Value::as_bool))
    }

    /// An [`Error::InvalidFile`] about this file.
    pub fn invalid(&self, message: &str) -> Error {
        Error::InvalidFile {
            path: self.path.clone(),
            message: message.to_owned(),
        }
    }
}
