//! Request decoding and validation for `POST /v1/embeddings`, and the response types.
//!
//! The body is decoded from a `serde_json::Value` by hand so every shape error gets OpenAI's
//! exact wording and `param`.

use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Most inputs in one request.
pub const MAX_INPUTS: usize = 2048;

/// One input as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<i64>),
}

/// Output encoding of the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    /// JSON numbers.
    Float,
    /// Little-endian f32 bytes, base64.
    Base64,
}

/// A validated embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    /// Model name as addressed.
    pub model: String,
    /// Inputs in order.
    pub inputs: Vec<Input>,
    /// Output encoding.
    pub encoding_format: EncodingFormat,
    /// Requested dimensions.
    pub dimensions: Option<usize>,
    /// Extension: truncate over-long inputs.
    pub truncate: Option<bool>,
    /// Extension: named prompt.
    pub prompt_name: Option<String>,
}

const MALFORMED_JSON: &str = "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you \
have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)";

/// Whether a `Content-Type` value is JSON (`application/json`, `application/*+json`).
pub fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else { return false };
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Decodes a request body: 415 unless it is JSON, 400 for malformed JSON or a bad shape.
pub fn decode(content_type: Option<&str>, body: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    if !is_json(content_type) {
        return Err(ApiError::with_status(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Invalid Content-Type header: expected 'application/json'. The request body must be a JSON object.",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::invalid(MALFORMED_JSON, None))?;
    EmbeddingsRequest::from_json(&value)
}

const FIELDS: &[&str] = &[
    "model",
    "input",
    "encoding_format",
    "dimensions",
    "user",
    "truncate",
    "prompt_name",
];

impl EmbeddingsRequest {
    /// Decodes and validates a JSON body.
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        let obj = body.as_object().ok_or_else(|| {
            ApiError::invalid(
                "'$' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                None,
            )
        })?;
        if let Some(name) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::invalid(
                format!("Unrecognized request argument supplied: {name}"),
                None,
            ));
        }
        let model = match obj.get("model") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(ApiError::invalid("you must provide a model parameter", None))
            }
            Some(_) => return Err(ApiError::invalid_field("model")),
        };
        let inputs = parse_input(obj)?;
        let encoding_format = match obj.get("encoding_format") {
            None | Some(Value::Null) => EncodingFormat::Float,
            Some(Value::String(s)) if s == "float" => EncodingFormat::Float,
            Some(Value::String(s)) if s == "base64" => EncodingFormat::Base64,
            Some(other) => {
                let shown = other.as_str().map(str::to_owned).unwrap_or_else(|| other.to_string());
                return Err(ApiError::invalid(
                    format!("Invalid value for 'encoding_format' = {shown}. Supported values: ['float', 'base64']."),
                    Some("encoding_format"),
                ));
            }
        };
        let dimensions = match obj.get("dimensions") {
            None | Some(Value::Null) => None,
            Some(v) => match integer(v).and_then(|n| u64::try_from(n).ok()) {
                Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => {
                    return Err(ApiError::invalid(
                        format!("Invalid value for 'dimensions' = {v}. Must be an integer greater than or equal to 1."),
                        Some("dimensions"),
                    ))
                }
            },
        };
        match obj.get("user") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(ApiError::invalid_field("user")),
        }
        let truncate = match obj.get("truncate") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(ApiError::invalid_field("truncate")),
        };
        let prompt_name = match obj.get("prompt_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::invalid_field("prompt_name")),
        };
        Ok(Self {
            model,
            inputs,
            encoding_format,
            dimensions,
            truncate,
            prompt_name,
        })
    }
}

/// A JSON integer, as JSON Schema counts them: `5` and also `5.0` (a number without a fraction).
fn integer(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.2e18 && v.as_u64().is_none()).then_some(f as i64)
}

