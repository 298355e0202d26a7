//! `openembed embed`: embed texts from arguments, stdin (one a line) or a file, and write JSON
//! lines, CSV/TSV, plain text or a numpy `.npy` matrix.

use crate::output::{Dtype, OutputFormat, Row, VectorWriter};
use crate::UsageError;
use anyhow::{bail, Context, Result};
use openembed_engine::{DType, LoadOptions, Side};
use openembed_pipeline::{
    Codes, Defaults, EmbedRequest, EmbeddingType, Input, ModelSpec, SchedulerConfig, ServedModel, TokenIds,
};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Inputs handed back (and written) at a time.
const WRITE_CHUNK: usize = 1024;

/// What `openembed embed` tells a caller whose input is over the model's limit.
const TRUNCATE_HINT: &str = "Pass --truncate to cut over-long inputs at the limit instead.";

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
    /// Compressed vectors: int8 or uint8 (the model's calibrated scale), binary or ubinary (sign
    /// bits packed 8 per byte); .npy files get int8 / uint8 matrices [default: float].
    #[arg(long, value_parser = parse_embedding_type)]
    embedding_type: Option<EmbeddingType>,
    /// Truncate over-long inputs to the model limit instead of failing.
    #[arg(long)]
    truncate: bool,
    /// One of the model's named prompts (e.g. query), put in front of every text [default: the
    /// model's default prompt, if it has one].
    #[arg(long)]
    prompt_name: Option<String>,
    /// What integer inputs (a JSON array of ids on a `.jsonl` line) mean: cl100k_base (tiktoken
    /// ids, as at OpenAI), o200k_base or native (the model's own vocabulary).
    #[arg(long, default_value = "cl100k_base")]
    token_ids: TokenIds,
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
    /// Read texts from this file: `.jsonl` (a JSON string, an array of token ids, or an object
    /// with "text" or "input" holding either, per line) or anything else as plain text, one a line.
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
    /// Which output of the model to write: dense (a vector per input), sparse (SPLADE's or
    /// bge-m3's weights as `"sparse": {"indices", "values"}`) or multi (a ColBERT or bge-m3
    /// model's token vectors as `"vectors"`); sparse and multi are written as JSON lines.
    #[arg(long, value_enum, default_value = "dense")]
    output_type: OutputType,
    /// The texts are queries: a ColBERT model's query form (prefix, expansion), an
    /// inference-free sparse model's query table.
    #[arg(long)]
    is_query: bool,
    /// With `--output-type sparse`: keep at most this many of each text's largest weights
    /// (sentence-transformers' `max_active_dims`).
    #[arg(long)]
    max_active_dims: Option<usize>,
    /// With `--output-type sparse`: drop weights below this.
    #[arg(long)]
    min_weight: Option<f32>,
    /// Texts to embed; read from --input or stdin when none are given.
    texts: Vec<String>,
}

/// `--output-type`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputType {
    Dense,
    Sparse,
    Multi,
}

/// Reads texts from a `.jsonl` or plain text source.
pub fn read_texts(reader: impl BufRead, jsonl: bool, name: &str) -> Result<Vec<String>> {
    read_inputs(reader, jsonl, name)?
        .into_iter()
        .enumerate()
        .map(|(n, input)| match input {
            Input::Text(t) => Ok(t),
            Input::Tokens(_) => bail!("{name}: input {} is token ids; texts are expected here", n + 1),
        })
        .collect()
}

