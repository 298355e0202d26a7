//! Resolves a model SPEC (a local directory or a Hugging Face hub id) to a local model folder.
//!
//! Hub ids go through the `hf-hub` crate and its cache (`HF_HOME`, default
//! `~/.cache/huggingface`). With `HF_HUB_OFFLINE=1` only the cache is used, and a model that is
//! not cached is a clear error instead of a network call.

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};
use std::path::{Path, PathBuf};

/// Files a model folder needs.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
/// Files used when the repository has them.
const OPTIONAL: &[&str] = &[
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// Whether `HF_HUB_OFFLINE` asks for cache-only operation.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The hub cache folder (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`).
pub fn cache_dir() -> PathBuf {
    Cache::from_env().path().clone()
}

/// Turns SPEC into a local folder: an existing directory as is, otherwise a hub id fetched into
/// (or found in) the hub cache. SPEC is taken for a local path, reported missing and never sent
/// to the hub, when it cannot be a hub id (`./x`, `/x`, `~/x`, more than one `/`, a backslash)
/// or when its first part is a folder that exists here (`models/x` beside a `models/` folder).
pub fn resolve(spec: &str) -> Result<PathBuf, String> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if spec.is_empty() {
        return Err("model '': an empty model name".into());
    }
    let looks_like_path = spec.starts_with('.')
        || spec.starts_with('/')
        || spec.starts_with('~')
        || spec.contains('\\')
        || spec.split('/').count() > 2
        || spec.split_once('/').is_some_and(|(first, _)| Path::new(first).is_dir());
    let here = || {
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "the working folder".into())
    };
    if looks_like_path {
        let what = if path.exists() {
            "is not a folder"
        } else {
            "no such folder"
        };
        let relative = if path.is_relative() {
            format!(" (relative to {})", here())
        } else {
            String::new()
        };
        return Err(format!("model '{spec}': {what}{relative}"));
    }
    fetch(spec).map_err(|why| {
        format!(
            "model '{spec}': no such folder in {}, and as a Hugging Face hub id: {why}",
            here()
        )
    })
}

/// Says plainly why a hub file could not be had: the hub is unreachable (offline), the model or
/// file does not exist there, or access is refused; otherwise the client's own words.
fn hub_failure(error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    if ["dns", "connection", "connect", "timed out", "network", "resolve"]
        .iter()
        .any(|w| lower.contains(w))
    {
        format!(
            "the Hugging Face hub cannot be reached (offline? set HF_ENDPOINT for a mirror, or \
             HF_HUB_OFFLINE=1 to use only the local cache): {error}"
        )
    } else if lower.contains("404") || lower.contains("not found") {
        "not found on the Hugging Face hub (check the id, or give a local folder)".into()
    } else if lower.contains("401") || lower.contains("403") {
        format!("the hub refused access (a gated or private model needs HF_TOKEN): {error}")
    } else {
        error.to_string()
    }
}

/// A source of repository files: the cache alone, or the hub API (which fills the cache).
trait FileSource {
    fn get(&self, file: &str) -> Result<PathBuf, String>;
}

struct CacheOnly(hf_hub::CacheRepo);

impl FileSource for CacheOnly {
    fn get(&self, file: &str) -> Result<PathBuf, String> {
        self.0.get(file).ok_or_else(|| "not in the local hub cache".to_string())
    }
}

struct Online(hf_hub::api::sync::ApiRepo);

impl FileSource for Online {
    fn get(&self, file: &str) -> Result<PathBuf, String> {
        self.0.get(file).map_err(|e| hub_failure(&e.to_string()))
    }
}

