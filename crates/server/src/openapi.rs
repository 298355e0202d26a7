//! `GET /openapi.json`: the API contract generated from the route declarations (the handlers'
//! annotations) and the types' annotations, made exact for the served models.

use openembed_pipeline::Registry;
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
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The document's frame (info, shared schemas, the bearer scheme); the paths are added by the
/// route declarations in [`crate::routes`]' attributes, as the router is built.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The OpenAPI document as JSON, made exact for the served models: `model` lists the names of
/// the embedding models (and of the rerankers on the rerank routes, which are left out when none
/// is served), token ids are bounded by the smallest vocabulary, `dimensions` by the smallest
/// dimension, `prompt_name` and `task` list what every embedding model has.
pub fn document(registry: &Registry) -> Result<String, String> {
    // The declared routes' document, built once per process.
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let mut doc = DOC
        .get_or_init(|| serde_json::to_value(crate::openapi_document()).unwrap_or(Value::Null))
        .clone();
    if doc.is_null() {
        return Err("the OpenAPI document could not be built".into());
    }
    let is_reranker = |m: &openembed_pipeline::ServedModel| m.model.info().rerank.is_some();
    let names: Vec<&str> = registry
        .names()
        .filter(|(_, m)| !is_reranker(m))
        .map(|(name, _)| name)
        .collect();
    let rerankers: Vec<&str> = registry
        .names()
        .filter(|(_, m)| is_reranker(m))
        .map(|(name, _)| name)
        .collect();
    let embedders: Vec<&std::sync::Arc<openembed_pipeline::ServedModel>> =
        registry.models().iter().filter(|m| !is_reranker(m)).collect();
    let infos: Vec<&openembed_engine::ModelInfo> = embedders.iter().map(|m| m.model.info()).collect();
    let max_id = embedders
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
    let mut tasks: Vec<&String> = infos.first().map(|i| i.tasks.iter().collect()).unwrap_or_default();
    tasks.retain(|t| infos.iter().all(|i| i.tasks.contains(t)));
    props["task"]["enum"] = tasks.into_iter().map(|t| json!(t)).chain([Value::Null]).collect();
    // Ollama's routes: the embedding models' names, and at most MAX_INPUTS texts.
    for schema in ["OllamaEmbedBody", "OllamaLegacyBody", "OllamaShowBody"] {
        doc["components"]["schemas"][schema]["properties"]["model"]["enum"] = json!(names);
    }
    if let Some(many) = doc["components"]["schemas"]["OllamaEmbedInput"]["oneOf"].get_mut(1) {
        many["maxItems"] = json!(crate::api::MAX_INPUTS);
    }
    doc["components"]["schemas"]["OllamaEmbedBody"]["properties"]["dimensions"]["maximum"] = json!(max_dims);
    if rerankers.is_empty() {
        if let Some(paths) = doc["paths"].as_object_mut() {
            for path in ["/v1/rerank", "/v2/rerank", "/rerank"] {
                paths.remove(path);
            }
        }
    } else {
        let max = openembed_pipeline::rerank::MAX_DOCUMENTS;
        for (schema, list) in [("RerankRequest", "documents"), ("TeiRerankRequest", "texts")] {
            let s = &mut doc["components"]["schemas"][schema];
            s["properties"]["model"]["enum"] = rerankers.iter().map(|r| json!(r)).chain([Value::Null]).collect();
            s["properties"]["query"]["minLength"] = json!(1);
            s["properties"][list]["minItems"] = json!(1);
            s["properties"][list]["maxItems"] = json!(max);
            if rerankers.len() > 1 {
                // Without a model name the request is ambiguous.
                if let Some(required) = s["required"].as_array_mut() {
                    required.push(json!("model"));
                }
            }
        }
        let props = &mut doc["components"]["schemas"]["RerankRequest"]["properties"];
        props["top_n"]["minimum"] = json!(1);
        props["max_tokens_per_doc"]["minimum"] = json!(1);
    }
    serde_json::to_string(&doc).map_err(|e| e.to_string())
}