/// Reads inputs from a `.jsonl` (a string, an array of token ids, or an object with "text" or
/// "input" holding either, per line) or plain text (a line each) source.
pub fn read_inputs(reader: impl BufRead, jsonl: bool, name: &str) -> Result<Vec<Input>> {
    let mut texts = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {name}"))?;
        if !jsonl {
            texts.push(Input::Text(line));
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{name}:{}: not a JSON line", n + 1))?;
        let value = match &value {
            serde_json::Value::Object(fields) => fields.get("text").or_else(|| fields.get("input")),
            other => Some(other),
        };
        let input = match value {
            Some(serde_json::Value::String(s)) => Some(Input::Text(s.clone())),
            Some(serde_json::Value::Array(ids)) if !ids.is_empty() => ids
                .iter()
                .map(serde_json::Value::as_i64)
                .collect::<Option<Vec<i64>>>()
                .map(Input::Tokens),
            _ => None,
        };
        match input {
            Some(input) => texts.push(input),
            None => bail!(
                "{name}:{}: expected a JSON string, an array of token ids, or an object with \"text\"",
                n + 1
            ),
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
        Some(spec) => openembed_pipeline::hub::resolve(spec),
        None => openembed_pipeline::home::default_model_dir(),
    }
    .map_err(anyhow::Error::msg)
}

/// Loads a model from a folder or hub id (the default model when `spec` is `None`) with a
/// scheduler for offline work, the way every command runs embeddings.
pub fn load_served(
    spec: Option<&str>,
    threads: Option<usize>,
    dtype: DType,
    token_ids: TokenIds,
) -> Result<ServedModel> {
    let dir = model_dir(spec)?;
    let source = spec.map_or_else(|| dir.display().to_string(), str::to_owned);
    let model_spec = ModelSpec {
        token_ids,
        dtype,
        ..ModelSpec::named(&dir, &source)
    };
    let options = LoadOptions {
        threads,
        ..LoadOptions::default()
    };
    let served = ServedModel::load(&model_spec, &options, SchedulerConfig::offline())
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot load model {source}"))?;
    crate::return_freed_memory();
    Ok(served)
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
fn non_blank(texts: &[Input], skip: bool, source: &str) -> Result<Vec<usize>> {
    let blank: Vec<usize> = (0..texts.len())
        .filter(|&i| matches!(&texts[i], Input::Text(t) if t.trim().is_empty()))
        .collect();
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
    let (all_inputs, source): (Vec<Input>, String) = if !args.texts.is_empty() {
        (
            args.texts.iter().cloned().map(Input::Text).collect(),
            "arguments".into(),
        )
    } else if let Some(path) = &args.input {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let name = path.display().to_string();
        let inputs = read_inputs(std::io::BufReader::new(file), is_jsonl(path), &name)?;
        (inputs, name)
    } else {
        stdin_hint("texts");
        (read_inputs(std::io::stdin().lock(), false, "stdin")?, "stdin".into())
    };
    let kept = non_blank(&all_inputs, args.skip_blank, &source)?;
    let served = load_served(args.model.as_deref(), args.threads, args.dtype, args.token_ids)?;
    let info = served.model.info();
    if args.output_type == OutputType::Dense {
        if let Some(route) = openembed_pipeline::plan::not_embedding(info.kind()) {
            bail!(
                "{} is a {}, not an embedding model (use {route}; `--output-type` picks its other outputs: {})",
                args.model.as_deref().unwrap_or("the model"),
                info.kind().name(),
                info.outputs().join(", ")
            );
        }
    } else if args.embedding_type.is_some() || !matches!(format, OutputFormat::JsonLines) {
        bail!(UsageError(
            "--output-type sparse or multi writes JSON lines of floats: leave --embedding-type out and name \
             the output .jsonl"
                .into()
        ));
    }
    let side = if args.is_query { Side::Query } else { Side::Document };
    let request = EmbedRequest {
        model: served.name.clone(),
        prompt_name: args.prompt_name.clone(),
        task: args.task.clone(),
        truncate: Some(args.truncate),
        dimensions: args.dimensions,
        sparse: args.output_type == OutputType::Sparse,
        token_vectors: args.output_type == OutputType::Multi,
        side,
        max_active_dims: args.max_active_dims,
        min_weight: args.min_weight,
        ..EmbedRequest::default()
    };
    let defaults = Defaults {
        truncate_hint: TRUNCATE_HINT,
        ..Defaults::default()
    };
    let plan = served.plan(&request, &defaults)?;
    if args.output_type == OutputType::Sparse && args.is_query && info.sparse_query {
        // An inference-free model's queries: its table, no transformer.
        let texts = all_inputs
            .iter()
            .map(|i| match i {
                Input::Text(t) => Ok(t.as_str()),
                Input::Tokens(_) => Err(anyhow::anyhow!(
                    "queries of an inference-free model are texts (its query tokenizer makes their ids)"
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let kept_texts: Vec<&str> = kept.iter().map(|&i| texts[i]).collect();
        let rows = served
            .model
            .sparse_queries(&kept_texts)?
            .ok_or_else(|| anyhow::anyhow!("the model has no query side"))?;
        let mut writer = VectorWriter::create(args.output.as_deref(), format, 0, Dtype::Float32)?;
        for (i, row) in rows.into_iter().enumerate() {
            let row = plan.sparse_limits(row);
            writer.write(kept[i], row.len() / 2, Row::Sparse(&row))?;
        }
        return writer.finish();
    }
    let inputs: Vec<Input> = kept.iter().map(|&i| all_inputs[i].clone()).collect();
    drop(all_inputs);
    // The output is created with the first vectors: an input refused while tokenizing leaves none.
    let ty = args.embedding_type.unwrap_or(EmbeddingType::Float);
    let dim = match ty {
        EmbeddingType::Binary | EmbeddingType::Ubinary => plan.output_dimension(info.dimension).div_ceil(8),
        _ => plan.output_dimension(info.dimension),
    };
    let dtype = match ty {
        EmbeddingType::Float => Dtype::Float32,
        EmbeddingType::Int8 | EmbeddingType::Binary => Dtype::Int8,
        EmbeddingType::Uint8 | EmbeddingType::Ubinary => Dtype::Uint8,
    };
    let create = || VectorWriter::create(args.output.as_deref(), format, dim, dtype);
    let mut writer: Option<VectorWriter> = None;
    served.embed_chunked(&plan, &inputs, WRITE_CHUNK, |first, vectors, tokens| -> Result<()> {
        let writer = match &mut writer {
            Some(w) => w,
            None => writer.insert(create()?),
        };
        let index = |i: usize| kept[first + i];
        if args.output_type != OutputType::Dense {
            let width = info.multi_vector.unwrap_or(info.hidden_size);
            for (i, (v, &n)) in vectors.iter().zip(tokens).enumerate() {
                let row = match args.output_type {
                    OutputType::Sparse => Row::Sparse(v),
                    _ => Row::Multi(v, width),
                };
                writer.write(index(i), n, row)?;
            }
            return Ok(());
        }
        match served.codes(ty, &request, vectors)? {
            Codes::Float(rows) => {
                for (i, (v, &n)) in rows.iter().zip(tokens).enumerate() {
                    writer.write(index(i), n, Row::Float(v))?;
                }
            }
            Codes::Signed(rows) => {
                for (i, (v, &n)) in rows.iter().zip(tokens).enumerate() {
                    writer.write(index(i), n, Row::Signed(v))?;
                }
            }
            Codes::Unsigned(rows) => {
                for (i, (v, &n)) in rows.iter().zip(tokens).enumerate() {
                    writer.write(index(i), n, Row::Unsigned(v))?;
                }
            }
        }
        Ok(())
    })?;
    match writer {
        Some(writer) => writer.finish(),
        None => create()?.finish(),
    }
}

/// `--embedding-type`: one of the pipeline's types.
fn parse_embedding_type(name: &str) -> Result<EmbeddingType, String> {
    EmbeddingType::from_name(name).ok_or_else(|| EmbeddingType::unknown(name, "--embedding-type").message)
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
        let texts: Vec<Input> = ["a", "", "b", "  "]
            .iter()
            .map(|s| Input::Text(s.to_string()))
            .collect();
        let error = non_blank(&texts, false, "in.txt").unwrap_err().to_string();
        assert!(
            error.contains("in.txt has 2 blank line(s) (2, 4)") && error.contains("--skip-blank"),
            "{error}"
        );
        assert_eq!(non_blank(&texts, true, "in.txt").unwrap(), [0, 2]);
        assert_eq!(non_blank(&texts[..1], false, "x").unwrap(), [0]);
    }
}
