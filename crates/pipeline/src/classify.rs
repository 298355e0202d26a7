//! A classification request: texts or text pairs scored by a sequence-classification model
//! (sentiment, toxicity, intent, NLI …). [`ClassifyJob::new`] checks the request's rules,
//! [`ClassifyJob::tokenize`] makes its inputs under the model's limit and the request token
//! limit, the inputs run on the model's scheduler like embedding inputs (the engine returns one
//! logit per label), and [`ServedModel::labels`] turns the logits into every label with its
//! score, best first, as transformers' `text-classification` pipeline does with `top_k=None`.

use crate::error::RequestError;
use crate::registry::ServedModel;
use crate::rerank::checked_ids;
use openembed_engine::{ClassifierInfo, LabelFunction, Model, Truncation};

/// Most inputs in one classification request.
pub const MAX_INPUTS: usize = 2048;

/// One input of a classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassifyInput {
    /// A text.
    Text(String),
    /// A text pair (NLI premise and hypothesis, question and answer …), joined by the
    /// tokenizer's pair template.
    Pair(String, String),
}

/// A validated classification request, ready to tokenize.
pub struct ClassifyJob {
    /// The inputs, in order.
    pub inputs: Vec<ClassifyInput>,
    /// Truncation of over-long inputs.
    pub truncation: Truncation,
    /// How the caller turns truncation on (ends the over-limit message).
    pub truncate_hint: &'static str,
}

impl ClassifyJob {
    /// Checks the common rules: 1…[`MAX_INPUTS`] inputs.
    pub fn new(
        inputs: Vec<ClassifyInput>,
        truncation: Truncation,
        truncate_hint: &'static str,
    ) -> Result<Self, RequestError> {
        if inputs.is_empty() {
            return Err(RequestError::invalid(
                "'inputs' must hold at least one input.",
                Some("inputs"),
            ));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(RequestError::invalid(
                format!(
                    "'inputs' holds {} inputs; at most {MAX_INPUTS} are allowed.",
                    inputs.len()
                ),
                Some("inputs"),
            ));
        }
        Ok(Self {
            inputs,
            truncation,
            truncate_hint,
        })
    }

    /// Tokenizes the inputs: their ids and the total token count, refusing over-long inputs
    /// when truncation is off and requests over `max_tokens`.
    pub fn tokenize(&self, model: &Model, max_tokens: usize) -> Result<(Vec<Vec<u32>>, usize), RequestError> {
        let tokenizer_error = |e: openembed_engine::Error| {
            RequestError::invalid(format!("The input could not be tokenized: {e}"), Some("inputs"))
        };
        let texts: Vec<&str> = self
            .inputs
            .iter()
            .filter_map(|i| match i {
                ClassifyInput::Text(t) => Some(t.as_str()),
                ClassifyInput::Pair(..) => None,
            })
            .collect();
        let mut texts = model
            .tokenize(&texts, None, self.truncation)
            .map_err(tokenizer_error)?
            .into_iter();
        let toks = self
            .inputs
            .iter()
            .map(|input| match input {
                ClassifyInput::Text(_) => texts
                    .next()
                    .ok_or_else(|| RequestError::internal("tokenization lost an input")),
                ClassifyInput::Pair(a, b) => model
                    .tokenizer()
                    .tokenize_pair(a, b, self.truncation, None)
                    .map_err(tokenizer_error),
            })
            .collect::<Result<Vec<_>, _>>()?;
        checked_ids(toks, max_tokens, "inputs", |i, tokens| {
            format!(
                "Input {i} is {tokens} tokens, more than the model's limit of {}; {}",
                model.info().max_input_tokens,
                self.truncate_hint
            )
        })
    }
}

impl ServedModel {
    /// The model's labels, or the error a front end answers for a model that does not classify.
    pub fn classifier(&self) -> Result<&ClassifierInfo, RequestError> {
        let info = self.model.info();
        info.classifier.as_ref().ok_or_else(|| {
            RequestError::invalid(
                format!(
                    "The model '{}' is {} model, not a classifier; it has no labels to predict.",
                    self.name,
                    match info.kind() {
                        openembed_engine::ModelKind::Reranker => "a reranker",
                        _ => "an embedding",
                    }
                ),
                Some("model"),
            )
        })
    }

    /// Every label with its score for each input (`logits`: one row per input, in order), best
    /// first; `function` replaces the model's default (softmax, sigmoid, or none for the raw
    /// logits).
    pub fn labels(
        &self,
        logits: &[Vec<f32>],
        function: Option<LabelFunction>,
    ) -> Result<Vec<Vec<(String, f32)>>, RequestError> {
        let info = self.classifier()?;
        Ok(logits
            .iter()
            .map(|l| {
                info.ranked(l, function)
                    .into_iter()
                    .map(|(label, score)| (info.labels.get(label).cloned().unwrap_or_default(), score))
                    .collect()
            })
            .collect())
    }

    /// Tokenizes, queues and labels a classification request, blocking the thread (offline
    /// front ends).
    pub fn classify_blocking(
        &self,
        job: &ClassifyJob,
        function: Option<LabelFunction>,
        max_tokens: usize,
    ) -> Result<Vec<Vec<(String, f32)>>, RequestError> {
        self.classifier()?;
        let (ids, _) = job.tokenize(&self.model, max_tokens)?;
        let logits = self.scheduler.submit(ids, None)?.wait_blocking()?;
        self.labels(&logits.vectors, function)
    }
}