fn parse_input(obj: &Map<String, Value>) -> Result<Vec<Input>, ApiError> {
    let bad = || ApiError::invalid_field("input");
    let empty_string = || ApiError::invalid("'$.input' is invalid: input strings must not be empty.", Some("input"));
    let value = match obj.get("input") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("Missing required parameter: 'input'.", Some("input")))
        }
        Some(v) => v,
    };
    let ids = |items: &[Value]| -> Result<Vec<i64>, ApiError> {
        if items.is_empty() {
            return Err(bad());
        }
        items.iter().map(|v| integer(v).ok_or_else(bad)).collect()
    };
    match value {
        Value::String(s) if s.is_empty() => Err(empty_string()),
        Value::String(s) => Ok(vec![Input::Text(s.clone())]),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid(
                    "'$.input' is invalid: the input array must not be empty.",
                    Some("input"),
                ));
            }
            if items.len() > MAX_INPUTS {
                return Err(ApiError::invalid(
                    format!(
                        "'$.input' is too long: {} items were given, at most {MAX_INPUTS} are allowed.",
                        items.len()
                    ),
                    Some("input"),
                ));
            }
            match &items[0] {
                Value::String(_) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) if s.is_empty() => Err(empty_string()),
                        Value::String(s) => Ok(Input::Text(s.clone())),
                        _ => Err(bad()),
                    })
                    .collect(),
                Value::Number(_) => Ok(vec![Input::Tokens(ids(items)?)]),
                Value::Array(_) => items
                    .iter()
                    .map(|v| match v {
                        Value::Array(inner) => ids(inner).map(Input::Tokens),
                        _ => Err(bad()),
                    })
                    .collect(),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// `input`, as documented: one of four shapes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum InputSchema {
    /// One text.
    Text(String),
    /// Up to 2,048 texts.
    Texts(Vec<String>),
    /// One input as token ids (tiktoken `cl100k_base` ids unless the model is served otherwise).
    Tokens(Vec<i64>),
    /// Up to 2,048 inputs as token ids.
    TokenLists(Vec<Vec<i64>>),
}

/// The `POST /v1/embeddings` body (decoded by [`EmbeddingsRequest::from_json`]; this type
/// documents it for OpenAPI).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EmbeddingsRequestSchema {
    /// A served model name or alias.
    pub model: String,
    /// The text(s) or token ids to embed.
    pub input: InputSchema,
    /// `float` (default) or `base64` (little-endian float32 bytes).
    #[schema(pattern = "^(float|base64)$")]
    pub encoding_format: Option<String>,
    /// Cut vectors to this many dimensions and L2-normalize again.
    #[schema(minimum = 1)]
    pub dimensions: Option<u32>,
    /// End-user id; accepted, never echoed.
    pub user: Option<String>,
    /// Extension: cut over-long inputs at the model limit instead of refusing them.
    pub truncate: Option<bool>,
    /// Extension: a prompt name from the model's sentence-transformers config (e.g. `query`).
    pub prompt_name: Option<String>,
}

/// One vector in the response.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingObject {
    /// Always `"embedding"`.
    pub object: &'static str,
    /// Position of the input in the request.
    pub index: usize,
    /// Numbers, or one base64 string.
    pub embedding: EmbeddingValue,
}

/// A vector as floats or base64.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingValue {
    /// JSON numbers.
    Float(Vec<f32>),
    /// Little-endian f32 bytes, base64 with padding.
    Base64(String),
}

/// Token counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens fed to the model.
    pub prompt_tokens: usize,
    /// Same as `prompt_tokens`.
    pub total_tokens: usize,
}

/// The 200 response body.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `"list"`.
    pub object: &'static str,
    /// Vectors in input order.
    pub data: Vec<EmbeddingObject>,
    /// The model name as addressed.
    pub model: String,
    /// Token counts.
    pub usage: Usage,
}

/// The error body: `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The fields of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong.
    pub message: String,
    /// `invalid_request_error`, `requests` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<String>,
}

