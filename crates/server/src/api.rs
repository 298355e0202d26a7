//! Request decoding and validation for `POST /v1/embeddings`, and the response types.
//!
//! The body is decoded straight from its bytes into typed inputs (strings or token-id arrays),
//! never through a generic JSON tree, so a request costs at most a few times its body in memory;
//! every shape error gets OpenAI's exact wording and `param`. [`EmbeddingsRequest`] is also the
//! request schema of `/openapi.json`.

use crate::error::ApiError;
use openembed_pipeline::{Codes, EmbeddingType, ServedModel};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

/// Most inputs in one request.
pub const MAX_INPUTS: usize = 2048;

pub use openembed_pipeline::Input;

/// The inputs of a request, in order: the wire field `input`, which is one text, up to 2,048
/// texts, one input as token ids, or up to 2,048 inputs as token ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inputs(pub Vec<Input>);

impl utoipa::PartialSchema for Inputs {
    fn schema() -> RefOr<Schema> {
        let text = serde_json::json!({"type": "string", "minLength": 1});
        let id = serde_json::json!({"type": "integer", "minimum": 0});
        let doc = serde_json::json!({
            "description": "One text, up to 2,048 texts, one input as token ids, or up to 2,048 inputs as token ids \
                            (tiktoken cl100k_base ids unless the model is served otherwise).",
            "oneOf": [
                text,
                {"type": "array", "items": text, "minItems": 1, "maxItems": MAX_INPUTS},
                {"type": "array", "items": id, "minItems": 1},
                {"type": "array", "items": {"type": "array", "items": id, "minItems": 1}, "minItems": 1, "maxItems": MAX_INPUTS},
            ]
        });
        serde_json::from_value(doc).unwrap_or_else(|_| RefOr::T(Schema::default()))
    }
}

impl ToSchema for Inputs {}

/// Output encoding of the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON numbers.
    #[default]
    Float,
    /// Little-endian f32 bytes, base64.
    Base64,
}

/// A validated `POST /v1/embeddings` body. Decoded by [`decode`]; `/openapi.json` documents it
/// from this type.
#[derive(Debug, Clone, PartialEq, ToSchema)]
pub struct EmbeddingsRequest {
    /// A served model name or alias.
    pub model: String,
    /// The text(s) or token ids to embed.
    pub input: Inputs,
    /// `float` (default) or `base64` (little-endian float32 bytes).
    #[schema(required = false, nullable)]
    pub encoding_format: EncodingFormat,
    /// Cut vectors to this many dimensions (L2-normalized again when the model normalizes).
    #[schema(minimum = 1)]
    pub dimensions: Option<usize>,
    /// End-user id; accepted, never echoed.
    pub user: Option<String>,
    /// Extension: cut over-long inputs at the model limit instead of refusing them.
    pub truncate: Option<bool>,
    /// Extension: a prompt name from the model's sentence-transformers config (e.g. `query`).
    pub prompt_name: Option<String>,
    /// Extension: the task adapter of models that have them (jina-embeddings-v3:
    /// `retrieval.query`, `retrieval.passage`, `text-matching`, …); its instruction is put in
    /// front of every text.
    pub task: Option<String>,
    /// Extension: compressed vectors: `int8`, `uint8` (one calibrated scale per model),
    /// `binary`, `ubinary` (sign bits packed 8 per byte) or `float` (the default). As JSON
    /// integers, or with `encoding_format: base64` their bytes in base64.
    #[schema(value_type = Option<String>)]
    pub embedding_type: Option<EmbeddingType>,
}

impl EmbeddingsRequest {
    /// The inputs in order.
    pub fn inputs(&self) -> &[Input] {
        &self.input.0
    }

    /// Bytes the decoded inputs hold in memory.
    pub fn heap_bytes(&self) -> usize {
        self.input.0.iter().map(Input::heap_bytes).sum()
    }

