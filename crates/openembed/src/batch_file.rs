//! `openembed batch`: runs an OpenAI Batch API input file offline.
//!
//! Input lines are `{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {…}}`
//! (also `"url": "/embed_sparse"` or `"/embed_all"` with a TEI body, for a model's sparse or
//! token-vector output); output lines are OpenAI's batch output `{"id", "custom_id", "response":
//! {"status_code", "request_id", "body"}, "error"}`. Each body goes through the server's own
//! decoder and the request pipeline (plan, tokenization, the model's scheduler), so a line gets
//! exactly the answer (or error, in the route's protocol) the server would give. Lines are queued as they are read, a chunk ahead of the one
//! being written, and their inputs share large token-budget batches. A bad line becomes an error
//! line and the run goes on; so does a line the engine fails on (the scheduler runs a failed
//! batch again request by request, so the other lines still get their vectors). Re-running with
//! the same output skips `custom_id`s already there.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use openembed_engine::{DType, LoadOptions, Truncation};
use openembed_pipeline::{Alias, Defaults, ModelSpec, Registry, SchedulerConfig, ServedModel, Submitted, TokenIds};
use openembed_server::api::{decode_json, ResponseSpec};
use openembed_server::error::{ApiError, Protocol};
use openembed_server::routes::decode_body;
use openembed_server::tei::{TeiEmbedAllRequest, TeiEmbedSparseRequest, TeiEmbedding};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `openembed batch`.
#[derive(clap::Args)]
pub struct BatchFileArgs {
    /// OpenAI Batch API input file (JSON lines).
    #[arg(long, short = 'i')]
    input: PathBuf,
    /// Output file (JSON lines); an existing one is resumed.
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Model: a folder or hub id, optionally SPEC=NAME (the name request bodies use)
    /// [default: all-MiniLM-L6-v2 from ./models (or a folder above) or OPENEMBED_HOME/models].
    #[arg(long, env = "OPENEMBED_MODEL")]
    model: Option<ModelSpec>,
    /// Another name request bodies may use for the model, NAME=MODEL. Repeatable.
    #[arg(long = "alias")]
    aliases: Vec<Alias>,
    /// Compute threads (default: all cores).
    #[arg(long, env = "OPENEMBED_THREADS")]
    threads: Option<usize>,
    /// Precision of the dense layers: float32 (exact), bfloat16 (half the memory; fast on CPUs
    /// with AMX or AMD's AVX512-BF16, elsewhere only a memory saving) or int8 (fastest).
    #[arg(long, env = "OPENEMBED_DTYPE", default_value = "float32")]
    dtype: DType,
    /// Token budget of one engine batch.
    #[arg(long, default_value_t = openembed_pipeline::scheduler::OFFLINE_BATCH_TOKENS)]
    batch_tokens: usize,
    /// Task adapter for request bodies that name no `task` (models with tasks, such as
    /// jina-embeddings-v3). Default: no adapter.
    #[arg(long, env = "OPENEMBED_DEFAULT_TASK")]
    default_task: Option<String>,
    /// What integer inputs mean: cl100k_base (tiktoken ids, as at OpenAI), o200k_base or native.
    #[arg(long, default_value = "cl100k_base")]
    token_ids: TokenIds,
    /// Truncate over-long inputs unless a request says `truncate: false`.
    #[arg(long)]
    auto_truncate: bool,
    /// Most tokens in one request.
    #[arg(long, default_value_t = 300_000)]
    max_request_tokens: usize,
}

/// Prefix of the keys that name lines without a `custom_id` in the set of done lines.
const LINE_KEY: &str = "\0line:";

/// Requests written at a time (one more chunk is queued meanwhile).
const CHUNK_REQUESTS: usize = 256;
/// Tokens written at a time.
const CHUNK_TOKENS: usize = 65_536;

/// One input line, once read.
enum Line {
    /// Answered without the engine (bad line, invalid request).
    Done(Answer),
    /// Queued on the model's scheduler.
    Pending {
        custom_id: String,
        answer: Responder,
        submitted: Box<Submitted>,
        inputs: usize,
    },
}

/// How a queued line's output becomes its answer: the route it names.
enum Responder {
    /// `/v1/embeddings`.
    OpenAi(ResponseSpec, Arc<ServedModel>),
    /// `/embed_sparse`, `/embed_all`.
    Tei(Box<TeiEmbedding>),
}

