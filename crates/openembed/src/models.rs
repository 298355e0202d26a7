//! `openembed models`: the models the server would find — folders under `./models` (or the
//! nearest `models/` above), under the openembed home's `models/`, and in the Hugging Face hub
//! cache — with their architecture, dimensions, input limit and pooling.

use anyhow::Result;
use openembed_engine::{LoadOptions, Model};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Options of `openembed models`.
#[derive(clap::Args)]
pub struct ModelsArgs {
    /// A folder holding model folders [default: ./models (or the nearest models/ above) and
    /// OPENEMBED_HOME/models].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per model instead of a table.
    #[arg(long)]
    json: bool,
}

/// A model folder found on disk, and the SPEC that serves it.
struct Found {
    spec: String,
    dir: PathBuf,
}

fn local_models(dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Found> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .map(|p| Found {
            spec: p.display().to_string(),
            dir: p,
        })
        .collect();
    found.sort_by(|a, b| a.spec.cmp(&b.spec));
    found
}

/// Models in the hub cache (`$HF_HOME/hub/models--ORG--NAME/snapshots/REV`), at the `main` ref
/// when there is one.
fn hub_models() -> Vec<Found> {
    let cache = openembed_pipeline::hub::cache_dir();
    let Ok(entries) = std::fs::read_dir(&cache) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for repo in entries.flatten().map(|e| e.path()) {
        let Some(name) = repo
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("models--"))
        else {
            continue;
        };
        let id = name.replacen("--", "/", 1);
        let snapshots = repo.join("snapshots");
        let main = std::fs::read_to_string(repo.join("refs/main"))
            .ok()
            .map(|r| snapshots.join(r.trim()));
        let snapshot = main.filter(|p| p.is_dir()).or_else(|| {
            std::fs::read_dir(&snapshots)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.join("config.json").exists())
        });
        if let Some(dir) = snapshot.filter(|p| p.join("config.json").exists()) {
            found.push(Found { spec: id, dir });
        }
    }
    found.sort_by(|a, b| a.spec.cmp(&b.spec));
    found
}

/// Entry point of `openembed models`.
pub fn run(args: &ModelsArgs) -> Result<()> {
    let dirs = match &args.dir {
        Some(dir) => vec![dir.clone()],
        None => openembed_pipeline::home::model_dirs(),
    };
    let found: Vec<(&str, Found)> = dirs
        .iter()
        .flat_map(|d| local_models(d))
        .map(|f| ("local", f))
        .chain(hub_models().into_iter().map(|f| ("hub cache", f)))
        .collect();
    if found.is_empty() && !args.json {
        let mut places: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        if args.dir.is_none() {
            places.push(format!(
                "{} (the openembed home)",
                openembed_pipeline::home::home().join("models").display()
            ));
        }
        places.push(format!(
            "the hub cache {}",
            openembed_pipeline::hub::cache_dir().display()
        ));
        println!(
            "no models in {}; `openembed fetch` installs the default model",
            places.join(", ")
        );
        return Ok(());
    }
    if !args.json {
        println!(
            "{:<48} {:<10} {:<12} {:>6} {:>10}  {:<10} NORMALIZED",
            "MODEL (--model SPEC)", "WHERE", "ARCH", "DIMS", "MAX TOKENS", "POOLING"
        );
    }
    for (place, f) in found {
        let row = match Model::load(
            &f.dir,
            &LoadOptions {
                threads: Some(1),
                ..LoadOptions::default()
            },
        ) {
            Ok(model) => {
                let i = model.info();
                let pooling: Vec<&str> = i.pooling.iter().map(|p| p.name()).collect();
                json!({"model": f.spec, "where": place, "dir": f.dir, "architecture": i.architecture,
                       "dimensions": i.dimension, "max_input_tokens": i.max_input_tokens,
                       "pooling": pooling.join("+"), "normalized": i.normalize})
            }
            Err(e) => json!({"model": f.spec, "where": place, "dir": f.dir, "error": e.to_string()}),
        };
        if args.json {
            println!("{row}");
        } else if let Some(error) = row["error"].as_str() {
            println!("{:<48} {:<10} unusable: {error}", f.spec, place);
        } else {
            println!(
                "{:<48} {:<10} {:<12} {:>6} {:>10}  {:<10} {}",
                f.spec,
                place,
                row["architecture"].as_str().unwrap_or(""),
                row["dimensions"].as_u64().unwrap_or(0),
                row["max_input_tokens"].as_u64().unwrap_or(0),
                row["pooling"].as_str().unwrap_or(""),
                row["normalized"]
            );
        }
    }
    Ok(())
}
