//! `openembed rerank`: score documents against a query with a reranker and print them best
//! first, one JSON line each (`index`, `score`, `document`).

use crate::embed::{load_model, read_texts, stdin_hint};
use anyhow::{bail, Context, Result};
use openembed_engine::{budget_batches, DType, Truncation};
use std::path::PathBuf;

/// Options of `openembed rerank`.
#[derive(clap::Args)]
pub struct RerankArgs {
    /// Reranker: a folder or a Hugging Face hub id (a cross-encoder or Qwen3-Reranker).
    #[arg(long, env = "OPENEMBED_MODEL")]
    model: String,
    /// The query.
    #[arg(long, short = 'q')]
    query: String,
    /// Read documents from this file: `.jsonl` (a JSON string, or an object with "text", per
    /// line) or plain text, one a line.
    #[arg(long, short = 'i')]
    input: Option<PathBuf>,
    /// Print only the best N.
    #[arg(long)]
    top_n: Option<usize>,
    /// Print logits instead of scores.
    #[arg(long)]
    raw_scores: bool,
    /// The instruction of an instruction-following reranker (Qwen3-Reranker).
    #[arg(long)]
    instruction: Option<String>,
    /// Compute threads (default: all cores).
    #[arg(long, env = "OPENEMBED_THREADS")]
    threads: Option<usize>,
    /// Precision of the dense layers: float32 (exact), bfloat16 (half the memory; fast on CPUs
    /// with AMX or AMD's AVX512-BF16, elsewhere only a memory saving) or int8 (fastest).
    #[arg(long, env = "OPENEMBED_DTYPE", default_value = "float32")]
    dtype: DType,
    /// Documents to score; read from --input or stdin when none are given.
    documents: Vec<String>,
}

/// Tokens per engine batch.
const BATCH_TOKENS: usize = 8192;

/// Entry point of `openembed rerank`.
pub fn run(args: &RerankArgs) -> Result<()> {
    let documents: Vec<String> = if !args.documents.is_empty() {
        args.documents.clone()
    } else if let Some(path) = &args.input {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
        read_texts(std::io::BufReader::new(file), jsonl, &path.display().to_string())?
    } else {
        stdin_hint("documents");
        read_texts(std::io::stdin().lock(), false, "stdin")?
    };
    if documents.is_empty() {
        bail!("no documents to rerank: give them as arguments, with --input, or on stdin");
    }
    let model = load_model(Some(&args.model), args.threads, args.dtype)?;
    if model.info().rerank.is_none() {
        bail!(
            "{} is an embedding model, not a reranker (use `openembed embed`)",
            args.model
        );
    }
    let refs: Vec<&str> = documents.iter().map(String::as_str).collect();
    let pairs = model.tokenize_pairs(&args.query, &refs, args.instruction.as_deref(), Truncation::End, None)?;
    let lengths: Vec<usize> = pairs.iter().map(|p| p.tokens()).collect();
    let mut scores = Vec::with_capacity(pairs.len());
    for range in budget_batches(&lengths, BATCH_TOKENS) {
        let ids: Vec<&[u32]> = pairs[range].iter().map(|p| p.ids.as_slice()).collect();
        scores.extend(model.score_ids(&ids, args.raw_scores)?);
    }
    let mut ranked = openembed_engine::rerank::rank_by_score(scores);
    ranked.truncate(args.top_n.unwrap_or(ranked.len()));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (index, score) in ranked {
        let line = serde_json::json!({"index": index, "score": score, "document": documents[index]});
        std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())?;
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}
