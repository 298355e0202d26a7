//! `openembed batch`: runs an OpenAI Batch API input file offline.
//!
//! Input lines are `{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {…}}`;
//! output lines are OpenAI's batch output `{"id", "custom_id", "response": {"status_code",
//! "request_id", "body"}, "error"}`. Each body goes through the server's own validation and
//! tokenization, so a line gets exactly the answer the server would give. Requests are read in
//! chunks and all their inputs run in large token-budget batches. A bad line becomes an error
//! line and the run goes on; so does a line the engine fails on (its batch is run again line by
//! line, so the other lines still get their vectors). Re-running with the same output skips `custom_id`s already there.

use crate::embed::load_model;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use openembed_engine::budget_batches;
use openembed_engine::{DType, Model, Truncation};
use openembed_server::api::decode_json;
use openembed_server::error::ApiError;
use openembed_server::prepare::{prepare, Limits, WindowLayout};
use openembed_server::registry::{Alias, ModelSpec};
use openembed_server::service::{plan, respond, Defaults, Plan};
use openembed_server::token_ids::TokenIds;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of `openembed batch`.
#[derive(clap::Args)]
pub struct BatchArgs {
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
    #[arg(long, default_value_t = 8192)]
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

/// Requests read before their inputs are embedded together.
const CHUNK_REQUESTS: usize = 256;
/// Tokens read before their inputs are embedded together.
const CHUNK_TOKENS: usize = 65_536;

/// One input line, once read.
enum Line {
    /// Answered without the engine (bad line, invalid request).
    Done(Answer),
    /// Waiting for vectors.
    Pending {
        custom_id: String,
        model: String,
        plan: Plan,
        ids: Vec<Vec<u32>>,
        tokens: usize,
        layout: WindowLayout,
    },
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

struct Runner<'a> {
    model: &'a Model,
    token_ids: TokenIds,
    names: HashSet<String>,
    defaults: Defaults,
    default_task: Option<String>,
    limits: Limits,
    seen: HashSet<String>,
}

impl Runner<'_> {
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
        if !method.eq_ignore_ascii_case("POST") || !matches!(url, "/v1/embeddings" | "/embeddings") {
            let message = format!("line {number}: only POST /v1/embeddings is supported, not {method} {url}");
            return Some(Line::Done((
                line_error(Some(&custom_id), "invalid_url", message).to_string(),
                false,
            )));
        }
        let body = line.body.map_or("null", RawValue::get);
        Some(match self.prepare(body.as_bytes()) {
            Ok((model, plan, prepared)) => Line::Pending {
                custom_id,
                model,
                plan,
                ids: prepared.ids,
                tokens: prepared.tokens,
                layout: prepared.layout,
            },
            Err(e) => match response_line(&custom_id, e.status.as_u16(), e.body()) {
                Ok(line) => Line::Done((line, false)),
                Err(e) => Line::Done((
                    line_error(Some(&custom_id), "internal", e.to_string()).to_string(),
                    false,
                )),
            },
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

    fn prepare(&self, body: &[u8]) -> Result<(String, Plan, openembed_server::prepare::Prepared), ApiError> {
        let request = decode_json(body)?;
        if !self.names.contains(&request.model) {
            let mut names: Vec<&str> = self.names.iter().map(String::as_str).collect();
            names.sort_unstable();
            return Err(ApiError::model_not_found(&request.model, names));
        }
        let plan = plan(
            &request,
            self.model.info(),
            &self.defaults,
            self.default_task.as_deref(),
        )?;
        let prepared = prepare(
            self.model,
            request.inputs(),
            self.token_ids,
            plan.prompt.as_deref(),
            plan.truncation,
            plan.windows,
            &self.limits,
        )?;
        Ok((request.model, plan, prepared))
    }

    /// Embeds every pending input of a chunk in token-budget batches and answers each line.
    fn finish(&self, lines: Vec<Line>, batch_tokens: usize) -> Result<Vec<Answer>> {
        let mut inputs: Vec<(usize, usize, &[u32])> = Vec::new();
        for (l, line) in lines.iter().enumerate() {
            if let Line::Pending { ids, .. } = line {
                inputs.extend(ids.iter().enumerate().map(|(i, ids)| (l, i, ids.as_slice())));
            }
        }
        // Similar lengths together; packing needs no padding, this only balances attention work.
        inputs.sort_by_key(|(_, _, ids)| ids.len());
        let mut vectors: Vec<Vec<Option<Vec<f32>>>> = lines
            .iter()
            .map(|l| match l {
                Line::Pending { ids, .. } => vec![None; ids.len()],
                Line::Done(_) => Vec::new(),
            })
            .collect();
        let lengths: Vec<usize> = inputs.iter().map(|(_, _, ids)| ids.len()).collect();
        let task_of = |l: usize| match &lines[l] {
            Line::Pending { plan, .. } => plan.task,
            Line::Done(_) => None,
        };
        // Lines whose inputs the engine failed on, with the reason.
        let mut failed: HashMap<usize, String> = HashMap::new();
        for range in budget_batches(&lengths, batch_tokens) {
            let part = &inputs[range];
            let ids: Vec<&[u32]> = part.iter().map(|x| x.2).collect();
            let tasks: Vec<Option<usize>> = part.iter().map(|x| task_of(x.0)).collect();
            let out = match embed_guarded(self.model, &ids, &tasks) {
                Ok(out) => out,
                Err(e) if part.iter().all(|x| x.0 == part[0].0) => {
                    failed.insert(part[0].0, e);
                    continue;
                }
                Err(_) => {
                    // Several lines: run each line's inputs alone so only the line at fault fails.
                    let mut owners: Vec<usize> = part.iter().map(|x| x.0).collect();
                    owners.sort_unstable();
                    owners.dedup();
                    for l in owners {
                        let own: Vec<&(usize, usize, &[u32])> = part.iter().filter(|x| x.0 == l).collect();
                        let ids: Vec<&[u32]> = own.iter().map(|x| x.2).collect();
                        match embed_guarded(self.model, &ids, &vec![task_of(l); ids.len()]) {
                            Ok(out) => {
                                for ((l, i, _), v) in own.into_iter().zip(out) {
                                    vectors[*l][*i] = Some(v);
                                }
                            }
                            Err(e) => {
                                failed.insert(l, e);
                            }
                        }
                    }
                    continue;
                }
            };
            for ((l, i, _), v) in part.iter().zip(out) {
                vectors[*l][*i] = Some(v);
            }
        }
        lines
            .into_iter()
            .zip(vectors)
            .enumerate()
            .map(|(l, (line, vecs))| match line {
                Line::Done(answer) => Ok(answer),
                Line::Pending { custom_id, .. } if failed.contains_key(&l) => {
                    let error = ApiError::internal(format!(
                        "The engine failed on this request: {}",
                        failed.get(&l).map_or("", String::as_str)
                    ));
                    Ok((response_line(&custom_id, error.status.as_u16(), error.body())?, false))
                }
                Line::Pending {
                    custom_id,
                    model,
                    plan,
                    tokens,
                    layout,
                    ..
                } => {
                    let vecs: Vec<Vec<f32>> = vecs.into_iter().flatten().collect();
                    match respond(&model, layout.combine(vecs), tokens, &plan) {
                        Ok(body) => Ok((response_line(&custom_id, 200, body)?, true)),
                        Err(e) => Ok((response_line(&custom_id, e.status.as_u16(), e.body())?, false)),
                    }
                }
            })
            .collect()
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

/// Embeds a batch (each input with its task adapter), turning an engine error or panic into
/// its message.
fn embed_guarded(model: &Model, ids: &[&[u32]], tasks: &[Option<usize>]) -> std::result::Result<Vec<Vec<f32>>, String> {
    let run = || {
        openembed_server::fault::maybe_panic(ids);
        let tasks = tasks.iter().any(Option::is_some).then_some(tasks);
        model.embed_ids_with_tasks(ids, tasks)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the engine panicked".into()),
    }
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
pub fn run(args: &BatchArgs) -> Result<()> {
    let spec = match &args.model {
        Some(spec) => spec.clone(),
        None => crate::home::default_model_spec()?,
    };
    let model = load_model(Some(&spec.source), args.threads, args.dtype)?;
    anyhow::ensure!(
        model.info().rerank.is_none(),
        "{} is a reranker; `openembed batch` runs embeddings requests",
        spec.source
    );
    if let Some(task) = &args.default_task {
        model.task_index(task).with_context(|| "--default-task")?;
    }
    let mut names: HashSet<String> = HashSet::from([spec.name.clone()]);
    for alias in &args.aliases {
        anyhow::ensure!(
            alias.target == spec.name,
            "alias '{}' must point to '{}'",
            alias.name,
            spec.name
        );
        names.insert(alias.name.clone());
    }
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
        model: &model,
        token_ids: args.token_ids,
        names,
        defaults: Defaults {
            auto_truncate: args.auto_truncate,
            truncation_side: Truncation::End,
            ..Defaults::default()
        },
        default_task: args.default_task.clone(),
        limits: Limits {
            max_request_tokens: args.max_request_tokens,
            max_body_bytes: usize::MAX,
            body_timeout: Duration::MAX,
            max_inflight_bytes: usize::MAX,
        },
        seen: done,
    };
    let mut progress = Progress::new(total as u64);
    progress.advance(skipped as u64, 0);
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut chunk: Vec<Line> = Vec::new();
    let mut chunk_tokens = 0;
    let mut lines_iter = BufReader::new(input).lines().enumerate();
    loop {
        let next = lines_iter.next();
        let finished = next.is_none();
        if let Some((n, line)) = next {
            let line = line.with_context(|| format!("cannot read {}", args.input.display()))?;
            if let Some(l) = runner.read(n + 1, &line) {
                if let Line::Pending { tokens, .. } = &l {
                    chunk_tokens += tokens;
                }
                chunk.push(l);
            }
        }
        if !chunk.is_empty() && (finished || chunk.len() >= CHUNK_REQUESTS || chunk_tokens >= CHUNK_TOKENS) {
            let lines = std::mem::take(&mut chunk);
            chunk_tokens = 0;
            let inputs: usize = lines
                .iter()
                .map(|l| {
                    if let Line::Pending { ids, .. } = l {
                        ids.len()
                    } else {
                        0
                    }
                })
                .sum();
            let n = lines.len() as u64;
            for (line, succeeded) in runner.finish(lines, args.batch_tokens)? {
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