    /// The pipeline request this body states (its inputs apart: see [`Self::inputs`]).
    pub fn to_request(&self) -> openembed_pipeline::EmbedRequest {
        openembed_pipeline::EmbedRequest {
            model: self.model.clone(),
            prompt_name: self.prompt_name.clone(),
            prompt: None,
            task: self.task.clone(),
            truncate: self.truncate,
            dimensions: self.dimensions,
            normalize: None,
            token_ids: None,
            ..Default::default()
        }
    }
}

/// OpenAI's first sentences (clients match on them), then where the JSON broke instead of
/// OpenAI's help-center pointer.
fn malformed_json(e: &serde_json::Error) -> String {
    format!(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP \
         library correctly. The API expects a JSON payload, but what was sent was not valid JSON: {e}. Check \
         the body near line {}, column {}.)",
        e.line(),
        e.column()
    )
}

/// Whether a `Content-Type` value is JSON (`application/json`, `application/*+json`).
pub fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else { return false };
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Decodes a request body: 415 unless it is JSON, 400 for malformed JSON or a bad shape.
pub fn decode(content_type: Option<&str>, body: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    if !is_json(content_type) {
        return Err(unsupported_media_type());
    }
    decode_json(body)
}

/// 415: the body is not JSON.
pub fn unsupported_media_type() -> ApiError {
    ApiError::with_status(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Invalid Content-Type header: expected 'application/json'. The request body must be a JSON object.",
    )
}

/// Decodes a JSON body (the content type already checked): 400 for malformed JSON or a bad shape.
pub fn decode_json(body: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = RawBody::deserialize(&mut de)
        .and_then(|raw| de.end().map(|()| raw))
        .map_err(|e| ApiError::invalid(malformed_json(&e), None))?;
    raw.validate()
}

const FIELDS: &[&str] = &[
    "model",
    "input",
    "encoding_format",
    "dimensions",
    "user",
    "truncate",
    "prompt_name",
    "task",
    "embedding_type",
];

/// Compound values of the small fields larger than this are not parsed (only their type matters).
const SMALL_FIELD_BYTES: usize = 4096;

/// The body as read: the small fields as JSON values, `input` already typed (or its error).
#[derive(Default)]
struct RawBody {
    is_object: bool,
    unknown: Option<String>,
    fields: Map<String, Value>,
    input: Option<Result<Vec<Input>, ApiError>>,
}

