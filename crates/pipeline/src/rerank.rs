//! A rerank request: a query and documents scored by a reranker. [`RerankJob::new`] checks the
//! request's rules, [`RerankJob::tokenize`] makes its (query, document) pairs under the model's
//! limit and the request token limit, and the pairs run on the model's scheduler like embedding
//! inputs (the engine returns one logit per pair); [`ServedModel::rank`] turns the logits into
//! the model's scores, best first.

use crate::error::RequestError;
use crate::prepare::too_many_tokens;
use crate::registry::ServedModel;
use openembed_engine::{Model, Truncation};

/// Most documents in one rerank request.
pub const MAX_DOCUMENTS: usize = 1000;

/// A validated rerank request, ready to tokenize.
pub struct RerankJob {
    /// The query.
    pub query: String,
    /// Document texts.
    pub documents: Vec<String>,
    /// Instruction override.
    pub instruction: Option<String>,
    /// Truncation of over-long pairs.
    pub truncation: Truncation,
    /// Per-document token cap.
    pub max_tokens_per_doc: Option<usize>,
    /// How the caller turns truncation on (ends the over-limit message).
    pub truncate_hint: &'static str,
}

impl RerankJob {
    /// Checks the common rules: a query, 1…1,000 documents.
    pub fn new(
        query: String,
        documents: Vec<String>,
        instruction: Option<String>,
        truncation: Truncation,
        max_tokens_per_doc: Option<usize>,
    ) -> Result<Self, RequestError> {
        if query.is_empty() {
            return Err(RequestError::invalid("'query' must not be empty.", Some("query")));
        }
        if documents.is_empty() {
            return Err(RequestError::invalid(
                "'documents' must hold at least one document.",
                Some("documents"),
            ));
        }
        if documents.len() > MAX_DOCUMENTS {
            return Err(RequestError::invalid(
                format!(
                    "'documents' holds {} documents; at most {MAX_DOCUMENTS} are allowed.",
                    documents.len()
                ),
                Some("documents"),
            ));
        }
        if max_tokens_per_doc == Some(0) {
            return Err(RequestError::invalid(
                "'max_tokens_per_doc' must be at least 1.",
                Some("max_tokens_per_doc"),
            ));
        }
        Ok(Self {
            query,
            documents,
            instruction,
            truncation,
            max_tokens_per_doc,
            truncate_hint: "ask for truncation to cut the document.",
        })
    }

    /// Tokenizes the pairs: their ids and the total token count, refusing over-long pairs when
    /// truncation is off and requests over `max_tokens`.
    pub fn tokenize(&self, model: &Model, max_tokens: usize) -> Result<(Vec<Vec<u32>>, usize), RequestError> {
        let docs: Vec<&str> = self.documents.iter().map(String::as_str).collect();
        let toks = model
            .tokenize_pairs(
                &self.query,
                &docs,
                self.instruction.as_deref(),
                self.truncation,
                self.max_tokens_per_doc,
            )
            .map_err(|e| RequestError::invalid(e.to_string(), None))?;
        checked_ids(toks, max_tokens, "documents", |i, tokens| {
            format!(
                "Document {i} with the query is {tokens} tokens, more than the model's limit of {}; {}",
                model.info().max_input_tokens,
                self.truncate_hint
            )
        })
    }
}

/// The ids of tokenized inputs (texts or pairs) and their total, refusing an input over the
/// model's limit that was not cut (`too_long` words the message from its index and tokens) and
/// a total over `max_tokens`; `param` names the request field.
pub(crate) fn checked_ids(
    toks: Vec<openembed_engine::TokenizedInput>,
    max_tokens: usize,
    param: &str,
    too_long: impl Fn(usize, usize) -> String,
) -> Result<(Vec<Vec<u32>>, usize), RequestError> {
    if let Some((i, t)) = toks.iter().enumerate().find(|(_, t)| t.over_limit && !t.truncated()) {
        return Err(RequestError::invalid(too_long(i, t.untruncated_tokens), Some(param)));
    }
    let total: usize = toks.iter().map(|t| t.tokens()).sum();
    if total > max_tokens {
        return Err(too_many_tokens(total, max_tokens, param));
    }
    Ok((toks.into_iter().map(|t| t.ids).collect(), total))
}

/// Scores from the engine's logits, ranked best first (stable: ties keep request order).
fn rank(model: &Model, logits: &[Vec<f32>], raw: bool) -> Vec<(usize, f32)> {
    openembed_engine::rerank::rank_by_score(model.scores_from_logits(logits, raw))
}

impl ServedModel {
    /// Scores of a finished rerank request's pairs (`logits`: one per pair, in order), ranked
    /// best first; `raw` keeps the logits.
    pub fn rank(&self, logits: &[Vec<f32>], raw: bool) -> Vec<(usize, f32)> {
        rank(&self.model, logits, raw)
    }

    /// Tokenizes, queues and ranks a rerank request, blocking the thread (offline front ends).
    pub fn rerank_blocking(
        &self,
        job: &RerankJob,
        raw: bool,
        max_tokens: usize,
    ) -> Result<Vec<(usize, f32)>, RequestError> {
        let (ids, _) = job.tokenize(&self.model, max_tokens)?;
        let logits = self.scheduler.submit(ids, None)?.wait_blocking()?;
        Ok(rank(&self.model, &logits.vectors, raw))
    }
}
