//! `openembed`: the command line of the openembed embedding server. `serve` starts the HTTP
//! front end (`openembed-server`); `embed` and `batch` translate their flags and files into
//! requests of the pipeline (`openembed-pipeline`) and its answers into files, so they give the
//! server's vectors and refusals; `rerank`, `models` and `fetch` are tools around models.

mod batch_file;
mod classify;
mod embed;
mod fetch;
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

/// Hands the memory that loading a model freed (its temporaries: fused or converted weights)
/// back to the OS now. mimalloc purges freed pages only after a delay, on a later allocation,
/// so without this a server that loaded its models and waits for requests keeps them resident.
pub(crate) fn return_freed_memory() {
    // SAFETY: `mi_collect` has no preconditions; it frees nothing that is still allocated.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// OpenAI-compatible embedding server and tools.
#[derive(Parser)]
#[command(name = "openembed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts from arguments or stdin and print JSON lines.
    Embed(embed::EmbedArgs),
    /// Serve the OpenAI embeddings API over HTTP.
    Serve(serve::ServeArgs),
    /// Run an OpenAI Batch API input file (POST /v1/embeddings lines) offline.
    Batch(batch_file::BatchFileArgs),
    /// Score documents against a query with a reranker; prints them best first, as JSON lines.
    Rerank(rerank::RerankArgs),
    /// Label texts with a classifier (sentiment, toxicity, intent …); prints every label's
    /// score per text, best first, as JSON lines.
    Classify(classify::ClassifyArgs),
    /// List the models the server would find (local folders, the openembed home, the hub cache).
    Models(models::ModelsArgs),
    /// Install the default model into the openembed home, or download a hub model into the
    /// hub cache.
    Fetch(fetch::FetchArgs),
}

/// A command used the wrong way (exit status 2, as for clap's own usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Batch(args) => batch_file::run(&args),
        Command::Rerank(args) => rerank::run(&args),
        Command::Classify(args) => classify::run(&args),
        Command::Models(args) => models::run(&args),
        Command::Fetch(args) => fetch::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.downcast_ref::<UsageError>().is_some() { 2 } else { 1 })
        }
    }
}
