//! Turns a planned request's inputs into model token ids, enforcing the over-limit rule and the
//! per-request token limit. CPU work: the server runs it on a blocking thread.

use crate::error::RequestError;
use crate::plan::{Input, Plan};
use crate::token_ids::TokenIds;
use openembed_engine::{Model, Truncation};
use std::fmt;

/// Token ids ready for the scheduler, and their total.
#[derive(Debug)]
pub struct Prepared {
    /// The id lists to embed: one per input, or one per window in the long-input mode.
    pub ids: Vec<Vec<u32>>,
    /// Tokens fed to the model (usage): every token of every window.
    pub tokens: usize,
    /// How the id lists map back to inputs.
    pub layout: WindowLayout,
}

impl Prepared {
    /// The same ids as requests of at most `inputs` inputs each, in order.
    pub fn split(self, inputs: usize) -> Vec<Prepared> {
        let inputs = inputs.max(1);
        let mut ids = self.ids.into_iter();
        let mut lengths = self.layout.lengths.into_iter();
        self.layout
            .per_input
            .chunks(inputs)
            .map(|per_input| {
                let windows: usize = per_input.iter().sum();
                let ids: Vec<Vec<u32>> = ids.by_ref().take(windows).collect();
                let lengths: Vec<usize> = lengths.by_ref().take(windows).collect();
                Prepared {
                    tokens: lengths.iter().sum(),
                    ids,
                    layout: WindowLayout {
                        per_input: per_input.to_vec(),
                        lengths,
                    },
                }
            })
            .collect()
    }
}

/// Which embedded id lists (windows) belong to which input.
#[derive(Debug, Clone)]
pub struct WindowLayout {
    per_input: Vec<usize>,
    lengths: Vec<usize>,
}

impl WindowLayout {
    /// Number of inputs (vectors answered).
    pub fn inputs(&self) -> usize {
        self.per_input.len()
    }

    /// Tokens of each input (all its windows).
    pub fn input_tokens(&self) -> Vec<usize> {
        let mut lengths = self.lengths.iter();
        self.per_input.iter().map(|&n| lengths.by_ref().take(n).sum()).collect()
    }

    /// One vector per input: an input's only vector as is, or the token-weighted mean of its
    /// windows' vectors, L2-normalized.
    pub fn combine(&self, vectors: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
        if self.per_input.iter().all(|&n| n == 1) {
            return vectors;
        }
        let mut vectors = vectors.into_iter();
        let mut lengths = self.lengths.iter();
        self.per_input
            .iter()
            .map(|&n| {
                let mut sum: Vec<f32> = Vec::new();
                for (v, &len) in vectors.by_ref().take(n).zip(lengths.by_ref()) {
                    if n == 1 {
                        return v;
                    }
                    if sum.is_empty() {
                        sum = vec![0.0; v.len()];
                    }
                    sum.iter_mut().zip(&v).for_each(|(s, x)| *s += x * len as f32);
                }
                openembed_engine::normalize(&mut sum);
                sum
            })
            .collect()
    }
}

/// The OpenAI message for an input over the model's limit (`counted_all` false: the text was
/// read only until it was surely over, so `tokens` is a lower bound), ending with how this
/// front end turns truncation on.
fn too_long(limit: usize, tokens: usize, counted_all: bool, hint: &str) -> RequestError {
    let tokens = if counted_all {
        tokens.to_string()
    } else {
        format!("more than {}", tokens - 1)
    };
    RequestError::invalid(
        format!(
            "This model's maximum context length is {limit} tokens, however you requested {tokens} tokens \
             ({tokens} in your prompt; 0 for the completion). Please reduce your prompt; or completion length. \
             {hint}"
        ),
        Some("input"),
    )
}

/// Texts tokenized at a time.
const TOKENIZE_CHUNK: usize = 64;

/// The error for a request over `--max-request-tokens` (`max`), about the field `param`.
pub fn too_many_tokens(requested: impl fmt::Display, max: usize, param: &str) -> RequestError {
    RequestError::invalid(
        format!("Requested {requested} tokens, max {max} tokens per request"),
        Some(param),
    )
    .code("max_tokens_per_request")
}

