//! Architecture registry: one file per architecture, each translating a `config.json` and tensor
//! names into a [`Transformer`]. Adding an architecture = one new file + its name in the list.

use crate::config::ConfigJson;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::transformer::Transformer;
use crate::weights::Weights;
use std::path::Path;

/// Builds a transformer from a config and weights.
pub type Loader = fn(&ConfigJson, &Weights) -> Result<Transformer>;

macro_rules! architectures {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*

        /// The loader for a `model_type`, if supported.
        pub fn loader_for(model_type: &str) -> Option<Loader> {
            $(if $module::MODEL_TYPES.contains(&model_type) {
                return Some($module::load);
            })*
            None
        }

        /// Every supported `model_type`.
        pub fn supported_model_types() -> Vec<&'static str> {
            let mut all = Vec::new();
            $(all.extend_from_slice($module::MODEL_TYPES);)*
            all
        }
    };
}

architectures!(bert, distilbert, roberta, mpnet, nomic_bert, modernbert, qwen3, gte, jina_bert, gemma3, jina_v3);

pub use jina_v3::task_names;

/// The rotary base: `rope_parameters.rope_theta` (transformers 5; under `layer_kind` when the
/// parameters are per layer kind, as in ModernBERT), else `rope_theta`. Scaled RoPE variants
/// are refused rather than computed wrongly.
pub(crate) fn rope_theta(cfg: &ConfigJson, layer_kind: Option<&str>) -> Result<Option<f64>> {
    let params = match (cfg.value.get("rope_parameters"), layer_kind) {
        (Some(p), Some(kind)) => p.get(kind).or(Some(p)),
        (p, _) => p,
    };
    let scaling = params.or(cfg.value.get("rope_scaling"));
    if let Some(kind) = scaling
        .and_then(|p| p.get("rope_type").or(p.get("type")))
        .and_then(|t| t.as_str())
    {
        if kind != "default" {
            return Err(Error::Unsupported(format!(
                "{}: rope_type `{kind}`",
                cfg.path.display()
            )));
        }
    }
    Ok(params
        .and_then(|p| p.get("rope_theta"))
        .and_then(|t| t.as_f64())
        .or_else(|| cfg.f64_opt(&["rope_theta"])))
}

/// The architecture family of a folder: its `model_type`, refined where a family reuses another
/// one's `model_type` (JinaBERT v2 says `bert` with ALiBi positions; jina-embeddings-v3 says
/// `xlm-roberta` with the `XLMRobertaLoRA` class). For a reranker folder this is its encoder's
/// family (see [`crate::rerank`]).
pub fn family_of(cfg: &ConfigJson) -> Result<String> {
    let model_type = cfg.model_type()?;
    let classes: Vec<&str> = cfg
        .value
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
        .unwrap_or_default();
    let alibi = cfg.str_opt(&["position_embedding_type"]) == Some("alibi");
    Ok(match model_type.as_str() {
        "bert" if alibi || classes.iter().any(|c| c.starts_with("JinaBert")) => "jina_bert".into(),
        "xlm-roberta" if classes.contains(&"XLMRobertaLoRA") => "jina_v3".into(),
        _ => model_type,
    })
}

/// Loads the transformer of a folder holding `config.json` and safetensors weights (no
/// tokenizer needed), in float32: the entry point for architecture tests and tools.
pub fn load_transformer(dir: &Path) -> Result<Transformer> {
    load_transformer_with(dir, DType::Float32)
}

/// [`load_transformer`] with the dense layers in `dtype`.
pub fn load_transformer_with(dir: &Path, dtype: DType) -> Result<Transformer> {
    let cfg = ConfigJson::load(dir)?;
    let model_type = family_of(&cfg)?;
    let loader = loader_for(&model_type).ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: model_type `{model_type}` (supported: {})",
            cfg.path.display(),
            supported_model_types().join(", ")
        ))
    })?;
    let weights = Weights::open(dir, &model_type)?.with_dtype(dtype);
    loader(&cfg, &weights)
}
