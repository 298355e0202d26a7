//! A rerank request: a query and documents scored by a reranker. [`RerankJob::new`] checks the
//! request's rules, [`RerankJob::tokenize`] makes its (query, document) pairs under the model's
//! limit and the request token limit, and the pairs run on the model's scheduler like embedding
//! inputs (the engine returns one logit per pair); [`ServedModel::rank`] turns the logits into
//! the model's scores, best first.

use crate::error::RequestError;
use crate::prepare::too_many_tokens;
use crate::registry::ServedModel;
use crate::scheduler::Ticket;
use openembed_engine::{Model, Output, Side, Truncation};

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

    /// Tokenizes the request as the model scores it (see [`RerankIds`]): the ids and the total
    /// token count, refusing over-long inputs when truncation is off and requests over
    /// `max_tokens`.
    pub fn tokenize(&self, model: &Model, max_tokens: usize) -> Result<(RerankIds, usize), RequestError> {
        if model.info().rerank.is_none() && model.info().multi_vector.is_some() {
            return self.tokenize_apart(model, max_tokens);
        }
        let (pairs, tokens) = self.tokenize_pairs(model, max_tokens)?;
        Ok((RerankIds::Pairs(pairs), tokens))
    }

    /// A late-interaction model's inputs: the query on its query side, each document on the
    /// document side.
    fn tokenize_apart(&self, model: &Model, max_tokens: usize) -> Result<(RerankIds, usize), RequestError> {
        if self.instruction.is_some() {
            return Err(RequestError::invalid(
                "'instruction' applies to instruction-following rerankers, not to a late-interaction model.",
                Some("instruction"),
            ));
        }
        let error = |e: openembed_engine::Error| RequestError::invalid(e.to_string(), None);
        let query = model
            .tokenize_side(&[self.query.as_str()], None, self.truncation, Side::Query)
            .map_err(error)?;
        let limit = model.info().max_input_tokens;
        let (mut query, query_tokens) = checked_ids(query, max_tokens, "query", |_, tokens| {
            format!("The query is {tokens} tokens, more than the model's limit of {limit}.")
        })?;
        let docs: Vec<&str> = self.documents.iter().map(String::as_str).collect();
        let mut documents = model
            .tokenize_side(&docs, None, self.truncation, Side::Document)
            .map_err(error)?;
        if let Some(cap) = self.max_tokens_per_doc {
            for d in &mut documents {
                // Keep the end-of-sequence token: cut the text before it.
                if d.ids.len() > cap && cap >= 2 {
                    let last = d.ids.pop().unwrap_or_default();
                    d.ids.truncate(cap - 1);
                    d.ids.push(last);
                }
            }
        }
        let (documents, doc_tokens) = checked_ids(
            documents,
            max_tokens.saturating_sub(query_tokens),
            "documents",
            |i, tokens| {
                format!(
                    "Document {i} is {tokens} tokens, more than the model's limit of {limit}; {}",
                    self.truncate_hint
                )
            },
        )?;
        Ok((
            RerankIds::Apart {
                query: query.pop().unwrap_or_default(),
                documents,
            },
            query_tokens + doc_tokens,
        ))
    }

    fn tokenize_pairs(&self, model: &Model, max_tokens: usize) -> Result<(Vec<Vec<u32>>, usize), RequestError> {
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

/// The token ids of a rerank request, as its model scores it.
pub enum RerankIds {
    /// (query, document) pairs for a cross-encoder or yes/no reranker: one logit each.
    Pairs(Vec<Vec<u32>>),
    /// The query and the documents apart, for late interaction (ColBERT's MaxSim, bge-m3's
    /// combined score).
    Apart {
        /// The query's ids (its query form).
        query: Vec<u32>,
        /// Each document's ids.
        documents: Vec<Vec<u32>>,
    },
}

/// A rerank request queued on its model's scheduler.
pub enum RerankTicket {
    /// The pairs' logits.
    Pairs(Ticket),
    /// The query's and the documents' retrieval rows, queued together.
    Apart {
        /// The query.
        query: Ticket,
        /// The documents.
        documents: Ticket,
    },
}

/// What a finished rerank request's inputs gave.
pub enum RerankOutput {
    /// One logit row per pair.
    Logits(Vec<Vec<f32>>),
    /// The query's retrieval row and each document's.
    Apart {
        /// The query's row.
        query: Vec<f32>,
        /// Each document's row.
        documents: Vec<Vec<f32>>,
    },
}

impl RerankTicket {
    /// Waits for the outputs (async front ends).
    pub async fn wait(self) -> Result<RerankOutput, RequestError> {
        Ok(match self {
            Self::Pairs(t) => RerankOutput::Logits(t.wait().await?.vectors),
            Self::Apart { query, documents } => {
                let query = query.wait().await?.vectors.pop().unwrap_or_default();
                RerankOutput::Apart {
                    query,
                    documents: documents.wait().await?.vectors,
                }
            }
        })
    }

    /// Waits for the outputs, blocking the thread (front ends without an async runtime).
    pub fn wait_blocking(self) -> Result<RerankOutput, RequestError> {
        Ok(match self {
            Self::Pairs(t) => RerankOutput::Logits(t.wait_blocking()?.vectors),
            Self::Apart { query, documents } => {
                let query = query.wait_blocking()?.vectors.pop().unwrap_or_default();
                RerankOutput::Apart {
                    query,
                    documents: documents.wait_blocking()?.vectors,
                }
            }
        })
    }
}

impl ServedModel {
    /// Queues a rerank request's inputs on the model's scheduler.
    pub fn submit_rerank(&self, ids: RerankIds) -> Result<RerankTicket, RequestError> {
        Ok(match ids {
            RerankIds::Pairs(pairs) => RerankTicket::Pairs(self.scheduler.submit(pairs, None)?),
            RerankIds::Apart { query, documents } => RerankTicket::Apart {
                query: self
                    .scheduler
                    .submit_with(vec![query], None, Output::Retrieval(Side::Query))?,
                documents: self
                    .scheduler
                    .submit_with(documents, None, Output::Retrieval(Side::Document))?,
            },
        })
    }

    /// Scores of a finished rerank request, ranked best first (stable: ties keep request
    /// order). A cross-encoder's logits become its scores (`raw` keeps the logits); a
    /// late-interaction model's score is its relevance as it is ([`Model::relevance`]).
    pub fn rank(&self, output: &RerankOutput, raw: bool) -> Vec<(usize, f32)> {
        let scores = match output {
            RerankOutput::Logits(logits) => self.model.scores_from_logits(logits, raw),
            RerankOutput::Apart { query, documents } => {
                documents.iter().map(|d| self.model.relevance(query, d)).collect()
            }
        };
        openembed_engine::rerank::rank_by_score(scores)
    }

    /// Tokenizes, queues and ranks a rerank request, blocking the thread (offline front ends).
    pub fn rerank_blocking(
        &self,
        job: &RerankJob,
        raw: bool,
        max_tokens: usize,
    ) -> Result<Vec<(usize, f32)>, RequestError> {
        let (ids, _) = job.tokenize(&self.model, max_tokens)?;
        let output = self.submit_rerank(ids)?.wait_blocking()?;
        Ok(self.rank(&output, raw))
    }
}
