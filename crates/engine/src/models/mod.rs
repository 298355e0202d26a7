//! Architecture registry: one file per architecture, each translating a `config.json` and tensor
//! names into a [`Transformer`]. Adding an architecture = one new file + its name in the list.

use crate::config::ConfigJson;
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

architectures!(bert, distilbert, roberta, mpnet);

/// Loads the transformer of a folder holding `config.json` and safetensors weights (no
/// tokenizer needed): the entry point for architecture tests and tools.
pub fn load_transformer(dir: &Path) -> Result<Transformer> {
    let cfg = ConfigJson::load(dir)?;
    let model_type = cfg.model_type()?;
    let loader = loader_for(&model_type).ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: model_type `{model_type}` (supported: {})",
            cfg.path.display(),
            supported_model_types().join(", ")
        ))
    })?;
    let weights = Weights::open(dir, &model_type)?;
    loader(&cfg, &weights)
}