impl<'de> Deserialize<'de> for RawBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = RawBody;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBody, A::Error> {
        let mut body = RawBody {
            is_object: true,
            ..RawBody::default()
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "input" {
                body.input = Some(map.next_value_seed(InputSeed)?);
            } else if FIELDS.contains(&key.as_ref()) {
                let raw: &'de RawValue = map.next_value()?;
                // A value the raw capture let through but JSON cannot hold (e.g. 1e400) makes
                // the body malformed, as a full parse would.
                let value = small_value(raw).map_err(de::Error::custom)?;
                body.fields.insert(key.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
                if body.unknown.is_none() {
                    body.unknown = Some(key.into_owned());
                }
            }
        }
        Ok(body)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawBody, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawBody::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawBody, E> {
        Ok(RawBody::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawBody, E> {
        Ok(RawBody::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawBody, E> {
        Ok(RawBody::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawBody, E> {
        Ok(RawBody::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawBody, E> {
        Ok(RawBody::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawBody, E> {
        Ok(RawBody::default())
    }
}

/// A small field's value as JSON; a large array or object is kept only as its kind.
fn small_value(raw: &RawValue) -> Result<Value, serde_json::Error> {
    let text = raw.get();
    if text.len() > SMALL_FIELD_BYTES && (text.starts_with('[') || text.starts_with('{')) {
        return Ok(if text.starts_with('[') {
            Value::Array(Vec::new())
        } else {
            Value::Object(Map::new())
        });
    }
    serde_json::from_str(text)
}

impl RawBody {
    /// Checks the fields in a fixed order, so the first error reported does not depend on the
    /// order of keys in the body.
    fn validate(self) -> Result<EmbeddingsRequest, ApiError> {
        if !self.is_object {
            return Err(ApiError::invalid(
                "'$' is invalid. The body must be a JSON object such as {\"model\": \"NAME\", \"input\": \"text\"}.",
                None,
            ));
        }
        if let Some(name) = self.unknown {
            return Err(ApiError::invalid(
                format!("Unrecognized request argument supplied: {name}"),
                None,
            ));
        }
        let obj = &self.fields;
        let model = match obj.get("model") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(ApiError::invalid("you must provide a model parameter", None))
            }
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "model",
                    "a string naming a served model (GET /v1/models lists them)",
                ))
            }
        };
        let input = match self.input {
            None => return Err(missing_input()),
            Some(result) => result?,
        };
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
            Some(v) => match integer_value(v).and_then(|n| u64::try_from(n).ok()) {
                Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => {
                    return Err(ApiError::invalid(
                        format!("Invalid value for 'dimensions' = {v}. Must be an integer greater than or equal to 1."),
                        Some("dimensions"),
                    ))
                }
            },
        };
        let user = match obj.get("user") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::invalid_field("user", "a string")),
        };
        let truncate = match obj.get("truncate") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(ApiError::invalid_field("truncate", "true or false")),
        };
        let prompt_name = match obj.get("prompt_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "prompt_name",
                    "a string naming one of the model's prompts",
                ))
            }
        };
        let task = match obj.get("task") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "task",
                    "a string naming one of the model's tasks",
                ))
            }
        };
        let embedding_type = match obj.get("embedding_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                EmbeddingType::from_name(s)
                    .ok_or_else(|| ApiError::from(EmbeddingType::unknown(s, "embedding_type")))?,
            ),
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "embedding_type",
                    "one of float, int8, uint8, binary, ubinary",
                ))
            }
        };
        Ok(EmbeddingsRequest {
            embedding_type,
            model,
            input: Inputs(input),
            encoding_format,
            dimensions,
            user,
            truncate,
            prompt_name,
            task,
        })
    }
}

/// A JSON integer, as JSON Schema counts them: `5` and also `5.0` (a number without a fraction).
fn integer_value(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Some(i),
            (None, Some(_), _) => None,
            (None, None, Some(f)) => float_integer(f),
            _ => None,
        },
        _ => None,
    }
}

/// An optional non-negative integer as JSON Schema counts them: `5` and also `5.0`.
pub(crate) fn json_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        // Counts past usize (JSON allows them; schema fuzzers send them) are clamped, not refused.
        Some(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(usize::try_from(u).unwrap_or(usize::MAX))),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 => Ok(Some(f.min(usize::MAX as f64) as usize)),
            _ => Err(D::Error::custom(format!("expected a non-negative integer, found {n}"))),
        },
    }
}

/// An integer as JSON Schema counts them (`5` and also `5.0`), e.g. a token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(value_type = i64)]
pub struct JsonInt(pub i64);

impl<'de> Deserialize<'de> for JsonInt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let n = serde_json::Number::deserialize(d)?;
        n.as_i64()
            .or_else(|| n.as_f64().and_then(float_integer))
            .map(JsonInt)
            .ok_or_else(|| D::Error::custom(format!("expected an integer, found {n}")))
    }
}

/// A float that is a whole number in i64's range.
fn float_integer(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
}

fn missing_input() -> ApiError {
    ApiError::invalid("Missing required parameter: 'input'.", Some("input"))
}

/// What `input` may be, said after every shape error.
const INPUT_SHAPES: &str = "input must be a string, an array of strings, an array of integer token ids, \
                            or an array of arrays of integer token ids";

/// `'$.input' is invalid.` (OpenAI's first sentence, which clients match on) and what is wrong.
fn bad_input(detail: impl fmt::Display) -> ApiError {
    ApiError::invalid(format!("'$.input' is invalid. {detail}."), Some("input"))
}

