//! Turns a validated request's inputs into model token ids, enforcing the contract's limits.
//! Runs on a blocking thread: tokenization never happens on an async runtime worker.

use crate::api::Input;
use crate::error::ApiError;
use crate::token_ids::TokenIds;
use openembed_engine::{Model, Truncation};

/// Request limits (server flags).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most tokens in one request, summed after truncation.
    pub max_request_tokens: usize,
    /// Most bytes in a request body.
    pub max_body_bytes: usize,
    /// Time a client has to send the whole body.
    pub body_timeout: std::time::Duration,
}

/// Token ids ready for the scheduler, and their total.
#[derive(Debug)]
pub struct Prepared {
    /// One id list per input.
    pub ids: Vec<Vec<u32>>,
    /// Tokens fed to the model (usage).
    pub tokens: usize,
}

/// The OpenAI message for an input over the model's limit.
fn too_long(limit: usize, tokens: usize) -> ApiError {
    ApiError::invalid(
        format!(
            "This model's maximum context length is {limit} tokens, however you requested {tokens} tokens \
             ({tokens} in your prompt; 0 for the completion). Please reduce your prompt; or completion length."
        ),
        Some("input"),
    )
}

/// Tokenizes texts (with the prompt in front) and token-id inputs (decoded to text when they
/// are tiktoken ids, checked against the vocabulary when native), then applies the truncation
/// rule and the per-request token limit.
pub fn prepare(
    model: &Model,
    inputs: &[Input],
    token_ids: TokenIds,
    prompt: Option<&str>,
    truncation: Truncation,
    limits: &Limits,
) -> Result<Prepared, ApiError> {
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
                    Some(Err(message)) => Err(ApiError::invalid(
                        format!("Invalid token id in '$.input': {message}."),
                        Some("input"),
                    )),
                    None => Ok(input.clone()),
                },
            })
            .collect::<Result<_, _>>()?;
        &decoded
    };
    let limit = model.info().max_input_tokens;
    let texts: Vec<&str> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Text(t) => Some(t.as_str()),
            Input::Tokens(_) => None,
        })
        .collect();
    let mut tokenized = if texts.is_empty() {
        Vec::new()
    } else {
        model
            .tokenizer()
            .tokenize(&texts, prompt, truncation)
            .map_err(|e| ApiError::invalid(format!("The input could not be tokenized: {e}"), Some("input")))?
    }
    .into_iter();
    let mut ids = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let input_ids = match input {
            Input::Text(_) => {
                let t = tokenized
                    .next()
                    .ok_or_else(|| ApiError::internal("The tokenizer returned fewer inputs than it was given."))?;
                if t.over_limit && truncation == Truncation::None {
                    return Err(too_long(limit, t.untruncated_tokens));
                }
                t.ids
            }
            Input::Tokens(raw) => {
                let mut checked = model
                    .check_token_ids(index, raw)
                    .map_err(|e| ApiError::invalid(format!("Invalid token id in '$.input': {e}"), Some("input")))?;
                if checked.len() > limit {
                    match truncation {
                        Truncation::None => return Err(too_long(limit, checked.len())),
                        Truncation::End => checked.truncate(limit),
                        Truncation::Start => {
                            checked.drain(..checked.len() - limit);
                        }
                    }
                }
                checked
            }
        };
        if input_ids.is_empty() {
            return Err(ApiError::invalid(
                format!("'$.input' is invalid: input {index} has no tokens for this model."),
                Some("input"),
            ));
        }
        ids.push(input_ids);
    }
    let tokens: usize = ids.iter().map(Vec::len).sum();
    if tokens > limits.max_request_tokens {
        return Err(ApiError::invalid(
            format!(
                "Requested {tokens} tokens, max {} tokens per request",
                limits.max_request_tokens
            ),
            Some("input"),
        )
        .code("max_tokens_per_request"));
    }
    Ok(Prepared { ids, tokens })
}
