//! The dynamic batcher: one per served model.
//!
//! Requests put their tokenized inputs into a queue bounded by queued tokens (admission is all or
//! nothing). One engine worker thread takes batches from the queue by a token budget as soon as it
//! is free. The base budget is what the engine runs in `batch_time` (100 ms by default) at its
//! recent speed (within 256 and `max_batch_tokens`). New requests that fit in it whole run first,
//! in a batch of their own; while a batch of bulk work runs, such requests are taken between its
//! layers and run there (`serve_between_layers`), so a short request waits for one layer, and
//! bulk batches may hold up to `LONG_BATCH_FACTOR` base budgets (fewer, cheaper steps per
//! token). Bulk batches are formed fairly between requests (deficit round-robin by tokens):
//! requests not started yet, then the others in round-robin order, first get an equal share of the
//! budget, then any budget left goes to whoever still has inputs. A request's inputs wait shortest
//! first, so each batch takes inputs of similar length from it. A batch that starts new requests
//! that fit in it while others are under way gives the latter only their share (it is
//! "shielded", see `take_batch`), and a lone request still fills whole batches. Results are put
//! back in input order. A request whose client went away has its queued inputs removed. A batch
//! that fails (an error or a panic inside the engine) is run again one request at a time, so only
//! the request whose input caused it fails; the worker goes on with the next batch.

use crate::error::RequestError;
use crate::metrics;
use openembed_engine::{fits_in_budget, Model, Output};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Batching limits of one model.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Most tokens in one engine batch (a single longer input still runs alone).
    pub max_batch_tokens: usize,
    /// Most tokens waiting in the queue; beyond it requests get 429.
    pub max_queued_tokens: usize,
    /// Engine time that makes a request short (the base token budget follows the engine's
    /// recent speed): new requests that fit in it run in a batch of their own, between the
    /// layers of a bulk batch if one is running; bulk batches take up to 4× as long.
    pub batch_time: Duration,
}

impl SchedulerConfig {
    /// Offline work (`openembed embed` and `batch`, Python's `encode`): no request waits on
    /// another's latency, so every batch takes the full token budget and the queue takes all.
    pub fn offline() -> Self {
        Self {
            max_batch_tokens: OFFLINE_BATCH_TOKENS,
            max_queued_tokens: usize::MAX,
            batch_time: Duration::from_secs(3600),
        }
    }
}

/// Tokens per engine batch for offline work: large enough that per-batch costs vanish, small
/// enough that activations stay in a few tens of MB.
pub const OFFLINE_BATCH_TOKENS: usize = 8192;

/// What a finished request gets back.
#[derive(Debug)]
pub struct JobOutput {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Time from admission to the start of its first batch.
    pub queue_time: Duration,
    /// Engine time of the batches it was part of.
    pub inference_time: Duration,
}

type JobResult = Result<JobOutput, RequestError>;

/// One admitted request.
struct Job {
    admitted: Instant,
    /// Task adapter of every input (jina-embeddings-v3), `None` for the base weights.
    task: Option<usize>,
    /// What each input hands back: its vector, or its token vectors.
    output: Output,
    /// Whether some of its inputs still wait in the queue.
    queued: AtomicBool,
    cancelled: AtomicBool,
    state: Mutex<JobState>,
}

struct JobState {
    vectors: Vec<Option<Vec<f32>>>,
    missing: usize,
    first_start: Option<Instant>,
    inference: Duration,
    reply: Option<oneshot::Sender<JobResult>>,
}

