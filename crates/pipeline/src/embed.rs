//! One embeddings request through the pipeline, in the steps every front end takes: plan it
//! against the served model, prepare its token ids, enqueue them on the model's scheduler, and
//! take back its vectors in input order, shaped by the plan. The server runs the steps apart
//! (it reserves memory between them and tokenizes off its async workers); offline front ends
//! (`openembed embed` and `batch`, Python) call [`ServedModel::submit`] and wait, or
//! [`ServedModel::embed_chunked`] for large inputs.

use crate::error::RequestError;
use crate::plan::{plan, Defaults, EmbedRequest, Input, Plan};
use crate::prepare::{prepare, Prepared, WindowLayout};
use crate::registry::ServedModel;
use crate::scheduler::{JobOutput, Ticket};
use std::time::Duration;

/// A request queued on its model's scheduler.
pub struct Submitted {
    ticket: Ticket,
    plan: Plan,
    layout: WindowLayout,
    /// Tokens fed to the model (usage).
    pub tokens: usize,
}

/// A finished request.
#[derive(Debug)]
pub struct Embedded {
    /// One vector per input, in input order, shaped by the plan.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens fed to the model (usage).
    pub tokens: usize,
    /// Time from admission to the start of its first batch.
    pub queue_time: Duration,
    /// Engine time of the batches it was part of.
    pub inference_time: Duration,
}

impl Submitted {
    /// Waits for the vectors (async front ends).
    pub async fn wait(self) -> Result<Embedded, RequestError> {
        let output = self.ticket.wait().await?;
        finish(&self.plan, &self.layout, self.tokens, output)
    }

    /// Waits for the vectors, blocking the thread (front ends without an async runtime).
    pub fn wait_blocking(self) -> Result<Embedded, RequestError> {
        let output = self.ticket.wait_blocking()?;
        finish(&self.plan, &self.layout, self.tokens, output)
    }
}

fn finish(plan: &Plan, layout: &WindowLayout, tokens: usize, output: JobOutput) -> Result<Embedded, RequestError> {
    Ok(Embedded {
        vectors: plan.results(layout, output.vectors)?,
        tokens,
        queue_time: output.queue_time,
        inference_time: output.inference_time,
    })
}

impl ServedModel {
    /// Plans `request` on this model (its `--default-task` applies when it names none).
    pub fn plan(&self, request: &EmbedRequest, defaults: &Defaults) -> Result<Plan, RequestError> {
        plan(request, self.model.info(), defaults, self.default_task.as_deref())
    }

    /// Token ids of `inputs` under `plan`, at most `max_tokens` in all.
    pub fn prepare(&self, inputs: &[Input], plan: &Plan, max_tokens: usize) -> Result<Prepared, RequestError> {
        prepare(
            &self.model,
            inputs,
            plan.token_ids.unwrap_or(self.token_ids),
            plan,
            max_tokens,
        )
    }

    /// Queues prepared ids for the plan's output (all or nothing; refused when the queue is
    /// full).
    pub fn enqueue(&self, prepared: Prepared, plan: Plan) -> Result<Submitted, RequestError> {
        let ticket = self.scheduler.submit_with(prepared.ids, plan.task, plan.output)?;
        Ok(Submitted {
            ticket,
            plan,
            layout: prepared.layout,
            tokens: prepared.tokens,
        })
    }

    /// Plans, prepares and queues a request.
    pub fn submit(
        &self,
        request: &EmbedRequest,
        inputs: &[Input],
        defaults: &Defaults,
        max_tokens: usize,
    ) -> Result<Submitted, RequestError> {
        let plan = self.plan(request, defaults)?;
        self.scheduler.check_room()?;
        let prepared = self.prepare(inputs, &plan, max_tokens)?;
        self.enqueue(prepared, plan)
    }

    /// Embeds many inputs of one planned request, handing the vectors back `chunk` inputs at a
    /// time, in order, to `sink(first_index, vectors, tokens_per_input)`: every input is
    /// tokenized first (so a bad input fails before any vector is handed back), then chunks are
    /// queued one ahead of the one awaited, so the engine never waits on the sink and at most
    /// two chunks of vectors are held. Returns the tokens embedded.
    pub fn embed_chunked<E: From<RequestError>>(
        &self,
        plan: &Plan,
        inputs: &[Input],
        chunk: usize,
        mut sink: impl FnMut(usize, Vec<Vec<f32>>, &[usize]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let prepared = self.prepare(inputs, plan, usize::MAX)?;
        let total = prepared.tokens;
        let mut parts = prepared.split(chunk.max(1)).into_iter();
        let mut first = 0;
        let mut ahead = parts.next().map(|p| self.enqueue(p, plan.clone())).transpose()?;
        while let Some(current) = ahead.take() {
            ahead = parts.next().map(|p| self.enqueue(p, plan.clone())).transpose()?;
            let input_tokens = current.layout.input_tokens();
            let done = current.wait_blocking()?;
            let n = done.vectors.len();
            sink(first, done.vectors, &input_tokens)?;
            first += n;
        }
        Ok(total)
    }
}
