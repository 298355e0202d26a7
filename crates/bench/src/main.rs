//! `openembed-bench`: the engine benchmark (a separate binary: the `openembed` command ships
//! without it). Prints tokens/s and per-batch latency (medians) for fixed workloads on 1 and on
//! 2 threads; the last line is one JSON object. `scripts/bench_*.py` drive it beside the
//! yardsticks and the server.

mod architectures;
mod sparse;

use anyhow::{Context, Result};
use clap::Parser;
use openembed_engine::{DType, LoadOptions, Model, Truncation};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// mimalloc, as the `openembed` command uses, so allocation costs are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure the engine: tokens/s and per-batch latency on fixed workloads.
#[derive(Parser)]
#[command(name = "openembed-bench", version, about)]
pub struct BenchArgs {
    /// Model folder.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// Real-text corpus (one JSON string per line) for the mixed-length workload.
    #[arg(long, default_value = "../shared/bench/corpus/mixed.jsonl")]
    corpus: PathBuf,
    /// Long documents used to build full-length inputs (32 × 128 workload).
    #[arg(long, default_value = "../shared/bench/corpus/long.jsonl")]
    long_corpus: PathBuf,
    /// Texts taken from the start of the mixed corpus.
    #[arg(long, default_value_t = 5000)]
    limit: usize,
    /// Inputs per batch for the sorted mixed-corpus run (ONNX Runtime's yardstick uses 32).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Token budget per batch for the packed mixed-corpus run.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// Precision of the dense layers: float32 (exact), bfloat16 (half the memory; fast on CPUs
    /// with AMX or AMD's AVX512-BF16, elsewhere only a memory saving) or int8 (fastest).
    #[arg(long, env = "OPENEMBED_DTYPE", default_value = "float32")]
    dtype: DType,
    /// Thread counts to measure, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Repetitions of each fixed-shape workload (median reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Untimed batches run before each mixed-corpus run, taken from the middle of the sorted
    /// batches on (as ../shared/bench/engine_ort.py's option of the same name): a count past
    /// the end takes every batch from the middle to the longest.
    #[arg(long, default_value_t = 3)]
    warmup_batches: usize,
    /// Tiny reference models (one folder per architecture) for the `architectures` workload.
    #[arg(long, default_value = "../shared/fixtures/tiny")]
    fixtures: PathBuf,
    /// Only these workloads (comma-separated: full, corpus, packed, single, and the opt-in
    /// `architectures`: tiny fixtures for correctness, then random-weight models at realistic
    /// sizes of every family for tokens/s, and `rerank`: 10 queries × 100 corpus documents
    /// through a reranker, in token-budget batches, and `sparse`: SPLADE's sparse output beside
    /// the same encoder's dense vector, BERT-base with a 30,522-entry vocabulary). A reranker
    /// runs only `rerank`.
    #[arg(long, default_value = "full,corpus,packed,single", value_delimiter = ',')]
    workloads: Vec<String>,
}

/// The first `limit` texts (all when 0) of a JSON-lines corpus.
fn read_corpus(path: &PathBuf, limit: usize) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read corpus {}", path.display()))?;
    let mut texts = Vec::new();
    for (n, line) in std::io::BufRead::lines(std::io::BufReader::new(file)).enumerate() {
        if limit > 0 && texts.len() == limit {
            break;
        }
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        texts.push(
            serde_json::from_str::<String>(&line)
                .with_context(|| format!("{}:{}: expected a JSON string", path.display(), n + 1))?,
        );
    }
    Ok(texts)
}

/// The rerank pairs of the benchmarks: the 10 shortest of texts 100…199 as queries, each against
/// texts 0…99 as documents (the same pairs `scripts/bench_rerank.py` sends to the server).
fn rerank_pairs(texts: &[String]) -> Vec<(String, Vec<String>)> {
    let docs: Vec<String> = texts.iter().take(100).cloned().collect();
    let mut candidates: Vec<&String> = texts.iter().skip(100).take(100).collect();
    candidates.sort_by_key(|t| (t.len(), t.as_str()));
    candidates
        .into_iter()
        .take(10)
        .map(|q| (q.clone(), docs.clone()))
        .collect()
}