/// Tokenizes texts (with the plan's prompt in front) and token-id inputs (decoded to text when
/// they are tiktoken ids, checked against the vocabulary when native), then applies the plan's
/// truncation and the per-request token limit `max_tokens`.
pub fn prepare(
    model: &Model,
    inputs: &[Input],
    token_ids: TokenIds,
    plan: &Plan,
    max_tokens: usize,
) -> Result<Prepared, RequestError> {
    let (prompt, truncation, windows, hint) = (
        plan.prompt.as_deref(),
        plan.truncation,
        plan.windows,
        plan.truncate_hint,
    );
    let decoded: Vec<Input>;
    let inputs = if token_ids == TokenIds::Native || !inputs.iter().any(|i| matches!(i, Input::Tokens(_))) {
        inputs
    } else {
        decoded = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| match input {
                Input::Text(t) => Ok(Input::Text(t.clone())),
                Input::Tokens(ids) => match token_ids.decode(index, ids) {
                    Some(Ok(text)) => Ok(Input::Text(text)),
                    Some(Err(message)) => Err(RequestError::invalid(
                        format!("Invalid token id in '$.input': {message}."),
                        Some("input"),
                    )),
                    None => Ok(input.clone()),
                },
            })
            .collect::<Result<_, _>>()?;
        &decoded
    };
    let limit = model.info().max_input_tokens.max(1);
    let texts: Vec<&str> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Text(t) => Some(t.as_str()),
            Input::Tokens(_) => None,
        })
        .collect();
    let tokenizer_error = |e: openembed_engine::Error| {
        RequestError::invalid(format!("The input could not be tokenized: {e}"), Some("input"))
    };
    // Each text as its windows: one, unless the long-input mode splits it.
    let mut tokenized: std::vec::IntoIter<Vec<Vec<u32>>> = if texts.is_empty() {
        Vec::new()
    } else if let Some(overlap) = windows {
        model
            .tokenize_windows(&texts, prompt, overlap)
            .map_err(tokenizer_error)?
    } else {
        // In chunks, so a request that fails a limit stops early and tokenizer memory stays small.
        let mut out = Vec::with_capacity(texts.len());
        let mut running = 0;
        for chunk in texts.chunks(TOKENIZE_CHUNK) {
            for t in model
                .tokenize_side(chunk, prompt, truncation, plan.side)
                .map_err(tokenizer_error)?
            {
                if t.over_limit && truncation == Truncation::None {
                    return Err(too_long(limit, t.untruncated_tokens, t.counted_all, hint));
                }
                running += t.ids.len();
                out.push(vec![t.ids]);
            }
            if running > max_tokens {
                return Err(too_many_tokens(
                    format_args!("more than {}", max_tokens),
                    max_tokens,
                    "input",
                ));
            }
        }
        out
    }
    .into_iter();
    let mut ids = Vec::with_capacity(inputs.len());
    let mut per_input = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let input_windows = match input {
            Input::Text(_) => tokenized
                .next()
                .ok_or_else(|| RequestError::internal("The tokenizer returned fewer inputs than it was given."))?,
            Input::Tokens(raw) => {
                let mut checked = model
                    .check_token_ids(index, raw)
                    .map_err(|e| RequestError::invalid(format!("Invalid token id in '$.input': {e}"), Some("input")))?;
                if checked.len() <= limit {
                    vec![checked]
                } else if let Some(overlap) = windows {
                    let step = limit - overlap.min(limit - 1);
                    (0..checked.len().saturating_sub(overlap.min(limit - 1)))
                        .step_by(step)
                        .map(|start| checked[start..(start + limit).min(checked.len())].to_vec())
                        .collect()
                } else {
                    match truncation {
                        Truncation::None => return Err(too_long(limit, checked.len(), true, hint)),
                        Truncation::End => checked.truncate(limit),
                        Truncation::Start => {
                            checked.drain(..checked.len() - limit);
                        }
                    }
                    vec![checked]
                }
            }
        };
        if input_windows.iter().any(Vec::is_empty) || input_windows.is_empty() {
            return Err(RequestError::invalid(
                format!("'$.input' is invalid: input {index} has no tokens for this model."),
                Some("input"),
            ));
        }
        per_input.push(input_windows.len());
        ids.extend(input_windows);
    }
    let tokens: usize = ids.iter().map(Vec::len).sum();
    if tokens > max_tokens {
        return Err(too_many_tokens(tokens, max_tokens, "input"));
    }
    let layout = WindowLayout {
        per_input,
        lengths: ids.iter().map(Vec::len).collect(),
    };
    Ok(Prepared { ids, tokens, layout })
}
