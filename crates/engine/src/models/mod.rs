//! Architecture registry: one file per architecture. Each file declares an [`Architecture`]
//! (which `config.json` folders are its own, how to build the encoder from the config and
//! tensor names, its task adapters and classifier head if it has them), and the list below
//! registers it. Adding an architecture = one new file + its name in [`architectures!`]; nothing
//! about a family is written anywhere else.

use crate::config::ConfigJson;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::rerank::RerankHead;
use crate::transformer::Transformer;
use crate::weights::Weights;
use std::collections::BTreeMap;
use std::path::Path;

/// Builds a classifier head from a config, the weights and the hidden width.
pub type ClassifierLoader = fn(&ConfigJson, &Weights, usize, usize) -> Result<RerankHead>;

/// What an architecture file declares.
pub struct Architecture {
    /// The family's name (in messages and the weights' errors).
    pub name: &'static str,
    /// The `model_type` values it serves (listed in the error for an unknown one).
    pub model_types: &'static [&'static str],
    /// Whether a folder's config is this architecture's; `None`: its `model_type` is one of
    /// [`Self::model_types`]. A family that reuses another's `model_type` says what else marks
    /// it (and is registered before that other family).
    pub claims: Option<fn(&ConfigJson) -> bool>,
    /// Builds the encoder from the config and the weights.
    pub load: fn(&ConfigJson, &Weights) -> Result<Transformer>,
    /// The head of its `*ForSequenceClassification` folders (one logit from the hidden states
    /// of `hidden` width), if it has one.
    pub classifier: Option<ClassifierLoader>,
    /// Its task adapters, if it has them.
    pub tasks: Option<fn(&ConfigJson) -> Tasks>,
    /// Its causal-LM folders that rerank by their yes/no logits, if it has such.
    pub yes_no: Option<YesNoReranker>,
    /// Prefixes its model classes put in front of tensor names (stripped when indexing).
    pub weight_prefixes: &'static [&'static str],
}

/// A causal LM that reranks by the logits of a yes and a no token (Qwen3-Reranker).
#[derive(Debug, Clone, Copy)]
pub struct YesNoReranker {
    /// Whether a folder (`dir`, its config) is such a reranker.
    pub detect: fn(&Path, &ConfigJson) -> bool,
    /// The output-embedding tables to take the yes and no rows from, the first present.
    pub tables: &'static [&'static str],
}

/// Task adapters of an architecture that has them (jina-embeddings-v3).
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    /// Task names, in adapter order.
    pub names: Vec<String>,
    /// The instruction put in front of a text for each task.
    pub instructions: BTreeMap<String, String>,
    /// Whether the original `encode` L2-normalizes (applied to folders without
    /// sentence-transformers modules).
    pub normalizes: bool,
}

impl Architecture {
    /// An architecture named `name` for folders of these `model_types`, built by `load`.
    pub const fn new(
        name: &'static str,
        model_types: &'static [&'static str],
        load: fn(&ConfigJson, &Weights) -> Result<Transformer>,
    ) -> Self {
        Self {
            name,
            model_types,
            claims: None,
            load,
            classifier: None,
            tasks: None,
            yes_no: None,
            weight_prefixes: &["model."],
        }
    }

    /// The same, with the tensor-name prefixes of its model classes (besides `model.`).
    pub const fn with_weight_prefixes(self, weight_prefixes: &'static [&'static str]) -> Self {
        Self {
            weight_prefixes,
            ..self
        }
    }

    /// The same, with yes/no rerankers.
    pub const fn with_yes_no(self, yes_no: YesNoReranker) -> Self {
        Self {
            yes_no: Some(yes_no),
            ..self
        }
    }

    /// The same, claiming the folders for which `claims` holds.
    pub const fn claiming(self, claims: fn(&ConfigJson) -> bool) -> Self {
        Self {
            claims: Some(claims),
            ..self
        }
    }

    /// The same, with a sequence-classification head.
    pub const fn with_classifier(self, classifier: ClassifierLoader) -> Self {
        Self {
            classifier: Some(classifier),
            ..self
        }
    }

    /// The same, with task adapters.
    pub const fn with_tasks(self, tasks: fn(&ConfigJson) -> Tasks) -> Self {
        Self {
            tasks: Some(tasks),
            ..self
        }
    }

    /// Whether `cfg` is a folder of this architecture.
    pub fn claims(&self, cfg: &ConfigJson) -> bool {
        match self.claims {
            Some(claims) => claims(cfg),
            None => model_type_in(cfg, self.model_types),
        }
    }
}

