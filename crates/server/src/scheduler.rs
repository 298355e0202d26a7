//! The dynamic batcher: one per served model.
//!
//! Requests put their tokenized inputs into a queue bounded by queued tokens (admission is all
//! or nothing). One engine worker thread takes batches from the queue by a token budget as soon
//! as it is free: the oldest input first, then inputs of similar length from a look-ahead
//! window, so a batch mixes requests and one request may span batches. Results are put back in
//! input order. A request whose client went away has its queued inputs removed. A panic inside
//! the engine fails that batch's requests only; the worker goes on with the next batch.

use crate::error::ApiError;
use crate::metrics;
use openembed_engine::Model;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
}

/// How many queued inputs the batcher looks at when grouping by length.
const LOOKAHEAD: usize = 4096;

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

type JobResult = Result<JobOutput, ApiError>;

/// One admitted request.
struct Job {
    admitted: Instant,
    /// Inputs of this job still waiting in the queue.
    queued_inputs: AtomicUsize,
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
    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, error: ApiError) {
        self.cancelled.store(true, Ordering::Relaxed);
        if let Some(reply) = self.lock().reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

/// One queued input.
struct Entry {
    ids: Vec<u32>,
    slot: usize,
    job: Arc<Job>,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    tokens: usize,
    requests: usize,
    closed: bool,
    /// Recent engine throughput in tokens/s (exponential moving average), for `Retry-After`.
    tokens_per_second: f64,
}

impl Queue {
    /// Accounts for entries that left the queue (batched or dropped).
    fn forget(&mut self, entry: &Entry) {
        self.tokens -= entry.ids.len();
        if entry.job.queued_inputs.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.requests -= 1;
        }
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
        metrics::queue_depth(&self.name, queue.requests, queue.tokens);
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
    reply: oneshot::Receiver<JobResult>,
}

impl Ticket {
    /// Waits for the vectors.
    pub async fn wait(mut self) -> JobResult {
        match (&mut self.reply).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::internal(
                "The engine worker stopped before finishing the request.",
            )),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.job.lock().reply.is_none() {
            return; // answered
        }
        self.job.cancelled.store(true, Ordering::Relaxed);
        if self.job.queued_inputs.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut queue = self.shared.lock();
        let (keep, drop): (VecDeque<Entry>, VecDeque<Entry>) = std::mem::take(&mut queue.entries)
            .into_iter()
            .partition(|e| !Arc::ptr_eq(&e.job, &self.job));
        queue.entries = keep;
        for entry in &drop {
            queue.forget(entry);
        }
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
            queue: Mutex::new(Queue {
                tokens_per_second: 2000.0,
                ..Queue::default()
            }),
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

    /// Admits a request's token ids (all or nothing) or refuses it with 429 when the queue is full.
    pub fn submit(&self, inputs: Vec<Vec<u32>>) -> Result<Ticket, ApiError> {
        let tokens: usize = inputs.iter().map(Vec::len).sum();
        let (tx, rx) = oneshot::channel();
        let job = Arc::new(Job {
            admitted: Instant::now(),
            queued_inputs: AtomicUsize::new(inputs.len()),
            cancelled: AtomicBool::new(false),
            state: Mutex::new(JobState {
                vectors: vec![None; inputs.len()],
                missing: inputs.len(),
                first_start: None,
                inference: Duration::ZERO,
                reply: Some(tx),
            }),
        });
        {
            let mut queue = self.shared.lock();
            if queue.closed {
                return Err(ApiError::unavailable("The server is shutting down."));
            }
            // An empty queue takes any request, so one large request is never refused forever.
            if queue.tokens > 0 && queue.tokens + tokens > self.shared.config.max_queued_tokens {
                let seconds = (queue.tokens + tokens) as f64 / queue.tokens_per_second.max(1.0);
                return Err(ApiError::queue_full(seconds.ceil().clamp(1.0, 600.0) as u64));
            }
            queue.tokens += tokens;
            queue.requests += 1;
            for (slot, ids) in inputs.into_iter().enumerate() {
                queue.entries.push_back(Entry {
                    ids,
                    slot,
                    job: Arc::clone(&job),
                });
            }
            self.shared.publish_depth(&queue);
        }
        self.shared.wake.notify_one();
        Ok(Ticket {
            job,
            shared: Arc::clone(&self.shared),
            reply: rx,
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

/// Takes the next batch: the oldest input, then the inputs closest in length to it within the
/// look-ahead window, up to the token budget. Cancelled inputs are dropped on the way.
fn take_batch(queue: &mut Queue, budget: usize) -> Vec<Entry> {
    let mut batch = Vec::new();
    let first = loop {
        match queue.entries.pop_front() {
            None => return batch,
            Some(e) if e.job.cancelled.load(Ordering::Relaxed) => queue.forget(&e),
            Some(e) => break e,
        }
    };
    queue.forget(&first);
    let anchor = first.ids.len();
    let mut tokens = anchor;
    batch.push(first);
    let window = queue.entries.len().min(LOOKAHEAD);
    let mut order: Vec<usize> = (0..window).collect();
    order.sort_by_key(|&i| (queue.entries[i].ids.len().abs_diff(anchor), i));
    let mut take = vec![false; window];
    for i in order {
        if tokens >= budget {
            break;
        }
        let len = queue.entries[i].ids.len();
        if tokens + len <= budget {
            take[i] = true;
            tokens += len;
        }
    }
    let rest = queue.entries.split_off(window);
    let window_entries = std::mem::replace(&mut queue.entries, rest);
    let mut keep = VecDeque::with_capacity(window);
    for (entry, taken) in window_entries.into_iter().zip(take) {
        if entry.job.cancelled.load(Ordering::Relaxed) {
            queue.forget(&entry);
        } else if taken {
            queue.forget(&entry);
            batch.push(entry);
        } else {
            keep.push_back(entry);
        }
    }
    keep.append(&mut queue.entries);
    queue.entries = keep;
    batch
}

fn run_worker(shared: &Shared) {
    loop {
        let batch = {
            let mut queue = shared.lock();
            while queue.entries.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            if queue.entries.is_empty() {
                return;
            }
            let batch = take_batch(&mut queue, shared.config.max_batch_tokens);
            shared.publish_depth(&queue);
            batch
        };
        if batch.is_empty() {
            continue;
        }
        run_batch(shared, batch);
    }
}

fn run_batch(shared: &Shared, batch: Vec<Entry>) {
    let start = Instant::now();
    for entry in &batch {
        entry.job.lock().first_start.get_or_insert(start);
    }
    let ids: Vec<&[u32]> = batch.iter().map(|e| e.ids.as_slice()).collect();
    let tokens: usize = ids.iter().map(|i| i.len()).sum();
    let result = catch_unwind(AssertUnwindSafe(|| {
        fault_injection::maybe_panic(&ids);
        shared.model.embed_ids(&ids)
    }));
    let elapsed = start.elapsed();
    let mut jobs: Vec<&Arc<Job>> = batch.iter().map(|e| &e.job).collect();
    jobs.sort_by_key(|j| Arc::as_ptr(j));
    jobs.dedup_by(|a, b| Arc::ptr_eq(a, b));
    for job in &jobs {
        job.lock().inference += elapsed;
    }
    metrics::batch(&shared.name, batch.len(), tokens, jobs.len(), elapsed);
    {
        let mut queue = shared.lock();
        let rate = tokens as f64 / elapsed.as_secs_f64().max(1e-6);
        queue.tokens_per_second = 0.7 * queue.tokens_per_second + 0.3 * rate;
    }
    match result {
        Ok(Ok(vectors)) => {
            for (entry, vector) in batch.into_iter().zip(vectors) {
                deliver(entry, vector);
            }
        }
        Ok(Err(error)) => {
            tracing::error!(model = %shared.name, %error, "engine batch failed");
            for entry in batch {
                entry
                    .job
                    .fail(ApiError::internal(format!("The engine failed on this batch: {error}")));
            }
        }
        Err(_) => {
            tracing::error!(model = %shared.name, inputs = batch.len(), "engine batch panicked; its requests fail, the worker goes on");
            metrics::engine_panic(&shared.name);
            for entry in batch {
                entry.job.fail(ApiError::internal(
                    "The server had an error while processing your request.",
                ));
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

/// Test hook: with `OPENEMBED_FAULT_PANIC_TOKENS=N` set, a batch holding an input of exactly N
/// tokens panics inside the worker. Used to prove a panic fails only its batch.
mod fault_injection {
    use std::sync::OnceLock;

    pub fn maybe_panic(ids: &[&[u32]]) {
        static TRIGGER: OnceLock<Option<usize>> = OnceLock::new();
        let trigger = TRIGGER.get_or_init(|| {
            std::env::var("OPENEMBED_FAULT_PANIC_TOKENS")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(n) = *trigger {
            if ids.iter().any(|i| i.len() == n) {
                panic!("injected engine fault: an input of {n} tokens");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(len: usize, job: &Arc<Job>, slot: usize) -> Entry {
        Entry {
            ids: vec![1; len],
            slot,
            job: Arc::clone(job),
        }
    }

    fn job(n: usize) -> Arc<Job> {
        let (tx, _rx) = oneshot::channel();
        Arc::new(Job {
            admitted: Instant::now(),
            queued_inputs: AtomicUsize::new(n),
            cancelled: AtomicBool::new(false),
            state: Mutex::new(JobState {
                vectors: vec![None; n],
                missing: n,
                first_start: None,
                inference: Duration::ZERO,
                reply: Some(tx),
            }),
        })
    }

    fn queue_of(lens: &[usize], job: &Arc<Job>) -> Queue {
        let mut q = Queue {
            requests: 1,
            ..Queue::default()
        };
        for (i, &l) in lens.iter().enumerate() {
            q.tokens += l;
            q.entries.push_back(entry(l, job, i));
        }
        q
    }

    #[test]
    fn batches_start_with_the_oldest_and_group_similar_lengths() {
        let j = job(5);
        let mut q = queue_of(&[10, 200, 12, 9, 150], &j);
        let b = take_batch(&mut q, 40);
        let slots: Vec<usize> = b.iter().map(|e| e.slot).collect();
        assert_eq!(slots, vec![0, 2, 3]);
        assert_eq!(q.tokens, 350);
        let b = take_batch(&mut q, 40);
        assert_eq!(b.len(), 1, "a long input runs alone");
        assert_eq!(b[0].slot, 1);
        let b = take_batch(&mut q, 1000);
        assert_eq!(b[0].slot, 4);
        assert_eq!((q.tokens, q.requests, q.entries.len()), (0, 0, 0));
    }

    #[test]
    fn cancelled_inputs_are_dropped() {
        let a = job(2);
        let b = job(1);
        let mut q = queue_of(&[5, 5], &a);
        q.entries.push_back(entry(7, &b, 0));
        q.tokens += 7;
        q.requests += 1;
        a.cancelled.store(true, Ordering::Relaxed);
        let batch = take_batch(&mut q, 100);
        assert_eq!(batch.len(), 1);
        assert!(Arc::ptr_eq(&batch[0].job, &b));
        assert_eq!((q.tokens, q.requests), (0, 0));
    }
}