/// Scores every rerank pair in token-budget batches: (pairs, tokens, seconds of the engine).
fn rerank_workload(model: &Model, texts: &[String], batch_tokens: usize) -> Result<(usize, usize, f64)> {
    let mut ids: Vec<Vec<u32>> = Vec::new();
    for (query, docs) in rerank_pairs(texts) {
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        ids.extend(
            model
                .tokenize_pairs(&query, &refs, None, Truncation::End, None)?
                .into_iter()
                .map(|t| t.ids),
        );
    }
    ids.sort_by_key(Vec::len);
    let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
    let batches: Vec<Vec<&[u32]>> = openembed_engine::budget_batches(&lengths, batch_tokens)
        .into_iter()
        .map(|r| ids[r].iter().map(Vec::as_slice).collect())
        .collect();
    run_batches(model, &batches[..batches.len().min(2)])?;
    let (secs, _) = run_batches(model, &batches)?;
    Ok((ids.len(), lengths.iter().sum(), secs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Runs every batch once; returns (total seconds, per-batch seconds).
fn run_batches(model: &Model, batches: &[Vec<&[u32]>]) -> Result<(f64, Vec<f64>)> {
    let start = Instant::now();
    let mut lat = Vec::with_capacity(batches.len());
    for b in batches {
        let t = Instant::now();
        let v = model.embed_ids(b)?;
        std::hint::black_box(v);
        lat.push(t.elapsed().as_secs_f64());
    }
    Ok((start.elapsed().as_secs_f64(), lat))
}

/// Inputs of exactly `len` tokens: the first `len` tokens of each long document.
fn fixed_length_inputs(model: &Model, docs: &[String], len: usize, count: usize) -> Result<Vec<Vec<u32>>> {
    let texts: Vec<&str> = docs.iter().map(String::as_str).collect();
    let mut toks = model.tokenize(&texts, None, Truncation::End)?;
    toks.retain(|t| t.untruncated_tokens >= len);
    anyhow::ensure!(!toks.is_empty(), "no document has {len} tokens");
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let ids = &toks[i % toks.len()].ids;
        let mut v = ids[..len - 1].to_vec();
        v.push(*ids.last().unwrap_or(&0)); // keep the closing special token
        out.push(v);
    }
    Ok(out)
}

fn main() -> std::process::ExitCode {
    match run(&BenchArgs::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the chosen workloads.
fn run(args: &BenchArgs) -> Result<()> {
    let mut results = Vec::new();
    if args.workloads.iter().any(|w| w == "sparse") {
        let threads = args.threads.iter().copied().max().unwrap_or(2);
        sparse::bench(args.dtype, threads, args.repeat.min(5), &mut results)?;
        if args.workloads.len() == 1 {
            println!("{}", json!({"results": results}));
            return Ok(());
        }
    }
    if args.workloads.iter().any(|w| w == "architectures") {
        let threads = args.threads.iter().copied().max().unwrap_or(2);
        architectures::run(&args.fixtures, threads, args.repeat.min(3), &mut results)?;
        if args.workloads.len() == 1 {
            println!("{}", json!({"results": results}));
            return Ok(());
        }
    }
    let docs = read_corpus(&args.long_corpus, 200)?;
    let texts = read_corpus(&args.corpus, args.limit)?;
    for &threads in &args.threads {
        let model = Model::load(
            &args.model,
            &LoadOptions {
                threads: Some(threads),
                dtype: args.dtype,
                ..LoadOptions::default()
            },
        )
        .with_context(|| format!("cannot load {}", args.model.display()))?;
        // SAFETY: `mi_collect` has no preconditions; it frees nothing still allocated.
        unsafe { libmimalloc_sys::mi_collect(true) }
        let info = model.info();
        let resident = resident_mib();
        println!(
            "== {} ({}), {} threads, {} on {} (dense layers: {}), resident after load {}",
            args.model.display(),
            info.architecture,
            threads,
            args.dtype,
            openembed_engine::kernels::isa_name(),
            openembed_engine::kernels::gemm_kernel(args.dtype),
            resident.map_or("unknown".into(), |r| format!("{r:.0} MiB"))
        );
        results.push(
            json!({"threads": threads, "workload": "load", "dtype": args.dtype.as_str(), "resident_mib": resident}),
        );
        let want = |w: &str| args.workloads.iter().any(|x| x == w);
        if info.rerank.is_some() || want("rerank") {
            let (pairs, tokens, secs) = rerank_workload(&model, &texts, args.batch_tokens)?;
            println!(
                "rerank, {pairs} pairs (10 queries x 100 documents), token-budget batches of <= {}: {:.0} pairs/s, \
                 {:.0} tokens/s",
                args.batch_tokens,
                pairs as f64 / secs,
                tokens as f64 / secs
            );
            results.push(
                json!({"threads": threads, "workload": "rerank", "pairs_per_s": (pairs as f64 / secs).round(),
                                "tokens_per_s": (tokens as f64 / secs).round()}),
            );
            continue;
        }

        if want("full") {
            let inputs = fixed_length_inputs(&model, &docs, 128.min(info.max_input_tokens), 32)?;
            let batch: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
            let tokens: usize = batch.iter().map(|b| b.len()).sum();
            model.embed_ids(&batch)?;
            let reps: Vec<Vec<&[u32]>> = (0..args.repeat).map(|_| batch.clone()).collect();
            let (_, lat) = run_batches(&model, &reps)?;
            let med = median(lat);
            println!(
                "32 x 128 tokens: {:.0} tokens/s, batch median {:.1} ms",
                tokens as f64 / med,
                med * 1e3
            );
            results.push(json!({"threads": threads, "workload": "32x128", "tokens_per_s": (tokens as f64 / med).round(), "batch_ms_p50": med * 1e3}));
        }

        let needs_corpus = want("corpus") || want("packed");
        let tokenized = if needs_corpus {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            // Warm the tokenizer up first (its first use builds caches), as a serving process is.
            model.tokenize(&refs[..refs.len().min(500)], None, Truncation::End)?;
            let t = Instant::now();
            let toks = model.tokenize(&refs, None, Truncation::End)?;
            let tok_s = t.elapsed().as_secs_f64();
            let mut ids: Vec<Vec<u32>> = toks.into_iter().map(|t| t.ids).collect();
            ids.sort_by_key(Vec::len);
            let total: usize = ids.iter().map(Vec::len).sum();
            println!(
                "corpus {}: {} texts, {} tokens, tokenized in {:.2} s ({:.0} tokens/s)",
                args.corpus.display(),
                ids.len(),
                total,
                tok_s,
                total as f64 / tok_s
            );
            Some((ids, total, tok_s))
        } else {
            None
        };
        if let Some((ids, total, tok_s)) = &tokenized {
            let mut runs: Vec<(&str, Vec<Vec<&[u32]>>)> = Vec::new();
            if want("corpus") {
                runs.push((
                    "sorted batches",
                    ids.chunks(args.batch.max(1))
                        .map(|c| c.iter().map(Vec::as_slice).collect())
                        .collect(),
                ));
            }
            if want("packed") {
                let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
                let batches: Vec<Vec<&[u32]>> = openembed_engine::budget_batches(&lengths, args.batch_tokens)
                    .into_iter()
                    .map(|r| ids[r].iter().map(Vec::as_slice).collect())
                    .collect();
                runs.push(("token-budget batches", batches));
            }
            for (label, batches) in runs {
                let mid = batches.len() / 2;
                run_batches(
                    &model,
                    &batches[mid..mid.saturating_add(args.warmup_batches).min(batches.len())],
                )?;
                let (secs, lat) = run_batches(&model, &batches)?;
                let tps = *total as f64 / secs;
                let med = median(lat);
                let detail = if label == "sorted batches" {
                    format!("of {}", args.batch)
                } else {
                    format!("of <= {} tokens", args.batch_tokens)
                };
                println!("mixed corpus, {label} {detail}: {tps:.0} tokens/s, {:.0} texts/s, batch median {:.1} ms ({} batches)", ids.len() as f64 / secs, med * 1e3, batches.len());
                results.push(json!({"threads": threads, "workload": format!("corpus {label}"), "tokens_per_s": tps.round(), "texts_per_s": (ids.len() as f64 / secs * 10.0).round() / 10.0, "batch_ms_p50": med * 1e3, "batches": batches.len()}));
                // Text to vectors: tokenization plus the engine (what bounds static models).
                let e2e = *total as f64 / (tok_s + secs);
                println!("mixed corpus, {label}, text to vectors (tokenization included): {e2e:.0} tokens/s");
                results.push(json!({"threads": threads, "workload": format!("corpus {label}, from text"), "tokens_per_s": e2e.round()}));
            }
        }

        if want("single") {
            for len in [16usize, 128] {
                let len = len.min(info.max_input_tokens);
                let input = fixed_length_inputs(&model, &docs, len, 1)?;
                let batch = vec![input[0].as_slice()];
                model.embed_ids(&batch)?;
                let reps: Vec<Vec<&[u32]>> = (0..args.repeat.max(5) * 4).map(|_| batch.clone()).collect();
                let (_, lat) = run_batches(&model, &reps)?;
                let med = median(lat);
                println!(
                    "single input of {len} tokens: {:.2} ms median, {:.0} tokens/s",
                    med * 1e3,
                    len as f64 / med
                );
                results.push(json!({"threads": threads, "workload": format!("single {len}"), "tokens_per_s": (len as f64 / med).round(), "batch_ms_p50": med * 1e3}));
            }
        }
    }
    println!(
        "{}",
        json!({"model": args.model.display().to_string(), "dtype": args.dtype.as_str(), "kernels": openembed_engine::kernels::isa_name(), "gemm_kernel": openembed_engine::kernels::gemm_kernel(args.dtype), "results": results})
    );
    Ok(())
}

/// This process's resident memory (`VmRSS` of /proc/self/status), in MiB; Linux only.
fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
