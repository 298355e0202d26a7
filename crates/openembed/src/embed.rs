//! `openembed embed`: embed texts from arguments, stdin (one a line) or a file, and write JSON
//! lines, CSV/TSV, plain text or a numpy `.npy` matrix.

use crate::home::default_model_dir;
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
    /// Model: a folder or a Hugging Face hub id [default: all-MiniLM-L6-v2 from ./models (or a
    /// folder above) or OPENEMBED_HOME/models, where `openembed fetch` puts it].
    #[arg(long, env = "OPENEMBED_MODEL")]
    model: Option<String>,
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
    /// Precision of the dense layers: float32 (exact), bfloat16 (half the memory; fast on CPUs
    /// with AMX or AMD's AVX512-BF16, elsewhere only a memory saving) or int8 (fastest).
    #[arg(long, env = "OPENEMBED_DTYPE", default_value = "float32")]
    dtype: DType,
    /// Read texts from this file: `.jsonl` (a JSON string, or an object with "text" or "input",
    /// per line) or anything else as plain text, one a line.
    #[arg(long, short = 'i')]
    input: Option<PathBuf>,
    /// Write vectors to this file; the format follows the extension: `.jsonl` (JSON lines),
    /// `.csv` / `.tsv` (a header row, then index, tokens and the values), `.npy` (float32 matrix
    /// [n, dim]) or `.txt` (one vector a line, space-separated). Other names are refused.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Leave blank lines of the input out (with a warning) instead of refusing them. Output rows
    /// keep the line's position as `index`.
    #[arg(long)]
    skip_blank: bool,
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

/// The folder of `spec` (a folder or hub id), or of the default model when `spec` is `None`.
pub fn model_dir(spec: Option<&str>) -> Result<PathBuf> {
    match spec {
        Some(spec) => openembed_server::hub::resolve(spec).map_err(anyhow::Error::msg),
        None => default_model_dir(),
    }
}

/// Loads a model from a folder or hub id (the default model when `spec` is `None`).
pub fn load_model(spec: Option<&str>, threads: Option<usize>, dtype: DType) -> Result<Model> {
    let dir = model_dir(spec)?;
    let spec = spec.map_or_else(|| dir.display().to_string(), str::to_owned);
    let model = Model::load(
        &dir,
        &LoadOptions {
            threads,
            dtype,
            ..LoadOptions::default()
        },
    )
    .with_context(|| format!("cannot load model {spec}"))?;
    crate::return_freed_memory();
    Ok(model)
}

/// Says on a terminal that texts are awaited on stdin, so a bare command does not look hung.
pub fn stdin_hint(what: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!(
            "reading {what} from standard input, one a line; end with Ctrl-D (or give them as arguments, or --input FILE)"
        );
    }
}

/// Positions of the texts to embed: every one, or (with `skip`) all but the blank ones, which are
/// otherwise refused as the server refuses empty input.
fn non_blank(texts: &[String], skip: bool, source: &str) -> Result<Vec<usize>> {
    let blank: Vec<usize> = (0..texts.len()).filter(|&i| texts[i].trim().is_empty()).collect();
    if blank.is_empty() {
        return Ok((0..texts.len()).collect());
    }
    let shown: Vec<String> = blank.iter().take(5).map(|i| (i + 1).to_string()).collect();
    let more = if blank.len() > 5 { ", …" } else { "" };
    let what = if source == "arguments" { "argument" } else { "line" };
    if !skip {
        bail!(
            "{source} has {} blank {what}(s) ({}{more}): empty input cannot be embedded (the server refuses it \
             too). Remove them, or pass --skip-blank to leave blank lines out",
            blank.len(),
            shown.join(", ")
        );
    }
    eprintln!(
        "warning: {source}: left out {} blank {what}(s) ({}{more}); output indexes keep the input's positions",
        blank.len(),
        shown.join(", ")
    );
    Ok((0..texts.len()).filter(|i| blank.binary_search(i).is_err()).collect())
}

/// Entry point of `openembed embed`.
pub fn run(args: &EmbedArgs) -> Result<()> {
    // A wrong output name is a usage error: say so before any work.
    let format = match &args.output {
        Some(path) => OutputFormat::from_path(path)?,
        None => OutputFormat::JsonLines,
    };
    let (all_texts, source): (Vec<String>, String) = if !args.texts.is_empty() {
        (args.texts.clone(), "arguments".into())
    } else if let Some(path) = &args.input {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let name = path.display().to_string();
        let texts = read_texts(std::io::BufReader::new(file), is_jsonl(path), &name)?;
        (texts, name)
    } else {
        stdin_hint("texts");
        (read_texts(std::io::stdin().lock(), false, "stdin")?, "stdin".into())
    };
    let kept = non_blank(&all_texts, args.skip_blank, &source)?;
    let model = load_model(args.model.as_deref(), args.threads, args.dtype)?;
    if model.info().rerank.is_some() {
        bail!(
            "{} is a reranker, not an embedding model (use `openembed rerank`)",
            args.model.as_deref().unwrap_or("the model")
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
    let refs: Vec<&str> = kept.iter().map(|&i| all_texts[i].as_str()).collect();
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
            "input {} has {} tokens, more than the model's limit of {} (use --truncate)",
            kept[index],
            t.untruncated_tokens,
            model.info().max_input_tokens
        );
    }
    let dim = args.dimensions.unwrap_or(model.info().dimension);
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
            writer.write(kept[start + i], tokenized[start + i].tokens(), &v)?;
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

    #[test]
    fn blank_lines_are_refused_or_skipped() {
        let texts: Vec<String> = ["a", "", "b", "  "].iter().map(|s| s.to_string()).collect();
        let error = non_blank(&texts, false, "in.txt").unwrap_err().to_string();
        assert!(
            error.contains("in.txt has 2 blank line(s) (2, 4)") && error.contains("--skip-blank"),
            "{error}"
        );
        assert_eq!(non_blank(&texts, true, "in.txt").unwrap(), [0, 2]);
        assert_eq!(non_blank(&texts[..1], false, "x").unwrap(), [0]);
    }
}
