//! `GET /openapi.json`: the API contract generated from the handlers' and types' annotations.

use crate::api::{
    EmbeddingObject, EmbeddingValue, EmbeddingsRequest, EmbeddingsResponse, EncodingFormat, ErrorBody, ErrorDetail,
    Inputs, ModelList, ModelObject, Usage,
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
        routes::rerank,
        routes::tei_rerank,
        routes::list_models,
        routes::get_model,
        routes::health,
        routes::ready,
        routes::metrics,
        routes::openapi
    ),
    components(schemas(
        EmbeddingsRequest,
        Inputs,
        EncodingFormat,
        EmbeddingsResponse,
        EmbeddingObject,
        EmbeddingValue,
        Usage,
        ErrorBody,
        ErrorDetail,
        ModelObject,
        ModelList,
        crate::rerank::RerankRequest,
        crate::rerank::RerankDocument,
        crate::rerank::RerankResponse,
        crate::rerank::RerankResult,
        crate::rerank::ResultDocument,
        crate::rerank::RerankUsage,
        crate::rerank::TeiRerankRequest,
        crate::rerank::TeiRerankResult
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
    // The schemas come from the request type; only what depends on the served models is added.
    let schemas = &mut doc["components"]["schemas"];
    for (shape, id) in [(2, "/items"), (3, "/items/items")] {
        if let Some(item) = schemas["Inputs"]["oneOf"][shape].pointer_mut(id) {
            item["maximum"] = json!(max_id);
        }
    }
    // The decoder refuses unknown fields (OpenAI's "Unrecognized request argument").
    schemas["EmbeddingsRequest"]["additionalProperties"] = json!(false);
    let props = &mut schemas["EmbeddingsRequest"]["properties"];
    props["model"]["enum"] = json!(names);
    props["dimensions"]["maximum"] = json!(max_dims);
    props["prompt_name"]["enum"] = prompts.into_iter().map(|p| json!(p)).chain([Value::Null]).collect();
    serde_json::to_string(&doc).map_err(|e| e.to_string())
}