fn empty_string(index: Option<usize>) -> ApiError {
    match index {
        Some(i) => bad_input(format_args!(
            "input[{i}] is an empty string: input strings must not be empty"
        )),
        None => bad_input("It is an empty string: input strings must not be empty"),
    }
}

/// Decodes `input` as it streams by. Shape errors are returned as values (the rest of the value
/// is skipped), so only broken JSON fails the deserializer.
struct InputSeed;

impl<'de> DeserializeSeed<'de> for InputSeed {
    type Value = Result<Vec<Input>, ApiError>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(InputVisitor)
    }
}

struct InputVisitor;

/// What the first element of an `input` array made it.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Texts,
    Tokens,
    TokenLists,
}

impl Shape {
    fn of(element: &Element) -> Option<Shape> {
        match element {
            Element::Text(_) => Some(Shape::Texts),
            Element::Number(_) => Some(Shape::Tokens),
            Element::Ids(_) => Some(Shape::TokenLists),
            Element::Other(_) => None,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Shape::Texts => "strings",
            Shape::Tokens => "token ids",
            Shape::TokenLists => "arrays of token ids",
        }
    }
}

/// `input` that is not a string or an array.
fn not_an_input(kind: &str) -> ApiError {
    bad_input(format_args!("It is {kind}; {INPUT_SHAPES}"))
}

impl<'de> Visitor<'de> for InputVisitor {
    type Value = Result<Vec<Input>, ApiError>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(if s.is_empty() {
            Err(empty_string(None))
        } else {
            Ok(vec![Input::Text(s.to_owned())])
        })
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(if s.is_empty() {
            Err(empty_string(None))
        } else {
            Ok(vec![Input::Text(s)])
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err(missing_input()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(not_an_input("a boolean")))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(not_an_input("a number")))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(not_an_input("a number")))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(not_an_input("a number")))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err(not_an_input("an object")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = 0usize;
        let mut shape = None;
        let mut error: Option<ApiError> = None;
        let mut inputs = Vec::new();
        let mut ids = Vec::new();
        loop {
            // Past the first error or the item limit, the rest is only counted.
            if error.is_some() || items >= MAX_INPUTS {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                items += 1;
                continue;
            }
            let Some(element) = seq.next_element_seed(ElementSeed)? else {
                break;
            };
            let index = items;
            items += 1;
            let Some(expected) = shape.or_else(|| Shape::of(&element)) else {
                error = Some(bad_input(format_args!(
                    "input[{index}] is {}; {INPUT_SHAPES}",
                    element.kind()
                )));
                continue;
            };
            shape = Some(expected);
            match (expected, element) {
                (Shape::Texts, Element::Text(s)) if s.is_empty() => error = Some(empty_string(Some(index))),
                (Shape::Texts, Element::Text(s)) => inputs.push(Input::Text(s)),
                (Shape::Tokens, Element::Number(Ok(id))) => ids.push(id),
                (Shape::Tokens, Element::Number(Err(n))) => {
                    error = Some(bad_input(format_args!(
                        "input[{index}] is {n}, not a token id: token ids are integers"
                    )))
                }
                (Shape::TokenLists, Element::Ids(Ok(list))) if list.is_empty() => {
                    error = Some(bad_input(format_args!(
                        "input[{index}] is an empty array: an input of token ids needs at least one id"
                    )))
                }
                (Shape::TokenLists, Element::Ids(Ok(list))) => inputs.push(Input::Tokens(list)),
                (Shape::TokenLists, Element::Ids(Err((at, kind)))) => {
                    error = Some(bad_input(format_args!(
                        "input[{index}][{at}] is {kind}: arrays of token ids hold only integers"
                    )))
                }
                (expected, other) => {
                    error = Some(bad_input(format_args!(
                        "input[{index}] is {}, but input[0] made this an array of {}: one request holds only \
                         strings, only token ids, or only arrays of token ids",
                        other.kind(),
                        expected.plural()
                    )))
                }
            }
        }
        if items == 0 {
            return Ok(Err(ApiError::invalid(
                "'$.input' is invalid: the input array must not be empty.",
                Some("input"),
            )));
        }
        if items > MAX_INPUTS {
            return Ok(Err(ApiError::invalid(
                format!("'$.input' is too long: {items} items were given, at most {MAX_INPUTS} are allowed."),
                Some("input"),
            )));
        }
        if let Some(error) = error {
            return Ok(Err(error));
        }
        if shape == Some(Shape::Tokens) {
            inputs.push(Input::Tokens(ids));
        }
        Ok(Ok(inputs))
    }
}