/// Whether `cfg`'s `model_type` is one of `types`.
pub(crate) fn model_type_in(cfg: &ConfigJson, types: &[&str]) -> bool {
    cfg.str_opt(&["model_type"]).is_some_and(|t| types.contains(&t))
}

/// Whether `cfg`'s `architectures` list holds a class for which `test` holds.
pub(crate) fn has_class(cfg: &ConfigJson, test: impl Fn(&str) -> bool) -> bool {
    cfg.value
        .get("architectures")
        .and_then(|a| a.as_array())
        .is_some_and(|a| a.iter().filter_map(|c| c.as_str()).any(test))
}

macro_rules! architectures {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*

        /// Every architecture, in the order their claims are asked (more specific first).
        pub static ARCHITECTURES: &[&Architecture] = &[$(&$module::ARCHITECTURE),*];
    };
}

architectures!(jina_bert, jina_v3, bert, distilbert, roberta, mpnet, nomic_bert, modernbert, qwen3, gte, gemma3);

/// Every supported `model_type`.
pub fn supported_model_types() -> Vec<&'static str> {
    let mut all: Vec<&str> = ARCHITECTURES
        .iter()
        .flat_map(|a| a.model_types.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The architecture of a folder's config, or an error naming its `model_type` and the
/// supported ones.
pub fn architecture_of(cfg: &ConfigJson) -> Result<&'static Architecture> {
    let model_type = cfg.model_type()?;
    ARCHITECTURES.iter().copied().find(|a| a.claims(cfg)).ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: model_type `{model_type}` (supported: {})",
            cfg.path.display(),
            supported_model_types().join(", ")
        ))
    })
}

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

/// Loads the transformer of a folder holding `config.json` and safetensors weights (no
/// tokenizer needed), in float32: the entry point for architecture tests and tools.
pub fn load_transformer(dir: &Path) -> Result<Transformer> {
    load_transformer_with(dir, DType::Float32)
}

/// [`load_transformer`] with the dense layers in `dtype`.
pub fn load_transformer_with(dir: &Path, dtype: DType) -> Result<Transformer> {
    let (cfg, architecture, weights) = open(dir, dtype)?;
    (architecture.load)(&cfg, &weights)
}

/// A transformer folder's config (read once), its architecture and its weights (opened once,
/// with the architecture's tensor-name prefixes, dense layers to be built in `dtype`).
pub(crate) fn open(dir: &Path, dtype: DType) -> Result<(ConfigJson, &'static Architecture, Weights)> {
    let cfg = ConfigJson::load(dir)?;
    let architecture = architecture_of(&cfg)?;
    let weights = Weights::open(dir, architecture.name, architecture.weight_prefixes)?.with_dtype(dtype);
    Ok((cfg, architecture, weights))
}

/// A transformer of `config` (a `config.json` value) with random weights at the shapes its
/// loader asks for, in `dtype`: models of real size for speed measurements, without files.
pub fn random_transformer(config: serde_json::Value, dtype: DType) -> Result<Transformer> {
    let cfg = ConfigJson {
        path: "config.json".into(),
        value: config,
    };
    let architecture = architecture_of(&cfg)?;
    let weights = Weights::random(architecture.name).with_dtype(dtype);
    (architecture.load)(&cfg, &weights)
}
