//! Where a model is found when none is named: the default model (all-MiniLM-L6-v2) is looked
//! for the same way by every command (`serve`, `embed`, `batch`, `models`) and the Python
//! package, from any working folder.
//!
//! Search order: `models/` in the working folder or the nearest folder above it that has one
//! (a source checkout, where `make run` puts the model), then the openembed home's `models/`
//! (where `openembed fetch` puts it).

use crate::registry::ModelSpec;
use std::path::{Path, PathBuf};

/// The served name of the default model and the name of its folder.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";

/// The openembed home: `OPENEMBED_HOME`, else `$XDG_DATA_HOME/openembed`, else
/// `~/.local/share/openembed`, else `.openembed` in the working folder (no home folder known).
pub fn home() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = var("OPENEMBED_HOME") {
        return home;
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return data.join("openembed");
    }
    match var("HOME") {
        Some(home) => home.join(".local/share/openembed"),
        None => PathBuf::from(".openembed"),
    }
}

/// Folders holding model folders, in search order (only those that exist).
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(found) = cwd.ancestors().map(|a| a.join("models")).find(|d| d.is_dir()) {
            dirs.push(found);
        }
    }
    let home_models = home().join("models");
    if home_models.is_dir() && !dirs.iter().any(|d| same_dir(d, &home_models)) {
        dirs.push(home_models);
    }
    dirs
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The default model's folder, or an error that says where it was looked for and how to get it.
pub fn default_model_dir() -> Result<PathBuf, String> {
    let dirs = model_dirs();
    if let Some(dir) = dirs
        .iter()
        .map(|d| d.join(DEFAULT_MODEL))
        .find(|d| d.join("config.json").is_file())
    {
        return Ok(dir);
    }
    let mut looked: Vec<String> = dirs
        .iter()
        .map(|d| d.join(DEFAULT_MODEL).display().to_string())
        .collect();
    let home_dir = home().join("models").join(DEFAULT_MODEL);
    if !looked.contains(&home_dir.display().to_string()) {
        looked.push(home_dir.display().to_string());
    }
    Err(format!(
        "the default model {DEFAULT_MODEL} is not installed (looked in {}). Run `openembed fetch` to \
         put it in {} (the openembed home; set OPENEMBED_HOME to choose another), or name a model with \
         --model FOLDER_OR_HUB_ID",
        looked.join(", "),
        home_dir.display()
    ))
}

/// The default model as a served model: its folder, served as [`DEFAULT_MODEL`].
pub fn default_model_spec() -> Result<ModelSpec, String> {
    Ok(ModelSpec::named(default_model_dir()?, DEFAULT_MODEL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_follows_the_environment() {
        // Only reads: the variables of this process decide, and OPENEMBED_HOME wins when set.
        let home = home();
        match std::env::var_os("OPENEMBED_HOME").filter(|v| !v.is_empty()) {
            Some(h) => assert_eq!(home, PathBuf::from(h)),
            None => assert!(home.ends_with("openembed") || home.ends_with(".openembed")),
        }
    }
}