impl Responder {
    fn respond(&self, vectors: Vec<Vec<f32>>, tokens: usize) -> Result<Value, ApiError> {
        match self {
            Responder::OpenAi(spec, served) => spec.respond(served, vectors, tokens).and_then(|body| to_value(&body)),
            Responder::Tei(job) => job.respond(vectors),
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            Responder::OpenAi(..) => Protocol::OpenAi,
            Responder::Tei(_) => Protocol::Tei,
        }
    }
}

fn to_value(body: &impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(body).map_err(|e| ApiError::internal(e.to_string()))
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A line that could not be run as a request at all (OpenAI puts these in `error`).
fn line_error(custom_id: Option<&str>, code: &str, message: String) -> Value {
    json!({"id": new_id("batch_req"), "custom_id": custom_id, "response": null,
           "error": {"code": code, "message": message}})
}

/// One output line for a request the engine answered (or refused like the server would).
#[derive(serde::Serialize)]
struct ResponseLine<'a, B: serde::Serialize> {
    id: String,
    custom_id: &'a str,
    response: BatchResponse<B>,
    error: Option<()>,
}

#[derive(serde::Serialize)]
struct BatchResponse<B: serde::Serialize> {
    status_code: u16,
    request_id: String,
    body: B,
}

/// A request's answer, as the server would give it, serialized as one line.
fn response_line(custom_id: &str, status: u16, body: impl serde::Serialize) -> Result<String> {
    let line = ResponseLine {
        id: new_id("batch_req"),
        custom_id,
        response: BatchResponse {
            status_code: status,
            request_id: new_id("req"),
            body,
        },
        error: None,
    };
    Ok(serde_json::to_string(&line)?)
}

/// A finished output line and whether it succeeded.
type Answer = (String, bool);

struct Runner {
    registry: Registry,
    defaults: Defaults,
    max_request_tokens: usize,
    seen: HashSet<String>,
}

impl Runner {
    /// Reads one input line; `None` when it is blank or already done.
    fn read(&mut self, number: usize, text: &str) -> Option<Line> {
        if text.trim().is_empty() {
            return None;
        }
        let line: BatchLine = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.unnamed_error(number, "invalid_json", format!("{e}")),
        };
        let custom_id = match line.custom_id {
            Some(Value::String(id)) if text.trim_start().starts_with('{') => id,
            _ => return self.unnamed_error(number, "missing_custom_id", "'custom_id' must be a string".into()),
        };
        if !self.seen.insert(custom_id.clone()) {
            return None; // done in an earlier run, or a duplicate in this file
        }
        let method = line.method.as_ref().and_then(Value::as_str).unwrap_or("");
        let url = line.url.as_ref().and_then(Value::as_str).unwrap_or("");
        let route = match Route::of(url) {
            Some(route) if method.eq_ignore_ascii_case("POST") => route,
            _ => {
                let message = format!(
                    "line {number}: only POST /v1/embeddings, /embed_sparse and /embed_all are supported, not {method} {url}"
                );
                return Some(Line::Done((
                    line_error(Some(&custom_id), "invalid_url", message).to_string(),
                    false,
                )));
            }
        };
        let body = line.body.map_or("null", RawValue::get);
        let protocol = route.protocol();
        Some(match self.submit(route, body) {
            Ok(Submit::Queued(answer, submitted, inputs)) => Line::Pending {
                custom_id,
                answer,
                submitted,
                inputs,
            },
            Ok(Submit::Answered(body)) => match response_line(&custom_id, 200, body) {
                Ok(line) => Line::Done((line, true)),
                Err(e) => error_line(&custom_id, &ApiError::internal(e.to_string()), protocol),
            },
            Err(e) => error_line(&custom_id, &e, protocol),
        })
    }

    /// An error line for a line without a usable `custom_id`; such lines are named by their
    /// line number ("line N: …") so a resumed run does not report them twice.
    fn unnamed_error(&mut self, number: usize, code: &str, message: String) -> Option<Line> {
        if !self.seen.insert(format!("{LINE_KEY}{number}")) {
            return None;
        }
        Some(Line::Done((
            line_error(None, code, format!("line {number}: {message}")).to_string(),
            false,
        )))
    }

    /// Decodes a body as the server's route does and queues it on its model (or, for queries
    /// of an inference-free model, answers it: a table lookup).
    fn submit(&self, route: Route, body: &str) -> Result<Submit, ApiError> {
        let job = match route {
            Route::OpenAi => {
                let request = decode_json(body.as_bytes())?;
                let served = Arc::clone(self.registry.find(&request.model)?);
                let spec = request.response_spec();
                let submitted =
                    served.submit(&spec.request, request.inputs(), &self.defaults, self.max_request_tokens)?;
                let inputs = request.input.0.len();
                return Ok(Submit::Queued(
                    Responder::OpenAi(spec, served),
                    Box::new(submitted),
                    inputs,
                ));
            }
            Route::Sparse => {
                let request: TeiEmbedSparseRequest = decode_body(body.as_bytes())?;
                TeiEmbedding::sparse(&self.registry, &self.defaults, request)?
            }
            Route::All => {
                let request: TeiEmbedAllRequest = decode_body(body.as_bytes())?;
                TeiEmbedding::all(&self.registry, &self.defaults, request)?
            }
        };
        if job.looks_up() {
            return Ok(Submit::Answered(to_value(&job.sparse_queries()?)?));
        }
        let mut job = Box::new(job);
        let inputs = std::mem::take(&mut job.inputs);
        let submitted = job
            .served
            .submit(&job.request, &inputs, &job.defaults, self.max_request_tokens)?;
        Ok(Submit::Queued(Responder::Tei(job), Box::new(submitted), inputs.len()))
    }
}

