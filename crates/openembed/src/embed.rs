//! `openembed embed`: embed texts from the arguments or stdin (one per line) and print one JSON
//! object per line.

use anyhow::{Context, Result};
use openembed_engine::{truncate_dimensions, LoadOptions, Model, Truncation};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Options of `openembed embed`.
#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Model folder.
    #[arg(long, env = "OPENEMBED_MODEL", default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// Cut vectors to this many dimensions (and renormalize).
    #[arg(long)]
    dimensions: Option<usize>,
    /// Truncate over-long inputs to the model limit instead of failing.
    #[arg(long)]
    truncate: bool,
    /// Compute threads (default: all cores).
    #[arg(long, env = "OPENEMBED_THREADS")]
    threads: Option<usize>,
    /// Texts to embed; read from stdin, one per line, when none are given.
    texts: Vec<String>,
}

/// Entry point of `openembed embed`.
pub fn run(args: &EmbedArgs) -> Result<()> {
    let texts: Vec<String> = if args.texts.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .context("cannot read stdin")?
    } else {
        args.texts.clone()
    };
    let model = Model::load(&args.model, &LoadOptions { threads: args.threads })
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let truncation = if args.truncate {
        Truncation::End
    } else {
        Truncation::None
    };
    let tokenized = model.tokenize(&refs, None, truncation)?;
    let mut out = std::io::stdout().lock();
    // Batches of about 8k tokens keep memory flat on large inputs.
    let mut start = 0;
    while start < tokenized.len() {
        let mut end = start;
        let mut tokens = 0;
        while end < tokenized.len() && (end == start || tokens + tokenized[end].tokens() <= 8192) {
            tokens += tokenized[end].tokens();
            end += 1;
        }
        let ids: Vec<&[u32]> = tokenized[start..end].iter().map(|t| t.ids.as_slice()).collect();
        let vectors = model.embed_ids(&ids).map_err(|e| match e {
            openembed_engine::Error::InputTooLong { index, tokens, limit } => anyhow::anyhow!(
                "input {} has {tokens} tokens, more than the model's limit of {limit} (use --truncate)",
                start + index
            ),
            other => other.into(),
        })?;
        for (i, v) in vectors.into_iter().enumerate() {
            let v = match args.dimensions {
                Some(d) => truncate_dimensions(&v, d)?,
                None => v,
            };
            let line = serde_json::json!({"index": start + i, "tokens": tokenized[start + i].tokens(), "embedding": v});
            writeln!(out, "{line}")?;
        }
        start = end;
    }
    Ok(())
}
