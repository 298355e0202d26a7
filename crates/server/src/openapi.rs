//! `GET /openapi.json`: the API contract generated from the handlers' and types' annotations.

use crate::api::{
    EmbeddingObject, EmbeddingValue, EmbeddingsRequestSchema, EmbeddingsResponse, ErrorBody, ErrorDetail, InputSchema,
    ModelList, ModelObject, Usage,
};
use crate::registry::Registry;
use crate::routes;
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "openembed",
        description = "OpenAI-compatible embeddings API. Token-id inputs mean what they mean at OpenAI: tiktoken \
                       ids (cl100k_base by default), decoded to text and tokenized by the model; a model served \
                       with --token-ids native takes ids of its own vocabulary. GET /v1/models/{id} shows which."
    ),
    paths(
        routes::embeddings,
        routes::list_models,
        routes::get_model,
        routes::health,
        routes::ready,
        routes::metrics,
        routes::openapi
    ),
    components(schemas(
        EmbeddingsRequestSchema,
        InputSchema,
        EmbeddingsResponse,
        EmbeddingObject,
        EmbeddingValue,
        Usage,
        ErrorBody,
        ErrorDetail,
        ModelObject,
        ModelList
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI document as JSON, made exact for the served models: `model` lists their names,
/// token ids are bounded by the smallest vocabulary, `dimensions` by the smallest dimension,
/// `prompt_name` lists the prompts every model has.
pub fn document(registry: &Registry) -> Result<String, String> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).map_err(|e| e.to_string())?;
    let names: Vec<&str> = registry.names().map(|(name, _)| name).collect();
    let infos: Vec<&openembed_engine::ModelInfo> = registry.models().iter().map(|m| m.model.info()).collect();
    let max_id = registry
        .models()
        .iter()
        .map(|m| {
            m.token_ids
                .max_ordinary_id()
                .map_or(m.model.info().vocab_size.saturating_sub(1), |id| id as usize)
        })
        .min()
        .unwrap_or(0);
    let max_dims = infos.iter().map(|i| i.dimension).min().unwrap_or(1);
    let mut prompts: Vec<&String> = infos.first().map(|i| i.prompts.keys().collect()).unwrap_or_default();
    prompts.retain(|p| infos.iter().all(|i| i.prompts.contains_key(*p)));
    let text = json!({"type": "string", "minLength": 1});
    let id = json!({"type": "integer", "minimum": 0, "maximum": max_id});
    let schemas = &mut doc["components"]["schemas"];
    schemas["InputSchema"] = json!({
        "description": "One text, up to 2,048 texts, one input as token ids, or up to 2,048 inputs as token ids.",
        "oneOf": [
            text,
            {"type": "array", "items": text, "minItems": 1, "maxItems": 2048},
            {"type": "array", "items": id, "minItems": 1},
            {"type": "array", "items": {"type": "array", "items": id, "minItems": 1}, "minItems": 1, "maxItems": 2048},
        ]
    });
    let props = &mut schemas["EmbeddingsRequestSchema"]["properties"];
    props["model"]["enum"] = json!(names);
    props["encoding_format"] =
        json!({"description": "`float` (default) or `base64`", "enum": ["float", "base64", null]});
    props["dimensions"] = json!({"description": "Cut vectors to this many dimensions and L2-normalize again.",
                                  "type": ["integer", "null"], "minimum": 1, "maximum": max_dims});
    props["prompt_name"] = json!({"description": "Extension: a prompt name from the model's sentence-transformers config.",
                                   "enum": prompts.into_iter().map(|p| json!(p)).chain([Value::Null]).collect::<Vec<_>>()});
    serde_json::to_string(&doc).map_err(|e| e.to_string())
}