/// The route a line names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    OpenAi,
    Sparse,
    All,
}

impl Route {
    fn of(url: &str) -> Option<Route> {
        match url {
            "/v1/embeddings" | "/embeddings" => Some(Route::OpenAi),
            "/embed_sparse" => Some(Route::Sparse),
            "/embed_all" => Some(Route::All),
            _ => None,
        }
    }

    /// The protocol its errors are shaped in.
    fn protocol(self) -> Protocol {
        match self {
            Route::OpenAi => Protocol::OpenAi,
            Route::Sparse | Route::All => Protocol::Tei,
        }
    }
}

/// A line's request, once read.
enum Submit {
    Queued(Responder, Box<Submitted>, usize),
    /// Answered without the scheduler.
    Answered(Value),
}

/// The output line of a request refused or failed as the server's route would answer it.
fn error_line(custom_id: &str, e: &ApiError, protocol: Protocol) -> Line {
    let (status, body) = e.in_protocol(protocol);
    Line::Done(match response_line(custom_id, status.as_u16(), body) {
        Ok(line) => (line, false),
        Err(e) => (
            line_error(Some(custom_id), "internal", e.to_string()).to_string(),
            false,
        ),
    })
}

/// Waits for a line's vectors and writes its answer.
fn answer(line: Line) -> Result<Answer> {
    match line {
        Line::Done(answer) => Ok(answer),
        Line::Pending {
            custom_id,
            answer,
            submitted,
            ..
        } => match submitted
            .wait_blocking()
            .map_err(ApiError::from)
            .and_then(|done| answer.respond(done.vectors, done.tokens))
        {
            Ok(body) => Ok((response_line(&custom_id, 200, body)?, true)),
            Err(e) => {
                let (status, body) = e.in_protocol(answer.protocol());
                Ok((response_line(&custom_id, status.as_u16(), body)?, false))
            }
        },
    }
}

/// One input line of the batch file; `body` is kept as raw JSON for the server's own decoder.
#[derive(serde::Deserialize)]
struct BatchLine<'a> {
    custom_id: Option<Value>,
    method: Option<Value>,
    url: Option<Value>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