/// Fetches (or finds in the cache) every file the model needs; an error is the reason alone
/// (`resolve` names the model).
fn fetch(id: &str) -> Result<PathBuf, String> {
    let cache = Cache::from_env();
    let source: Box<dyn FileSource> = if hub_offline() {
        Box::new(CacheOnly(cache.repo(Repo::model(id.to_string()))))
    } else {
        let api = ApiBuilder::from_cache(cache.clone())
            .with_progress(false)
            .build()
            .map_err(|e| format!("cannot use the Hugging Face hub: {e}"))?;
        Box::new(Online(api.model(id.to_string())))
    };
    let where_ = if hub_offline() {
        format!(
            " (HF_HUB_OFFLINE is set and the hub cache {} does not have it)",
            cache.path().display()
        )
    } else {
        String::new()
    };
    let required = |file: &str| {
        source
            .get(file)
            .map_err(|e| format!("cannot get {file} from the hub: {e}{where_}"))
    };
    // A sentence-transformers static model keeps its table and tokenizer in a module folder
    // (`0_StaticEmbedding/`) and has no transformer files at the root.
    let modules = source.get("modules.json").ok();
    let listed = match &modules {
        Some(path) => module_files(path)?,
        None => Vec::new(),
    };
    let static_in_subfolder = listed.iter().any(ModuleFiles::is_static_in_subfolder);
    let mut root_file = modules.clone();
    if !static_in_subfolder {
        for file in REQUIRED {
            let path = required(file)?;
            root_file.get_or_insert(path);
        }
    }
    for file in OPTIONAL {
        let _ = source.get(file);
    }
    if !static_in_subfolder && source.get("model.safetensors").is_err() {
        // Sharded safetensors, else a PyTorch checkpoint (read without running its pickle).
        match source.get("model.safetensors.index.json") {
            Ok(index) => {
                for shard in shard_names(&index)? {
                    required(&shard)?;
                }
            }
            Err(_) => {
                required("pytorch_model.bin")?;
            }
        }
    }
    for module in listed {
        match module {
            ModuleFiles::Config(dir) => {
                required(&format!("{dir}/config.json"))?;
            }
            ModuleFiles::Dense(dir) => {
                required(&format!("{dir}/config.json"))?;
                if source.get(&format!("{dir}/model.safetensors")).is_err() {
                    required(&format!("{dir}/pytorch_model.bin"))?;
                }
            }
            ModuleFiles::Transformer(dir) => {
                for file in REQUIRED {
                    required(&format!("{dir}/{file}"))?;
                }
                let _ = source.get(&format!("{dir}/sentence_bert_config.json"));
            }
            ModuleFiles::Static(dir) if dir.is_empty() || dir == "." => {}
            ModuleFiles::Static(dir) => {
                required(&format!("{dir}/model.safetensors"))?;
                required(&format!("{dir}/tokenizer.json"))?;
            }
        }
    }
    root_file
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| "unexpected hub cache layout".to_string())
}

fn shard_names(index: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let mut names: Vec<String> = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| m.values().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    names.sort();
    names.dedup();
    Ok(names)
}

/// What a sentence-transformers module needs from the repository.
#[derive(Debug, PartialEq)]
enum ModuleFiles {
    /// A Transformer in a subfolder (one at the root is the model itself).
    Transformer(String),
    /// A module configured by `{dir}/config.json` alone (Pooling).
    Config(String),
    /// A Dense module: config and weights.
    Dense(String),
    /// A `StaticEmbedding` module (its folder may be the root).
    Static(String),
}

impl ModuleFiles {
    /// A static model whose table is not at the repository root.
    fn is_static_in_subfolder(&self) -> bool {
        matches!(self, ModuleFiles::Static(dir) if !dir.is_empty() && dir != ".")
    }
}

/// The files each module of `modules.json` loads (Normalize loads none).
fn module_files(modules: &Path) -> Result<Vec<ModuleFiles>, String> {
    let bad = |why: String| format!("{}: {why}", modules.display());
    let text = std::fs::read_to_string(modules).map_err(|e| bad(e.to_string()))?;
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for m in &items {
        let kind = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let dir = m
            .get("path")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        match kind.rsplit('.').next().unwrap_or(kind) {
            "Transformer" if dir.is_empty() => {}
            "Transformer" => out.push(ModuleFiles::Transformer(dir)),
            "Pooling" => out.push(ModuleFiles::Config(dir)),
            "Dense" => out.push(ModuleFiles::Dense(dir)),
            "StaticEmbedding" => out.push(ModuleFiles::Static(dir)),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_directories_resolve_to_themselves() {
        let dir = std::env::temp_dir();
        assert_eq!(resolve(dir.to_str().unwrap()).unwrap(), dir);
        assert!(resolve("./no/such/dir").unwrap_err().contains("no such folder"));
        assert!(resolve("a/b/c").unwrap_err().contains("no such folder"));
        // A first part that is a folder here (tests run in the crate folder, which has src/)
        // makes it a path, not a hub id.
        let missing = resolve("src/openembed-no-such-model");
        assert!(missing.unwrap_err().contains("no such folder"));
    }

    #[test]
    fn module_files_come_from_modules_json() {
        let dir = std::env::temp_dir().join(format!("oe-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("modules.json");
        std::fs::write(
            &path,
            r#"[{"idx":0,"path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"path":"2_Dense","type":"sentence_transformers.models.Dense"},
                {"idx":3,"path":"3_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        assert_eq!(
            module_files(&path).unwrap(),
            vec![
                ModuleFiles::Config("1_Pooling".into()),
                ModuleFiles::Dense("2_Dense".into())
            ]
        );
        // A static model (sentence-transformers' static-retrieval-mrl layout).
        std::fs::write(
            &path,
            r#"[{"idx":0,"path":"0_StaticEmbedding","type":"sentence_transformers.models.StaticEmbedding"},
                {"idx":1,"path":"1_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        assert_eq!(
            module_files(&path).unwrap(),
            vec![ModuleFiles::Static("0_StaticEmbedding".into())]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