impl Job {
    fn new(inputs: usize, task: Option<usize>, output: Output, reply: oneshot::Sender<JobResult>) -> Self {
        Self {
            admitted: Instant::now(),
            task,
            output,
            queued: AtomicBool::new(true),
            cancelled: AtomicBool::new(false),
            state: Mutex::new(JobState {
                vectors: vec![None; inputs],
                missing: inputs,
                first_start: None,
                inference: Duration::ZERO,
                reply: Some(reply),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn fail(&self, error: RequestError) {
        self.cancelled.store(true, Ordering::Relaxed);
        if let Some(reply) = self.lock().reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

/// One input taken into a batch.
struct Entry {
    ids: Vec<u32>,
    slot: usize,
    job: Arc<Job>,
}

/// A request's inputs that have not been batched yet, shortest first.
struct Pending {
    job: Arc<Job>,
    inputs: VecDeque<(usize, Vec<u32>)>,
    tokens: usize,
    /// Whether some of its inputs have been batched already.
    started: bool,
}

impl Pending {
    /// Moves the first `count` inputs into `batch`.
    fn take(&mut self, count: usize, batch: &mut Vec<Entry>) -> usize {
        let mut tokens = 0;
        for (slot, ids) in self.inputs.drain(..count) {
            tokens += ids.len();
            batch.push(Entry {
                ids,
                slot,
                job: Arc::clone(&self.job),
            });
        }
        self.tokens -= tokens;
        tokens
    }
}

#[derive(Default)]
struct Queue {
    /// Requests with inputs waiting, in round-robin order (the front is served first).
    pending: VecDeque<Pending>,
    tokens: usize,
    closed: bool,
    /// Recent engine work: tokens and seconds, both decayed per batch, so the speed estimate
    /// is weighted by tokens (a tiny batch's fixed cost barely moves it).
    recent_tokens: f64,
    recent_seconds: f64,
    /// Whether the last batch was shielded (see [`take_batch`]).
    last_shielded: bool,
}

impl Queue {
    /// Recent engine throughput in tokens/s (2,000 before the first batch), for `Retry-After`
    /// and the batch budget.
    fn tokens_per_second(&self) -> f64 {
        if self.recent_seconds > 0.0 {
            self.recent_tokens / self.recent_seconds
        } else {
            2000.0
        }
    }

    /// Adds one batch to the recent work.
    fn record(&mut self, tokens: usize, seconds: f64) {
        self.recent_tokens = 0.8 * self.recent_tokens + tokens as f64;
        self.recent_seconds = 0.8 * self.recent_seconds + seconds;
    }

    /// Removes the requests whose clients went away.
    fn drop_cancelled(&mut self) {
        let mut dropped = 0;
        self.pending.retain(|p| {
            let keep = !p.job.is_cancelled();
            if !keep {
                dropped += p.tokens;
                p.job.queued.store(false, Ordering::Relaxed);
            }
            keep
        });
        self.tokens -= dropped;
    }
}

struct Shared {
    model: Arc<Model>,
    name: String,
    config: SchedulerConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_depth(&self, queue: &Queue) {
        metrics::queue_depth(&self.name, queue.pending.len(), queue.tokens);
    }
}

/// The batcher and engine worker of one model.
pub struct Scheduler {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A request waiting for its vectors. Dropping it (the client went away) removes its inputs
/// that have not started yet.
pub struct Ticket {
    job: Arc<Job>,
    shared: Arc<Shared>,
    /// Taken by the wait (`None` only after it).
    reply: Option<oneshot::Receiver<JobResult>>,
}

impl Ticket {
    /// Waits for the vectors.
    pub async fn wait(mut self) -> JobResult {
        match self.reply.as_mut() {
            Some(reply) => reply.await.unwrap_or_else(|_| Err(stopped())),
            None => Err(stopped()),
        }
    }

    /// Waits for the vectors, blocking the thread (front ends without an async runtime: the
    /// command line and Python). Must not be called on an async runtime's thread.
    pub fn wait_blocking(mut self) -> JobResult {
        match self.reply.take() {
            Some(reply) => reply.blocking_recv().unwrap_or_else(|_| Err(stopped())),
            None => Err(stopped()),
        }
    }
}

fn stopped() -> RequestError {
    RequestError::internal("The engine worker stopped before finishing the request.")
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.job.lock().reply.is_none() {
            return; // answered
        }
        self.job.cancelled.store(true, Ordering::Relaxed);
        if !self.job.queued.load(Ordering::Relaxed) {
            return;
        }
        let mut queue = self.shared.lock();
        queue.drop_cancelled();
        self.shared.publish_depth(&queue);
    }
}

impl Scheduler {
    /// Starts the worker thread of `model`, served as `name`.
    pub fn start(model: Arc<Model>, name: &str, config: SchedulerConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            model,
            name: name.to_string(),
            config,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let for_worker = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || run_worker(&for_worker))?;
        Ok(Self {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Refuses with 429 (503 while shutting down) when the queue is already full, so a request
    /// that cannot be admitted is not tokenized first; [`Self::submit`] decides for good.
    pub fn check_room(&self) -> Result<(), RequestError> {
        let queue = self.shared.lock();
        if queue.closed {
            return Err(RequestError::unavailable("The server is shutting down."));
        }
        if queue.tokens > 0 && queue.tokens >= self.shared.config.max_queued_tokens {
            let seconds = queue.tokens as f64 / queue.tokens_per_second().max(1.0);
            return Err(RequestError::queue_full(seconds.ceil().clamp(1.0, 600.0) as u64));
        }
        Ok(())
    }

    /// Admits a request's token ids (all or nothing), run with task adapter `task` (models with
    /// tasks; requests with different tasks share batches), or refuses it with 429 when the
    /// queue is full.
    pub fn submit(&self, inputs: Vec<Vec<u32>>, task: Option<usize>) -> Result<Ticket, RequestError> {
        self.submit_with(inputs, task, Output::Pooled)
    }

    /// [`Self::submit`], asking for `output` of every input (token vectors share batches with
    /// other requests' vectors).
    pub fn submit_with(
        &self,
        inputs: Vec<Vec<u32>>,
        task: Option<usize>,
        output: Output,
    ) -> Result<Ticket, RequestError> {
        let (tx, rx) = oneshot::channel();
        let job = Arc::new(Job::new(inputs.len(), task, output, tx));
        let pending = pending_of(&job, inputs);
        {
            let mut queue = self.shared.lock();
            if queue.closed {
                return Err(RequestError::unavailable("The server is shutting down."));
            }
            // An empty queue takes any request, so one large request is never refused forever.
            if queue.tokens > 0 && queue.tokens + pending.tokens > self.shared.config.max_queued_tokens {
                let seconds = (queue.tokens + pending.tokens) as f64 / queue.tokens_per_second().max(1.0);
                return Err(RequestError::queue_full(seconds.ceil().clamp(1.0, 600.0) as u64));
            }
            queue.tokens += pending.tokens;
            queue.pending.push_back(pending);
            self.shared.publish_depth(&queue);
        }
        self.shared.wake.notify_one();
        Ok(Ticket {
            job,
            shared: Arc::clone(&self.shared),
            reply: Some(rx),
        })
    }

    /// Stops taking requests; the worker finishes what is queued, then exits. Waits for it.
    pub fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A request's inputs as they wait: shortest first, each with its position in the request.
fn pending_of(job: &Arc<Job>, inputs: Vec<Vec<u32>>) -> Pending {
    let tokens = inputs.iter().map(Vec::len).sum();
    let mut inputs: Vec<(usize, Vec<u32>)> = inputs.into_iter().enumerate().collect();
    inputs.sort_by_key(|(_, ids)| ids.len());
    Pending {
        job: Arc::clone(job),
        inputs: inputs.into(),
        tokens,
        started: false,
    }
}

/// Fewest tokens a batch is given (throughput is flat from here up; measured 256..8,192). A
/// query arriving behind a bulk request waits for the batch in progress, so this bounds its
/// latency on slow CPUs: at 512 (before shielded batches), fp32 MiniLM on a 2-core Zen 4 guest
/// (~3,000 tok/s) gave small-query p50 235 ms, p99 378 ms in `bench_fairness.py` (p99 134 ms at
/// 256; target 250 ms), for at most a few percent more throughput.
const MIN_BATCH_TOKENS: usize = 256;

/// The token budget of the next batch: what the engine runs in `config.batch_time` at its
/// recent speed, at least [`MIN_BATCH_TOKENS`], at most `config.max_batch_tokens`.
fn batch_budget(tokens_per_second: f64, config: &SchedulerConfig) -> usize {
    let timed = (tokens_per_second * config.batch_time.as_secs_f64()) as usize;
    timed.max(MIN_BATCH_TOKENS).min(config.max_batch_tokens.max(1))
}

/// Takes the next batch, fairly between requests (deficit round-robin by tokens): requests
/// not started yet first (in arrival order), then the others in queue order, each gets up to an
/// equal share of the budget (at least its next input when that still fits), then what is left
/// of the budget goes to the requests in queue order. Requests served in the first round move
/// to the back of the queue.
///
/// A batch that starts new requests small enough to fit in it whole while others are under way
/// is *shielded* (unless the batch before it was): the requests under way get only their share,
/// so a new small request's first batch is short instead of being topped up to the full budget
/// with a bulk request's inputs (new requests larger than a batch fill it themselves, as
/// before). Shielded and full batches alternate at worst, so no request starves.
fn take_batch(queue: &mut Queue, budget: usize) -> Vec<Entry> {
    queue.drop_cancelled();
    let mut batch = Vec::new();
    if queue.pending.is_empty() {
        return batch;
    }
    let share = (budget / queue.pending.len()).max(1);
    let mut tokens = 0;
    let mut served = vec![false; queue.pending.len()];
    let (fresh, started): (Vec<usize>, Vec<usize>) = (0..queue.pending.len()).partition(|&i| !queue.pending[i].started);
    let fresh_tokens: usize = fresh.iter().map(|&i| queue.pending[i].tokens).sum();
    let shielded = !queue.last_shielded && !started.is_empty() && (1..=budget).contains(&fresh_tokens);
    queue.last_shielded = shielded;
    let mut fills = vec![true; queue.pending.len()];
    for &i in &started {
        fills[i] = !shielded;
    }
    // In a full batch, the request under way that waited longest may take its next input even
    // past the budget, so an input longer than the budget is not held back for as long as new
    // requests keep arriving (the batch then lasts at most one input longer).
    let overshoot = started.first().copied().filter(|_| !shielded);
    for i in fresh.into_iter().chain(started) {
        let p = &mut queue.pending[i];
        let room = budget.saturating_sub(tokens);
        let (mut count, _) = fits_in_budget(p.inputs.iter().map(|(_, ids)| ids.len()), share.min(room));
        // A request gets at least its next input when that still fits (or the batch is empty):
        // a small request is never kept waiting by a long input that would not fit beside it.
        if count == 0
            && (fills[i] || batch.is_empty())
            && p.inputs
                .front()
                .is_some_and(|(_, ids)| batch.is_empty() || ids.len() <= room || overshoot == Some(i))
        {
            count = 1;
        }
        if count > 0 {
            tokens += p.take(count, &mut batch);
            p.started = true;
            served[i] = true;
        }
    }
    for (p, _) in queue.pending.iter_mut().zip(&fills).filter(|(_, &fills)| fills) {
        let room = budget.saturating_sub(tokens);
        if room == 0 {
            break;
        }
        let (count, _) = fits_in_budget(p.inputs.iter().map(|(_, ids)| ids.len()), room);
        tokens += p.take(count, &mut batch);
    }
    queue.tokens -= tokens;
    let (mut waiting, mut rotated) = (VecDeque::new(), VecDeque::new());
    for (p, served) in std::mem::take(&mut queue.pending).into_iter().zip(served) {
        if p.inputs.is_empty() {
            p.job.queued.store(false, Ordering::Relaxed);
        } else if served {
            rotated.push_back(p);
        } else {
            waiting.push_back(p);
        }
    }
    waiting.append(&mut rotated);
    queue.pending = waiting;
    batch
}

/// How many times the `batch_time` budget a batch may hold. New requests that fit in one
/// `batch_time` budget do not wait for such a batch: they run between its layers (see
/// [`serve_between_layers`]); larger batches spend less per token (~4% between 256- and
/// 2,048-token batches on a 2-vCPU host).
const LONG_BATCH_FACTOR: usize = 4;

/// Called between the layers of a running batch: takes the new requests that fit in one
/// `batch_time` budget whole (in arrival order) and runs them as a batch of their own, so a
/// short request waits for one layer of a long batch, not for all of it. Returns the time it
/// took (to be left out of the long batch's own time).
fn serve_between_layers(shared: &Shared) -> Duration {
    let start = Instant::now();
    let batch = {
        let mut queue = shared.lock();
        let budget = batch_budget(queue.tokens_per_second(), &shared.config);
        let batch = take_new_that_fit(&mut queue, budget);
        if !batch.is_empty() {
            shared.publish_depth(&queue);
        }
        batch
    };
    if batch.is_empty() {
        return Duration::ZERO;
    }
    metrics::batch_between_layers(&shared.name);
    run_batch(shared, batch, false);
    start.elapsed()
}

/// Takes every input of the requests not started yet whose tokens fit, together, in `budget`
/// (in arrival order; one that does not fit is skipped, a later smaller one may still go).
fn take_new_that_fit(queue: &mut Queue, budget: usize) -> Vec<Entry> {
    let mut batch = Vec::new();
    let mut tokens = 0;
    for p in queue.pending.iter_mut().filter(|p| !p.started && !p.job.is_cancelled()) {
        if p.tokens == 0 || tokens + p.tokens > budget {
            continue;
        }
        tokens += p.take(p.inputs.len(), &mut batch);
        p.started = true;
    }
    if tokens > 0 {
        queue.tokens -= tokens;
        queue.pending.retain(|p| {
            let keep = !p.inputs.is_empty();
            if !keep {
                p.job.queued.store(false, Ordering::Relaxed);
            }
            keep
        });
    }
    batch
}

/// Whether a batch serves bulk work, so that new short requests should run between its layers:
/// some request in it has inputs still queued, or brought more than `budget` tokens to it.
/// Batches of short requests only (many single-input clients) run whole: splitting them into
/// nested batches would cost more than it saves.
fn holds_bulk(batch: &[Entry], budget: usize) -> bool {
    let mut tokens: Vec<(&Arc<Job>, usize)> = Vec::new();
    for e in batch {
        if e.job.queued.load(Ordering::Relaxed) {
            return true;
        }
        match tokens.iter_mut().find(|(job, _)| Arc::ptr_eq(job, &e.job)) {
            Some((_, t)) => *t += e.ids.len(),
            None => tokens.push((&e.job, e.ids.len())),
        }
    }
    tokens.iter().any(|&(_, t)| t > budget)
}

fn run_worker(shared: &Shared) {
    loop {
        let (batch, budget) = {
            let mut queue = shared.lock();
            while queue.pending.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            if queue.pending.is_empty() {
                return;
            }
            let budget = batch_budget(queue.tokens_per_second(), &shared.config);
            // New requests that fit in one budget run first, by themselves, unless the batch
            // before was such a batch (or a shielded one): then the requests under way get a
            // full batch, so none starves.
            let small = if queue.last_shielded {
                Vec::new()
            } else {
                take_new_that_fit(&mut queue, budget)
            };
            let batch = if small.is_empty() {
                let long = (budget * LONG_BATCH_FACTOR).min(shared.config.max_batch_tokens.max(1));
                take_batch(&mut queue, long)
            } else {
                queue.last_shielded = true;
                small
            };
            shared.publish_depth(&queue);
            (batch, budget)
        };
        if batch.is_empty() {
            continue;
        }
        let yielding = holds_bulk(&batch, budget);
        run_batch(shared, batch, yielding);
    }
}

/// Why a batch produced no vectors.
struct Failure {
    message: String,
    panicked: bool,
}

impl Failure {
    fn to_api_error(&self) -> RequestError {
        if self.panicked {
            RequestError::internal("The server had an error while processing your request.")
        } else {
            RequestError::internal(format!("The engine failed on this request: {}", self.message))
        }
    }
}

/// Runs entries through the engine, catching errors and panics; records timing and metrics.
/// With `yielding`, new short requests run between its layers ([`serve_between_layers`]).
fn run_engine(shared: &Shared, entries: &[Entry], yielding: bool) -> Result<Vec<Vec<f32>>, Failure> {
    let start = Instant::now();
    for entry in entries {
        let mut state = entry.job.lock();
        if state.first_start.is_none() {
            state.first_start = Some(start);
            metrics::queue_time(&shared.name, start.duration_since(entry.job.admitted));
        }
    }
    let ids: Vec<&[u32]> = entries.iter().map(|e| e.ids.as_slice()).collect();
    let tokens: usize = ids.iter().map(|i| i.len()).sum();
    let mut others = Duration::ZERO;
    let mut between_layers = || {
        if yielding {
            others += serve_between_layers(shared);
        }
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        crate::fault::maybe_panic(&ids);
        let tasks: Vec<Option<usize>> = entries.iter().map(|e| e.job.task).collect();
        let tasks = tasks.iter().any(Option::is_some).then_some(tasks.as_slice());
        let outputs: Vec<Output> = entries.iter().map(|e| e.job.output).collect();
        let outputs = outputs
            .iter()
            .any(|o| *o != Output::Pooled)
            .then_some(outputs.as_slice());
        shared.model.run_yielding(&ids, tasks, outputs, &mut between_layers)
    }));
    let elapsed = start.elapsed().saturating_sub(others);
    let jobs = distinct_jobs(entries);
    for job in &jobs {
        job.lock().inference += elapsed;
    }
    metrics::batch(&shared.name, entries.len(), tokens, jobs.len(), elapsed);
    {
        let mut queue = shared.lock();
        queue.record(tokens, elapsed.as_secs_f64());
    }
    match result {
        Ok(Ok(vectors)) => Ok(vectors),
        Ok(Err(error)) => Err(Failure {
            message: error.to_string(),
            panicked: false,
        }),
        Err(_) => {
            metrics::engine_panic(&shared.name);
            Err(Failure {
                message: "the engine panicked".into(),
                panicked: true,
            })
        }
    }
}

/// The distinct requests of some entries, in first-seen order.
fn distinct_jobs(entries: &[Entry]) -> Vec<Arc<Job>> {
    let mut jobs: Vec<Arc<Job>> = Vec::new();
    for e in entries {
        if !jobs.iter().any(|j| Arc::ptr_eq(j, &e.job)) {
            jobs.push(Arc::clone(&e.job));
        }
    }
    jobs
}

/// Runs a batch; when it fails and holds several requests, runs each request's part alone so
/// that only the request at fault fails.
fn run_batch(shared: &Shared, batch: Vec<Entry>, yielding: bool) {
    let failure = match run_engine(shared, &batch, yielding) {
        Ok(vectors) => {
            batch.into_iter().zip(vectors).for_each(|(e, v)| deliver(e, v));
            return;
        }
        Err(failure) => failure,
    };
    let jobs = distinct_jobs(&batch);
    tracing::error!(model = %shared.name, error = %failure.message, requests = jobs.len(), "engine batch failed; running its requests one at a time");
    if jobs.len() == 1 {
        jobs[0].fail(failure.to_api_error());
        return;
    }
    metrics::batch_retry(&shared.name);
    let mut batch = batch;
    for job in jobs {
        let (own, rest): (Vec<Entry>, Vec<Entry>) = batch.into_iter().partition(|e| Arc::ptr_eq(&e.job, &job));
        batch = rest;
        match run_engine(shared, &own, false) {
            Ok(vectors) => own.into_iter().zip(vectors).for_each(|(e, v)| deliver(e, v)),
            Err(failure) => {
                tracing::error!(model = %shared.name, error = %failure.message, "a request failed in the engine");
                job.fail(failure.to_api_error());
            }
        }
    }
}

fn deliver(entry: Entry, vector: Vec<f32>) {
    let job = &entry.job;
    let mut state = job.lock();
    if state.reply.is_none() {
        return;
    }
    if state.vectors[entry.slot].is_none() {
        state.missing -= 1;
    }
    state.vectors[entry.slot] = Some(vector);
    if state.missing > 0 {
        return;
    }
    let vectors: Vec<Vec<f32>> = state.vectors.iter_mut().filter_map(Option::take).collect();
    let queue_time = state
        .first_start
        .map(|s| s.duration_since(job.admitted))
        .unwrap_or_default();
    let output = JobOutput {
        vectors,
        queue_time,
        inference_time: state.inference,
    };
    if let Some(reply) = state.reply.take() {
        let _ = reply.send(Ok(output));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> Arc<Job> {
        let (tx, _rx) = oneshot::channel();
        Arc::new(Job::new(n, None, Output::Pooled, tx))
    }

    fn push(q: &mut Queue, lens: &[usize]) -> Arc<Job> {
        let j = job(lens.len());
        let p = pending_of(&j, lens.iter().map(|&l| vec![1; l]).collect());
        q.tokens += p.tokens;
        q.pending.push_back(p);
        j
    }

    fn slots(batch: &[Entry], job: &Arc<Job>) -> Vec<usize> {
        batch
            .iter()
            .filter(|e| Arc::ptr_eq(&e.job, job))
            .map(|e| e.slot)
            .collect()
    }

    #[test]
    fn between_layers_only_new_requests_that_fit_are_taken_whole() {
        let mut q = Queue::default();
        let bulk = push(&mut q, &[100; 20]);
        let mut batch = take_batch(&mut q, 400 * LONG_BATCH_FACTOR);
        assert!(holds_bulk(&batch, 400), "a batch of a request with inputs left yields");
        batch.clear();
        let small = push(&mut q, &[7]);
        let medium = push(&mut q, &[300, 300]);
        let other = push(&mut q, &[50, 60]);
        let nested = take_new_that_fit(&mut q, 400);
        // The small one and the next that still fits, whole; not the medium one, nor the bulk.
        assert_eq!(slots(&nested, &small), vec![0]);
        assert_eq!(slots(&nested, &other), vec![0, 1]);
        assert!(slots(&nested, &medium).is_empty() && slots(&nested, &bulk).is_empty());
        assert!(!holds_bulk(&nested, 400), "a batch of short requests only runs whole");
        assert_eq!(
            q.tokens,
            400 + 600,
            "the bulk's last 4 inputs and the medium request wait"
        );
        assert_eq!(q.pending.len(), 2, "served requests leave the queue");
        // Nothing new fits any more: nothing is taken.
        assert!(take_new_that_fit(&mut q, 400).is_empty());
        // One request larger than the budget in a batch of its own still yields.
        let mut q = Queue::default();
        let lone = push(&mut q, &[300, 300]);
        let batch = take_batch(&mut q, 400 * LONG_BATCH_FACTOR);
        assert_eq!(slots(&batch, &lone), vec![0, 1]);
        assert!(holds_bulk(&batch, 400));
    }

    #[test]
    fn a_lone_request_fills_batches_shortest_first() {
        let mut q = Queue::default();
        let j = push(&mut q, &[10, 200, 12, 9, 150]);
        let b = take_batch(&mut q, 40);
        assert_eq!(slots(&b, &j), vec![3, 0, 2]);
        assert_eq!(q.tokens, 350);
        let b = take_batch(&mut q, 40);
        assert_eq!(slots(&b, &j), vec![4], "a long input runs alone");
        let b = take_batch(&mut q, 1000);
        assert_eq!(slots(&b, &j), vec![1]);
        assert_eq!((q.tokens, q.pending.len()), (0, 0));
        assert!(!j.queued.load(Ordering::Relaxed));
    }

    #[test]
    fn a_small_request_after_a_large_one_is_in_the_next_batch() {
        // The engine is "paused": nothing takes batches until the test does.
        let mut q = Queue::default();
        let large = push(&mut q, &vec![128; 1000]);
        let first = take_batch(&mut q, 2048);
        assert_eq!(first.len(), 16);
        let small = push(&mut q, &[7]);
        let next = take_batch(&mut q, 2048);
        assert_eq!(
            slots(&next, &small),
            vec![0],
            "the small request waits behind one batch at most"
        );
        assert!(next.iter().map(|e| e.ids.len()).sum::<usize>() <= 2048);
        assert!(!slots(&next, &large).is_empty(), "the large request keeps going");
        // Many large requests: each gets its share, in turn.
        let others: Vec<_> = (0..20).map(|_| push(&mut q, &vec![256; 50])).collect();
        let mut seen = vec![0; others.len()];
        for _ in 0..3 {
            let b = take_batch(&mut q, 2048);
            for (i, o) in others.iter().enumerate() {
                seen[i] += slots(&b, o).len();
            }
        }
        assert!(
            seen.iter().all(|&n| n >= 1),
            "every request was served within 3 batches: {seen:?}"
        );
    }

    #[test]
    fn a_new_request_goes_first_even_when_the_budget_is_one_long_input() {
        let mut q = Queue::default();
        let large = push(&mut q, &[256; 10]);
        assert_eq!(take_batch(&mut q, 256).len(), 1);
        let small = push(&mut q, &[7]);
        let next = take_batch(&mut q, 256);
        assert_eq!(slots(&next, &small), vec![0]);
        assert!(slots(&next, &large).is_empty(), "the long input does not fit beside it");
        assert_eq!(take_batch(&mut q, 256).len(), 1);
    }

    #[test]
    fn a_new_small_request_is_not_topped_up_with_bulk_work_and_the_bulk_never_starves() {
        let mut q = Queue::default();
        let bulk = push(&mut q, &[256; 20]);
        assert_eq!(take_batch(&mut q, 470).len(), 1);
        let small = push(&mut q, &[9]);
        let next = take_batch(&mut q, 470);
        assert_eq!(slots(&next, &small), vec![0]);
        assert!(
            slots(&next, &bulk).is_empty(),
            "the bulk's next input is over its share (235): the small request runs without it"
        );
        // A small request before every batch: the bulk still runs every other batch.
        let mut with_bulk = 0;
        for _ in 0..6 {
            let small = push(&mut q, &[9]);
            let b = take_batch(&mut q, 470);
            assert_eq!(slots(&b, &small), vec![0], "every small request is in the next batch");
            with_bulk += usize::from(!slots(&b, &bulk).is_empty());
        }
        assert_eq!(with_bulk, 3);
        // Inputs longer than the whole budget are not held back by a stream of new requests.
        let mut q = Queue::default();
        let long = push(&mut q, &[512; 5]);
        assert_eq!(take_batch(&mut q, 300).len(), 1);
        let mut with_long = 0;
        for _ in 0..6 {
            let small = push(&mut q, &[9]);
            let b = take_batch(&mut q, 300);
            assert_eq!(slots(&b, &small), vec![0]);
            with_long += usize::from(!slots(&b, &long).is_empty());
        }
        assert_eq!(with_long, 3);
    }

    #[test]
    fn batches_last_about_the_batch_time() {
        let config = |max_batch_tokens| SchedulerConfig {
            max_batch_tokens,
            max_queued_tokens: 1,
            batch_time: Duration::from_millis(50),
        };
        assert_eq!(batch_budget(8000.0, &config(2048)), 400);
        assert_eq!(batch_budget(1000.0, &config(2048)), 256);
        assert_eq!(batch_budget(1e6, &config(2048)), 2048);
        assert_eq!(batch_budget(8000.0, &config(100)), 100);
    }

    #[test]
    fn cancelled_inputs_are_dropped() {
        let mut q = Queue::default();
        let a = push(&mut q, &[5, 5]);
        let b = push(&mut q, &[7]);
        a.cancelled.store(true, Ordering::Relaxed);
        let batch = take_batch(&mut q, 100);
        assert_eq!(batch.len(), 1);
        assert!(Arc::ptr_eq(&batch[0].job, &b));
        assert_eq!((q.tokens, q.pending.len()), (0, 0));
        assert!(!a.queued.load(Ordering::Relaxed));
    }
}