/// The `custom_id`s already in an output file; a torn last line (an interrupted run) is cut off.
fn done_ids(path: &Path) -> Result<HashSet<String>> {
    let mut done = HashSet::new();
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(done);
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if complete < bytes.len() {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(complete as u64)?;
    }
    for line in bytes[..complete].split(|&b| b == b'\n') {
        if let Ok(v) = serde_json::from_slice::<Value>(line) {
            if let Some(id) = v.get("custom_id").and_then(Value::as_str) {
                done.insert(id.to_owned());
            } else if let Some(number) = v["error"]["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("line "))
                .and_then(|m| m.split(':').next())
            {
                done.insert(format!("{LINE_KEY}{number}"));
            }
        }
    }
    Ok(done)
}

/// Progress on a terminal (a bar with inputs/s and ETA) or as plain lines every few seconds.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    lines: u64,
    inputs: u64,
    started: Instant,
    last_print: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} requests  {msg}  ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total,
            lines: 0,
            inputs: 0,
            started: now,
            last_print: now,
        }
    }

    fn rate(&self) -> f64 {
        self.inputs as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn advance(&mut self, lines: u64, inputs: u64) {
        self.lines += lines;
        self.inputs += inputs;
        let rate = self.rate();
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.lines);
                bar.set_message(format!("{rate:.0} inputs/s"));
            }
            None if self.last_print.elapsed() >= Duration::from_secs(2) => {
                self.last_print = Instant::now();
                let per_line = self.started.elapsed().as_secs_f64() / self.lines.max(1) as f64;
                let eta = per_line * self.total.saturating_sub(self.lines) as f64;
                eprintln!(
                    "progress: {}/{} requests, {rate:.0} inputs/s, ETA {eta:.0}s",
                    self.lines, self.total
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Entry point of `openembed batch`.
pub fn run(args: &BatchFileArgs) -> Result<()> {
    let spec = match &args.model {
        Some(spec) => spec.clone(),
        None => openembed_pipeline::home::default_model_spec().map_err(anyhow::Error::msg)?,
    };
    let spec = ModelSpec {
        token_ids: args.token_ids,
        dtype: args.dtype,
        default_task: args.default_task.clone(),
        ..spec
    };
    let options = LoadOptions {
        threads: args.threads,
        ..LoadOptions::default()
    };
    let scheduler = SchedulerConfig {
        max_batch_tokens: args.batch_tokens.max(1),
        ..SchedulerConfig::offline()
    };
    let registry = Registry::load(std::slice::from_ref(&spec), &args.aliases, &options, scheduler)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot load model {}", spec.source))?;
    crate::return_freed_memory();
    anyhow::ensure!(
        registry.models().iter().all(|m| m.model.info().embeds()),
        "{} is not an embedding model; `openembed batch` runs embeddings requests",
        spec.source
    );
    let done = done_ids(&args.output).with_context(|| format!("cannot read {}", args.output.display()))?;
    let skipped = done.len();
    let input = std::fs::File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let total = BufReader::new(&input)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .count();
    let input = std::fs::File::open(&args.input)?;
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.output)
            .with_context(|| format!("cannot open {}", args.output.display()))?,
    );
    let mut runner = Runner {
        registry,
        defaults: Defaults {
            auto_truncate: args.auto_truncate,
            truncation_side: Truncation::End,
            truncate_hint: openembed_server::state::TRUNCATE_HINT,
            ..Defaults::default()
        },
        max_request_tokens: args.max_request_tokens,
        seen: done,
    };
    let mut progress = Progress::new(total as u64);
    progress.advance(skipped as u64, 0);
    let (mut ok, mut failed) = (0usize, 0usize);
    // Chunks of queued lines, oldest first: the next one fills while the oldest is written.
    let mut queued: VecDeque<Vec<Line>> = VecDeque::new();
    let mut chunk: Vec<Line> = Vec::new();
    let mut chunk_tokens = 0;
    let mut lines_iter = BufReader::new(input).lines().enumerate();
    loop {
        let next = lines_iter.next();
        let finished = next.is_none();
        if let Some((n, line)) = next {
            let line = line.with_context(|| format!("cannot read {}", args.input.display()))?;
            if let Some(l) = runner.read(n + 1, &line) {
                if let Line::Pending { submitted, .. } = &l {
                    chunk_tokens += submitted.tokens;
                }
                chunk.push(l);
            }
        }
        if !chunk.is_empty() && (finished || chunk.len() >= CHUNK_REQUESTS || chunk_tokens >= CHUNK_TOKENS) {
            queued.push_back(std::mem::take(&mut chunk));
            chunk_tokens = 0;
        }
        while queued.len() > 1 || (finished && !queued.is_empty()) {
            let Some(lines) = queued.pop_front() else { break };
            let n = lines.len() as u64;
            let mut inputs = 0;
            for line in lines {
                if let Line::Pending { inputs: i, .. } = &line {
                    inputs += i;
                }
                let (line, succeeded) = answer(line)?;
                if succeeded {
                    ok += 1;
                } else {
                    failed += 1;
                }
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            progress.advance(n, inputs as u64);
        }
        if finished {
            break;
        }
    }
    progress.finish();
    eprintln!(
        "batch done: {ok} succeeded, {failed} failed, {skipped} already in {} ({:.0} inputs/s)",
        args.output.display(),
        progress.rate()
    );
    Ok(())
}
