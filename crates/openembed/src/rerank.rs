//! `openembed rerank`: score documents against a query with a reranker and print them best
//! first, one JSON line each (`index`, `score`, `document`).

use crate::embed::{load_served, read_texts, stdin_hint};
use anyhow::{bail, Context, Result};
use openembed_engine::{DType, Truncation};
use openembed_pipeline::rerank::RerankJob;
use openembed_pipeline::TokenIds;
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
    let served = load_served(Some(&args.model), args.threads, args.dtype, TokenIds::default())?;
    if served.model.info().rerank.is_none() {
        bail!(
            "{} is an embedding model, not a reranker (use `openembed embed`)",
            args.model
        );
    }
    // The request rules of the server's rerank routes (at most 1,000 documents per query),
    // over-long pairs cut as Cohere's API does.
    let mut ranked = Vec::with_capacity(documents.len());
    for (chunk, first) in documents
        .chunks(openembed_pipeline::rerank::MAX_DOCUMENTS)
        .zip((0..).step_by(openembed_pipeline::rerank::MAX_DOCUMENTS))
    {
        let job = RerankJob::new(
            args.query.clone(),
            chunk.to_vec(),
            args.instruction.clone(),
            Truncation::End,
            None,
        )?;
        ranked.extend(
            served
                .rerank_blocking(&job, args.raw_scores, usize::MAX)?
                .into_iter()
                .map(|(i, score)| (first + i, score)),
        );
    }
    // Best first over all chunks; equal scores keep their input order.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(args.top_n.unwrap_or(ranked.len()));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (index, score) in ranked {
        let line = serde_json::json!({"index": index, "score": score, "document": documents[index]});
        std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())?;
    }
    std::io::Write::flush(&mut out)?;
    Ok(())
}
