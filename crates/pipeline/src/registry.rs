//! The served models: each loaded once, with its scheduler, under a name and any aliases.

use crate::error::RequestError;
use crate::hub;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::token_ids::TokenIds;
use openembed_engine::{DType, LoadOptions, Model};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// `--model SPEC[=NAME]`: where the model comes from and the name it is served as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// A local directory or a hub id.
    pub source: String,
    /// The served name (default: the last path component of `source`).
    pub name: String,
    /// What token-id inputs mean for this model (default `cl100k_base`, as at OpenAI).
    pub token_ids: TokenIds,
    /// Precision of the model's dense layers (default float32).
    pub dtype: DType,
    /// Task adapter for requests that name none (models with tasks, e.g. jina-embeddings-v3).
    pub default_task: Option<String>,
}

impl ModelSpec {
    /// The model in folder `dir`, served as `name`, with default settings.
    pub fn named(dir: impl AsRef<std::path::Path>, name: &str) -> Self {
        Self {
            source: dir.as_ref().to_string_lossy().into_owned(),
            name: name.to_string(),
            token_ids: TokenIds::default(),
            dtype: DType::default(),
            default_task: None,
        }
    }
}

impl std::str::FromStr for ModelSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (source, name) = match spec.rsplit_once('=') {
            Some((source, name)) => (source.trim(), name.trim().to_string()),
            None => (spec.trim(), String::new()),
        };
        if source.is_empty() {
            return Err(format!(
                "'{spec}': expected a directory or hub id, optionally followed by =NAME"
            ));
        }
        let name = if name.is_empty() {
            source
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(source)
                .to_string()
        } else {
            name
        };
        Ok(Self {
            source: source.to_string(),
            name,
            token_ids: TokenIds::default(),
            dtype: DType::default(),
            default_task: None,
        })
    }
}

/// `--alias NAME=MODEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The name clients use.
    pub name: String,
    /// The served model it stands for.
    pub target: String,
}

impl std::str::FromStr for Alias {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        match spec.split_once('=') {
            Some((name, target)) if !name.trim().is_empty() && !target.trim().is_empty() => Ok(Self {
                name: name.trim().to_string(),
                target: target.trim().to_string(),
            }),
            _ => Err(format!("'{spec}': expected NAME=MODEL")),
        }
    }
}

/// One loaded model with its batcher.
pub struct ServedModel {
    /// Served name.
    pub name: String,
    /// Where it was loaded from (directory or hub id).
    pub source: String,
    /// The engine model.
    pub model: Arc<Model>,
    /// Its batcher and engine worker.
    pub scheduler: Scheduler,
    /// Load time, seconds since the epoch (the `created` field).
    pub created: u64,
    /// What token-id inputs mean.
    pub token_ids: TokenIds,
    /// Task for requests that name none (`--default-task`).
    pub default_task: Option<String>,
    /// Calibrated `int8` / `uint8` ranges, by `dimensions` and normalization (see
    /// [`crate::quantize`]).
    pub(crate) ranges:
        std::sync::Mutex<std::collections::HashMap<crate::quantize::RangesKey, Arc<crate::quantize::Ranges>>>,
}