/// A served model as `GET /v1/models` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    /// The name clients use (a model name or alias).
    pub id: String,
    /// Always `"model"`.
    pub object: &'static str,
    /// Load time, seconds since the epoch.
    pub created: u64,
    /// Always `"openembed"`.
    pub owned_by: String,
    /// Extension: the served model this name refers to.
    pub root: String,
    /// Extension: architecture from `config.json`.
    pub architecture: String,
    /// Extension: vector length.
    pub dimensions: usize,
    /// Extension: most tokens per input, special tokens included.
    pub max_input_tokens: usize,
    /// Extension: pooling (`mean`, `cls`, …).
    pub pooling: String,
    /// Extension: whether vectors are L2-normalized.
    pub normalized: bool,
    /// Extension: prompt names usable as `prompt_name`.
    pub prompts: Vec<String>,
    /// Extension: what token-id inputs mean: `cl100k_base` or `o200k_base` (tiktoken ids, as
    /// at OpenAI) or `native` (the model's own vocabulary).
    pub token_ids: String,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `"list"`.
    pub object: &'static str,
    /// Models and aliases.
    pub data: Vec<ModelObject>,
}

/// Encodes a vector in the requested format.
pub fn encode(v: Vec<f32>, format: EncodingFormat) -> EmbeddingValue {
    use base64::Engine;
    match format {
        EncodingFormat::Float => EmbeddingValue::Float(v),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> ApiError {
        EmbeddingsRequest::from_json(&v).unwrap_err()
    }

    #[test]
    fn every_input_shape() {
        let r = EmbeddingsRequest::from_json(&json!({"model": "m", "input": "hi"})).unwrap();
        assert_eq!(r.inputs, vec![Input::Text("hi".into())]);
        let r = EmbeddingsRequest::from_json(&json!({"model": "m", "input": ["a", "b"]})).unwrap();
        assert_eq!(r.inputs.len(), 2);
        let r = EmbeddingsRequest::from_json(&json!({"model": "m", "input": [1, 2, 3]})).unwrap();
        assert_eq!(r.inputs, vec![Input::Tokens(vec![1, 2, 3])]);
        let r = EmbeddingsRequest::from_json(
            &json!({"model": "m", "input": [[1], [2, 3]], "encoding_format": "base64", "dimensions": 4, "user": "u"}),
        )
        .unwrap();
        assert_eq!(r.inputs.len(), 2);
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
        assert_eq!(r.dimensions, Some(4));
    }

    #[test]
    fn shape_errors_name_the_field() {
        assert_eq!(err(json!({"model": "m", "input": ""})).param.as_deref(), Some("input"));
        assert_eq!(err(json!({"model": "m", "input": []})).param.as_deref(), Some("input"));
        assert_eq!(
            err(json!({"model": "m", "input": [[]]})).param.as_deref(),
            Some("input")
        );
        assert_eq!(
            err(json!({"model": "m", "input": ["a", 1]})).param.as_deref(),
            Some("input")
        );
        assert_eq!(
            err(json!({"model": "m", "input": [1.5]})).param.as_deref(),
            Some("input")
        );
        assert_eq!(err(json!({"model": "m", "input": {}})).param.as_deref(), Some("input"));
        assert_eq!(err(json!({"model": "m"})).param.as_deref(), Some("input"));
        let many: Vec<String> = (0..2049).map(|i| i.to_string()).collect();
        assert_eq!(
            err(json!({"model": "m", "input": many})).param.as_deref(),
            Some("input")
        );
        let e = err(json!({"model": "m", "input": "x", "encoding_format": "md5"}));
        assert_eq!(
            e.message,
            "Invalid value for 'encoding_format' = md5. Supported values: ['float', 'base64']."
        );
        for d in [json!(0), json!(-1), json!(1.5), json!("3"), json!(-0.0)] {
            assert_eq!(
                err(json!({"model": "m", "input": "x", "dimensions": d}))
                    .param
                    .as_deref(),
                Some("dimensions")
            );
        }
        assert_eq!(
            err(json!({"model": "m", "input": "x", "foo": 1})).message,
            "Unrecognized request argument supplied: foo"
        );
        assert_eq!(err(json!({"input": "x"})).message, "you must provide a model parameter");
        assert_eq!(err(json!([1])).status, 400);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        use base64::Engine;
        let EmbeddingValue::Base64(s) = encode(vec![1.0, -2.5], EncodingFormat::Base64) else {
            panic!()
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }
}
