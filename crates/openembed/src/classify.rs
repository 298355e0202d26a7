//! `openembed classify`: label texts (or text pairs) with a sequence-classification model and
//! print one JSON line per input, in input order: `index`, `text` (and `text_pair`), `labels`
//! (every label with its score, best first, as transformers' `text-classification` pipeline
//! gives them with `top_k=None`).

use crate::embed::{load_served, read_texts, stdin_hint};
use anyhow::{bail, Context, Result};
use openembed_engine::{DType, LabelFunction, Truncation};
use openembed_pipeline::classify::MAX_INPUTS;
use openembed_pipeline::{ClassifyInput, ClassifyJob, TokenIds};
use std::path::PathBuf;

/// Options of `openembed classify`.
#[derive(clap::Args)]
pub struct ClassifyArgs {
    /// Classifier: a folder or a Hugging Face hub id (a `*ForSequenceClassification` model).
    #[arg(long, env = "OPENEMBED_MODEL")]
    model: String,
    /// Read texts from this file: `.jsonl` (a JSON string, or an object with "text", per line)
    /// or plain text, one a line.
    #[arg(long, short = 'i')]
    input: Option<PathBuf>,
    /// Pair every text with this second text (NLI hypothesis, question …).
    #[arg(long)]
    text_pair: Option<String>,
    /// Print only the best K labels per text.
    #[arg(long)]
    top_k: Option<usize>,
    /// softmax, sigmoid or none (the logits); default: the model's (sigmoid for multi-label).
    #[arg(long)]
    function: Option<String>,
    /// Cut over-long texts at the model's limit instead of failing.
    #[arg(long)]
    truncate: bool,
    /// Compute threads (default: all cores).
    #[arg(long, env = "OPENEMBED_THREADS")]
    threads: Option<usize>,
    /// Precision of the dense layers: float32 (exact), bfloat16 or int8.
    #[arg(long, env = "OPENEMBED_DTYPE", default_value = "float32")]
    dtype: DType,
    /// Texts to classify; read from --input or stdin when none are given.
    texts: Vec<String>,
}

/// Entry point of `openembed classify`.
pub fn run(args: &ClassifyArgs) -> Result<()> {
    let texts: Vec<String> = if !args.texts.is_empty() {
        args.texts.clone()
    } else if let Some(path) = &args.input {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
        read_texts(std::io::BufReader::new(file), jsonl, &path.display().to_string())?
    } else {
        stdin_hint("texts");
        read_texts(std::io::stdin().lock(), false, "stdin")?
    };
    if texts.is_empty() {
        bail!("no texts to classify: give them as arguments, with --input, or on stdin");
    }
    let function = match args.function.as_deref() {
        None => None,
        Some(name) => Some(
            LabelFunction::from_name(name)
                .with_context(|| format!("--function {name}: expected softmax, sigmoid or none"))?,
        ),
    };
    if args.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    let served = load_served(Some(&args.model), args.threads, args.dtype, TokenIds::Native)?;
    served.classifier()?;
    let truncation = if args.truncate {
        Truncation::End
    } else {
        Truncation::None
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (chunk, first) in texts.chunks(MAX_INPUTS).zip((0..).step_by(MAX_INPUTS)) {
        let inputs = chunk
            .iter()
            .map(|t| match &args.text_pair {
                Some(pair) => ClassifyInput::Pair(t.clone(), pair.clone()),
                None => ClassifyInput::Text(t.clone()),
            })
            .collect();
        let job = ClassifyJob::new(inputs, truncation, "pass --truncate to cut it at the limit instead.")?;
        let labels = served.classify_blocking(&job, function, usize::MAX)?;
        for (i, labels) in labels.into_iter().enumerate() {
            let keep = args.top_k.unwrap_or(labels.len());
            let labels: Vec<_> = labels
                .into_iter()
                .take(keep)
                .map(|(label, score)| serde_json::json!({"label": label, "score": score}))
                .collect();
            let mut line = serde_json::json!({"index": first + i, "text": chunk[i], "labels": labels});
            if let Some(pair) = &args.text_pair {
                line["text_pair"] = serde_json::json!(pair);
            }
            std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())?;
        }
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}
