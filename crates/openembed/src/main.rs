//! `openembed`: the command line of the openembed embedding server.

mod batch;
mod bench;
mod bench_arch;
mod embed;
mod models;
mod output;
mod rerank;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: glibc raises its mmap threshold after the first large
/// free, so request bodies and batches of a burst end up in heap arenas that are never given
/// back (RSS stayed gigabytes up after a burst); mimalloc returns freed pages to the OS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OpenAI-compatible embedding server and tools.
#[derive(Parser)]
#[command(name = "openembed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the engine: tokens/s and per-batch latency on fixed workloads.
    Bench(bench::BenchArgs),
    /// Embed texts from arguments or stdin and print JSON lines.
    Embed(embed::EmbedArgs),
    /// Serve the OpenAI embeddings API over HTTP.
    Serve(serve::ServeArgs),
    /// Run an OpenAI Batch API input file (POST /v1/embeddings lines) offline.
    Batch(batch::BatchArgs),
    /// Score documents against a query with a reranker; prints them best first, as JSON lines.
    Rerank(rerank::RerankArgs),
    /// List the models the server would find (local folder and hub cache).
    Models(models::ModelsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::Embed(args) => embed::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Batch(args) => batch::run(&args),
        Command::Rerank(args) => rerank::run(&args),
        Command::Models(args) => models::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