/// Why a model could not be served: its source did not resolve, the engine could not load it
/// (the engine's error kept, so a front end can tell a missing file from a bad one), or it
/// could not be started (a bad default task, no worker thread).
#[derive(Debug)]
pub enum LoadError {
    /// The folder or hub id did not resolve.
    Resolve(String),
    /// The engine refused the folder.
    Model {
        /// The model's source as given.
        source: String,
        /// The engine's error.
        error: openembed_engine::Error,
    },
    /// The model loaded but cannot be served.
    Start(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resolve(message) | Self::Start(message) => f.write_str(message),
            Self::Model { source, error } => write!(f, "model '{source}': {error}"),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<LoadError> for String {
    fn from(e: LoadError) -> Self {
        e.to_string()
    }
}

impl ServedModel {
    /// Loads the model of `spec` (resolving a hub id) and starts its scheduler.
    pub fn load(spec: &ModelSpec, options: &LoadOptions, scheduler: SchedulerConfig) -> Result<Self, LoadError> {
        let dir = hub::resolve(&spec.source).map_err(LoadError::Resolve)?;
        spec.token_ids.warm_up();
        let options = LoadOptions {
            dtype: spec.dtype,
            ..options.clone()
        };
        let model = Model::load(&dir, &options).map_err(|error| LoadError::Model {
            source: spec.source.clone(),
            error,
        })?;
        Self::start(spec, &dir, model, scheduler).map_err(LoadError::Start)
    }

    /// Serves a loaded `model` (from folder `dir`) as `spec` says: checks its default task and
    /// starts its scheduler.
    fn start(
        spec: &ModelSpec,
        dir: &std::path::Path,
        model: Model,
        scheduler: SchedulerConfig,
    ) -> Result<Self, String> {
        if let Some(task) = &spec.default_task {
            model
                .task_index(task)
                .map_err(|e| format!("--default-task for model '{}': {e}", spec.name))?;
        }
        crate::metrics::model_info(&spec.name, spec.dtype.as_str(), &model.info().architecture);
        let model = Arc::new(model);
        let scheduler = Scheduler::start(Arc::clone(&model), &spec.name, scheduler)
            .map_err(|e| format!("model '{}': cannot start its worker: {e}", spec.name))?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        tracing::info!(
            model = %spec.name,
            source = %spec.source,
            dir = %dir.display(),
            architecture = %model.info().architecture,
            dimensions = model.info().dimension,
            max_input_tokens = model.info().max_input_tokens,
            dtype = %spec.dtype,
            kernels = %openembed_engine::kernels::isa_name(),
            "model loaded"
        );
        Ok(Self {
            name: spec.name.clone(),
            source: spec.source.clone(),
            model,
            scheduler,
            created,
            token_ids: spec.token_ids,
            default_task: spec.default_task.clone(),
            ranges: Default::default(),
        })
    }
}

/// All served models, found by name or alias.
pub struct Registry {
    models: Vec<Arc<ServedModel>>,
    names: BTreeMap<String, usize>,
}

impl Registry {
    /// Loads every model (resolving hub ids) and starts their schedulers.
    pub fn load(
        specs: &[ModelSpec],
        aliases: &[Alias],
        options: &LoadOptions,
        scheduler: SchedulerConfig,
    ) -> Result<Self, String> {
        let mut models = Vec::new();
        let mut names = BTreeMap::new();
        for spec in specs {
            let served = ServedModel::load(spec, options, scheduler)?;
            if names.insert(served.name.clone(), models.len()).is_some() {
                return Err(format!(
                    "two models are served as '{}': give one another name with SPEC=NAME",
                    spec.name
                ));
            }
            models.push(Arc::new(served));
        }
        for alias in aliases {
            let Some(&index) = names.get(&alias.target) else {
                return Err(format!(
                    "alias '{}' points to '{}', which is not a served model",
                    alias.name, alias.target
                ));
            };
            if names.insert(alias.name.clone(), index).is_some() {
                return Err(format!("alias '{}' is already a model name or alias", alias.name));
            }
        }
        Ok(Self { models, names })
    }

    /// The model served under `name` (a model name or an alias).
    pub fn get(&self, name: &str) -> Option<&Arc<ServedModel>> {
        self.names.get(name).map(|&i| &self.models[i])
    }

    /// The model served under `name`, or the 404 that lists every served name.
    pub fn find(&self, name: &str) -> Result<&Arc<ServedModel>, RequestError> {
        self.get(name)
            .ok_or_else(|| RequestError::model_not_found(name, self.names.keys().map(String::as_str)))
    }

    /// Every name clients may use (models and aliases), with its model, sorted by name.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Arc<ServedModel>)> {
        self.names.iter().map(|(name, &i)| (name.as_str(), &self.models[i]))
    }

    /// The loaded models.
    pub fn models(&self) -> &[Arc<ServedModel>] {
        &self.models
    }

    /// Stops every scheduler after its queue is drained.
    pub fn shutdown(&self) {
        for m in &self.models {
            m.scheduler.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_aliases_parse() {
        let s: ModelSpec = "models/all-MiniLM-L6-v2".parse().unwrap();
        assert_eq!(s.name, "all-MiniLM-L6-v2");
        let s: ModelSpec = "sentence-transformers/all-mpnet-base-v2=mpnet".parse().unwrap();
        assert_eq!(
            (s.source.as_str(), s.name.as_str()),
            ("sentence-transformers/all-mpnet-base-v2", "mpnet")
        );
        assert!("=x".parse::<ModelSpec>().is_err());
        let a: Alias = "text-embedding-3-small=all-MiniLM-L6-v2".parse().unwrap();
        assert_eq!(a.target, "all-MiniLM-L6-v2");
        assert!("nope".parse::<Alias>().is_err());
    }
}