/// One element of an `input` array.
enum Element {
    Text(String),
    /// A number: `Ok` when it is an integer, else the number as written.
    Number(Result<i64, String>),
    /// An array: `Ok` when every element is an integer, else the first other element's index
    /// and kind.
    Ids(Result<Vec<i64>, (usize, String)>),
    /// Anything else, by kind (`a boolean`, `null`, `an object`).
    Other(&'static str),
}

impl Element {
    /// The element's kind in words, for messages.
    fn kind(&self) -> String {
        match self {
            Element::Text(s) if s.is_empty() => "an empty string".into(),
            Element::Text(_) => "a string".into(),
            Element::Number(Ok(n)) => format!("the number {n}"),
            Element::Number(Err(n)) => format!("the number {n}"),
            Element::Ids(_) => "an array".into(),
            Element::Other(kind) => (*kind).into(),
        }
    }
}

struct ElementSeed;

impl<'de> DeserializeSeed<'de> for ElementSeed {
    type Value = Element;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Element, D::Error> {
        deserializer.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, an integer or an array of integers")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Element, E> {
        Ok(Element::Text(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Element, E> {
        Ok(Element::Text(s))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Element, E> {
        Ok(Element::Number(Ok(n)))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Element, E> {
        Ok(Element::Number(i64::try_from(n).map_err(|_| n.to_string())))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Element, E> {
        Ok(Element::Number(float_integer(f).ok_or_else(|| f.to_string())))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Element, E> {
        Ok(Element::Other("a boolean"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Element, E> {
        Ok(Element::Other("null"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Element, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Element::Other("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
        let mut ids = Ok(Vec::new());
        let mut at = 0usize;
        while let Some(element) = seq.next_element_seed(IdSeed)? {
            match (&mut ids, element) {
                (Ok(list), Ok(id)) => list.push(id),
                (Ok(_), Err(kind)) => ids = Err((at, kind)),
                _ => {}
            }
            at += 1;
        }
        Ok(Element::Ids(ids))
    }
}

/// One token id inside a nested array: the id, or the kind of what stood there instead (the
/// rest of a nested value is skipped).
struct IdSeed;

impl<'de> DeserializeSeed<'de> for IdSeed {
    type Value = Result<i64, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Ok(match ElementSeed.deserialize(deserializer)? {
            Element::Number(Ok(n)) => Ok(n),
            other => Err(other.kind()),
        })
    }
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
    /// Integer codes (`embedding_type` int8, uint8, binary, ubinary).
    Codes(Vec<i16>),
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

impl EmbeddingsResponse {
    /// The body for `codes` (one vector per input, in input order), as the client addressed
    /// `model`.
    pub fn new(model: &str, codes: Codes, tokens: usize, encoding: EncodingFormat) -> Self {
        let values: Vec<EmbeddingValue> = match codes {
            Codes::Float(v) => v.into_iter().map(|v| encode(v, encoding)).collect(),
            Codes::Signed(v) => v
                .into_iter()
                .map(|c| {
                    encode_codes(
                        c.iter().map(|&x| x as u8).collect(),
                        c.into_iter().map(i16::from).collect(),
                        encoding,
                    )
                })
                .collect(),
            Codes::Unsigned(v) => v
                .into_iter()
                .map(|c| {
                    let ints = c.iter().map(|&x| i16::from(x)).collect();
                    encode_codes(c, ints, encoding)
                })
                .collect(),
        };
        let data = values
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingObject {
                object: "embedding",
                index,
                embedding,
            })
            .collect();
        Self {
            object: "list",
            data,
            model: model.to_string(),
            usage: Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        }
    }
}

/// Integer codes as JSON numbers, or their bytes in base64.
fn encode_codes(bytes: Vec<u8>, ints: Vec<i16>, encoding: EncodingFormat) -> EmbeddingValue {
    use base64::Engine;
    match encoding {
        EncodingFormat::Float => EmbeddingValue::Codes(ints),
        EncodingFormat::Base64 => EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// What of an embeddings request its answer needs (kept while its inputs run, without them).
#[derive(Debug, Clone)]
pub struct ResponseSpec {
    /// The model as the client addressed it.
    pub model: String,
    /// `float` or `base64`.
    pub encoding: EncodingFormat,
    /// Float or compressed codes.
    pub embedding_type: EmbeddingType,
    /// The pipeline request (its `dimensions` and normalization pick the codes' scale).
    pub request: openembed_pipeline::EmbedRequest,
}

impl EmbeddingsRequest {
    /// What the answer to this request needs.
    pub fn response_spec(&self) -> ResponseSpec {
        ResponseSpec {
            model: self.model.clone(),
            encoding: self.encoding_format,
            embedding_type: self.embedding_type.unwrap_or(EmbeddingType::Float),
            request: self.to_request(),
        }
    }
}

impl ResponseSpec {
    /// The body for a finished request's vectors (blocking the first time a model's `int8`
    /// scale is calibrated).
    pub fn respond(
        &self,
        served: &ServedModel,
        vectors: Vec<Vec<f32>>,
        tokens: usize,
    ) -> Result<EmbeddingsResponse, ApiError> {
        let codes = served.codes(self.embedding_type, &self.request, vectors)?;
        Ok(EmbeddingsResponse::new(&self.model, codes, tokens, self.encoding))
    }
}

/// The errors every POST route may answer, each with OpenAI's error body (the OpenAPI document's
/// responses of those routes besides their 200).
#[derive(utoipa::IntoResponses)]
pub enum PostErrors {
    /// Invalid request (a field, an input, a limit; or the wrong kind of model for the route)
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// Missing or wrong API key
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Unknown model
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Body over the limit
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Body is not JSON
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// Queue full; see Retry-After
    #[response(status = 429)]
    Busy(ErrorBody),
    /// Internal failure
    #[response(status = 500)]
    Internal(ErrorBody),
    /// Shutting down; see Retry-After
    #[response(status = 503)]
    Unavailable(ErrorBody),
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
    /// Extension: precision of the dense layers: `float32`, `bfloat16` or `int8`.
    pub dtype: String,
    /// Extension: the dense-layer kernel this dtype runs on this CPU: `amx-int8`, `amx-bf16`
    /// (Intel AMX tiles), `avx512-vnni`, `avx512-bf16`, `avx-vnni`, `avx512`, `avx2` or
    /// `portable`.
    pub kernels: String,
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
    /// Extension: what the model serves: `embeddings` (POST /v1/embeddings), `rerank`
    /// (POST /v1/rerank), `classify` (POST /predict), `embed_sparse` (POST /embed_sparse) or
    /// `embed_all` (POST /embed_all: a late-interaction model's token vectors).
    pub serves: &'static str,
    /// Extension: the outputs the model gives: `dense` (a vector per input), `sparse` (POST
    /// /embed_sparse), `multi_vector` (POST /embed_all), `scores` (a reranker), `labels` (a
    /// classifier).
    pub outputs: Vec<&'static str>,
    /// Extension: width of each token vector of a model with a `multi_vector` output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_vector_dimensions: Option<usize>,
    /// Extension: task adapters usable as `task` (empty for models without tasks).
    pub tasks: Vec<String>,
    /// Extension: the task used when a request names none (`--default-task`).
    pub default_task: Option<String>,
    /// Extension: vector lengths the model was trained to be cut to (`dimensions`), when its
    /// config lists them (Matryoshka); any length up to `dimensions` is accepted.
    pub matryoshka_dimensions: Vec<usize>,
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
    match format {
        EncodingFormat::Float => EmbeddingValue::Float(v),
        EncodingFormat::Base64 => EmbeddingValue::Base64(base64_floats(&v)),
    }
}

/// A vector as base64 of its little-endian float32 bytes.
pub fn base64_floats(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> Result<EmbeddingsRequest, ApiError> {
        decode_json(&serde_json::to_vec(&v).unwrap())
    }

    fn err(v: Value) -> ApiError {
        req(v).unwrap_err()
    }

    #[test]
    fn every_input_shape() {
        let r = req(json!({"model": "m", "input": "hi"})).unwrap();
        assert_eq!(r.input.0, vec![Input::Text("hi".into())]);
        let r = req(json!({"model": "m", "input": ["a", "b"]})).unwrap();
        assert_eq!(r.input.0.len(), 2);
        let r = req(json!({"model": "m", "input": [1, 2, 3]})).unwrap();
        assert_eq!(r.input.0, vec![Input::Tokens(vec![1, 2, 3])]);
        let r = req(
            json!({"model": "m", "input": [[1], [2, 3]], "encoding_format": "base64", "dimensions": 4, "user": "u"}),
        )
        .unwrap();
        assert_eq!(r.input.0.len(), 2);
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
    fn whole_floats_read_from_text_are_exact_integers() {
        // JSON Schema counts `2251799813685247.0` as an integer; the text must parse to exactly
        // that value (serde_json's default float parser may land one unit off up here).
        #[derive(Deserialize)]
        struct Count {
            #[serde(deserialize_with = "json_count")]
            n: Option<usize>,
        }
        for n in [256u64, (1 << 51) - 1, (1 << 52) + 1, (1 << 53) - 1, 1 << 53] {
            let text = format!("{{\"n\": {n}.0}}");
            let read: Count = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(read.n, Some(n as usize), "{text}");
        }
    }

    #[test]
    fn counts_and_order_of_checks_are_kept() {
        let many: Vec<u32> = (0..3000).collect();
        let e = err(json!({"model": "m", "input": many}));
        assert_eq!(
            e.message,
            "'$.input' is too long: 3000 items were given, at most 2048 are allowed."
        );
        // The item limit is reported before a bad element, wherever it is.
        let mut mixed: Vec<Value> = (0..2100).map(|_| json!("a")).collect();
        mixed[3] = json!(1);
        assert!(err(json!({"model": "m", "input": mixed}))
            .message
            .contains("2100 items"));
        // Unknown fields first, then model, then input, whatever the key order.
        let e = err(json!({"input": 5, "zzz": 1, "model": "m"}));
        assert_eq!(e.message, "Unrecognized request argument supplied: zzz");
        let e = decode_json(br#"{"input": 5, "model": 7}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        assert_eq!(
            err(json!({"model": "m", "input": [[1, 2.0], [3, "x"]]}))
                .param
                .as_deref(),
            Some("input")
        );
        let r = req(json!({"model": "m", "input": [[1, 2.0, -0.0]]})).unwrap();
        assert_eq!(r.input.0, vec![Input::Tokens(vec![1, 2, 0])]);
        let e = decode_json(br#"{"model": "m", "input": "x", "dimensions": [1, 2]}"#).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid value for 'dimensions' = [1,2]. Must be an integer greater than or equal to 1."
        );
        let malformed = decode_json(br#"{"model": "m", "input": ["a", 1, {"x": [}]}"#)
            .unwrap_err()
            .message;
        assert!(malformed.starts_with("We could not parse the JSON body"), "{malformed}");
        assert!(
            malformed.contains("line 1, column") && !malformed.contains("help.openai.com"),
            "{malformed}"
        );
        assert_eq!(decode_json(b"[1, 2]").unwrap_err().status, 400);
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
