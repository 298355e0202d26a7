//! `openembed embed`: embed texts from arguments, stdin (one a line) or a file, and write JSON
//! lines, plain text or a numpy `.npy` matrix.

use crate::output::{OutputFormat, VectorWriter};
use anyhow::{bail, Context, Result};
use openembed_engine::{budget_batches, truncate_dimensions, DType, LoadOptions, Model, TokenizedInput, Truncation};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Token budget of one engine batch for corpora.
const BATCH_TOKENS: usize = 8192;

/// Options of `openembed embed`.
#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Model: a folder or a Hugging Face hub id.
    #[arg(long, env = "OPENEMBED_MODEL", default_value = "models/all-MiniLM-L6-v2")]
    model: String,
    /// Cut vectors to this many dimensions (and renormalize).
    #[arg(long)]
    dimensions: Option<usize>,
    /// Truncate over-long inputs to the model limit instead of failing.
    #[arg(long)]
    truncate: bool,
    /// Task adapter of models that have them (jina-embeddings-v3: retrieval.query,
    /// retrieval.passage, text-matching, …); its instruction goes in front of every text.
    #[arg(long)]
    task: Option<String>,
    /// Compute threads (default: all cores).
    #[arg(long, env = "OPENEMBED_THREADS")]
    threads: Option<usize>,
    /// Precision of the dense layers: float32 (exact), bfloat16 or int8 (fastest).
    #[arg(long, env = "OPENEMBED_DTYPE", default_value = "float32")]
    dtype: DType,
    /// Read texts from this file: `.jsonl` (a JSON string, or an object with "text" or "input",
    /// per line) or anything else as plain text, one a line.
    #[arg(long, short = 'i')]
    input: Option<PathBuf>,
    /// Write vectors to this file; the format follows the extension: `.jsonl` (JSON lines),
    /// `.npy` (float32 matrix [n, dim]) or `.txt` (one vector a line, space-separated).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Texts to embed; read from --input or stdin when none are given.
    texts: Vec<String>,
}

/// Reads texts from a `.jsonl` or plain text source.
pub fn read_texts(reader: impl BufRead, jsonl: bool, name: &str) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {name}"))?;
        if !jsonl {
            texts.push(line);
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{name}:{}: not a JSON line", n + 1))?;
        let text = match &value {
            serde_json::Value::String(s) => Some(s.clone()),
            other => other
                .get("text")
                .or_else(|| other.get("input"))
                .and_then(|t| t.as_str())
                .map(str::to_owned),
        };
        match text {
            Some(t) => texts.push(t),
            None => bail!("{name}:{}: expected a JSON string or an object with \"text\"", n + 1),
        }
    }
    Ok(texts)
}

fn is_jsonl(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jsonl" || e == "json")
}

/// Loads a model from a folder or hub id.
pub fn load_model(spec: &str, threads: Option<usize>, dtype: DType) -> Result<Model> {
    let dir = openembed_server::hub::resolve(spec).map_err(anyhow::Error::msg)?;
    Model::load(
        &dir,
        &LoadOptions {
            threads,
            dtype,
            ..LoadOptions::default()
        },
    )
    .with_context(|| format!("cannot load model {spec}"))
}

/// Entry point of `openembed embed`.
pub fn run(args: &EmbedArgs) -> Result<()> {
    let texts: Vec<String> = if !args.texts.is_empty() {
        args.texts.clone()
    } else if let Some(path) = &args.input {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        read_texts(
            std::io::BufReader::new(file),
            is_jsonl(path),
            &path.display().to_string(),
        )?
    } else {
        read_texts(std::io::stdin().lock(), false, "stdin")?
    };
    let model = load_model(&args.model, args.threads, args.dtype)?;
    if model.info().rerank.is_some() {
        bail!(
            "{} is a reranker, not an embedding model (use `openembed rerank`)",
            args.model
        );
    }
    if let Some(d) = args.dimensions {
        if d == 0 || d > model.info().dimension {
            bail!(
                "--dimensions must be between 1 and the model's {}",
                model.info().dimension
            );
        }
    }
    let truncation = if args.truncate {
        Truncation::End
    } else {
        Truncation::None
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // The model's default prompt, as the server applies it when a request names none.
    let info = model.info();
    let prompt = info
        .default_prompt_name
        .as_ref()
        .and_then(|name| info.prompts.get(name));
    let task = args.task.as_deref().map(|t| model.task_index(t)).transpose()?;
    let prompt = info.prefix(task, prompt.map(String::as_str));
    let tokenized = model.tokenize(&refs, prompt.as_deref(), truncation)?;
    if let Some((index, t)) = tokenized
        .iter()
        .enumerate()
        .find(|(_, t)| t.over_limit && !t.truncated())
    {
        bail!(
            "input {index} has {} tokens, more than the model's limit of {} (use --truncate)",
            t.untruncated_tokens,
            model.info().max_input_tokens
        );
    }
    let dim = args.dimensions.unwrap_or(model.info().dimension);
    let format = match &args.output {
        Some(path) => OutputFormat::from_path(path),
        None => OutputFormat::JsonLines,
    };
    let mut writer = VectorWriter::create(args.output.as_deref(), format, dim)?;
    // Batches of about 8k tokens keep memory flat on large inputs.
    let lengths: Vec<usize> = tokenized.iter().map(TokenizedInput::tokens).collect();
    for range in budget_batches(&lengths, BATCH_TOKENS) {
        let start = range.start;
        let ids: Vec<&[u32]> = tokenized[range].iter().map(|t| t.ids.as_slice()).collect();
        let vectors = model.embed_ids_with_tasks(&ids, task.map(|t| vec![Some(t); ids.len()]).as_deref())?;
        for (i, v) in vectors.into_iter().enumerate() {
            let v = match args.dimensions {
                Some(d) => truncate_dimensions(&v, d, model.info().normalize)?,
                None => v,
            };
            writer.write(start + i, tokenized[start + i].tokens(), &v)?;
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_plain_inputs() {
        let jsonl = "\"a\"\n{\"text\": \"b\"}\n\n{\"input\": \"c\"}\n";
        assert_eq!(read_texts(jsonl.as_bytes(), true, "x").unwrap(), ["a", "b", "c"]);
        assert!(read_texts("{\"n\": 1}\n".as_bytes(), true, "x").is_err());
        assert_eq!(read_texts("one\ntwo\n".as_bytes(), false, "x").unwrap(), ["one", "two"]);
    }
}
