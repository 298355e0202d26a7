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
    modifiers(&BearerAuth),
    components(schemas(crate::ollama::OllamaError, crate::tei::TeiError, crate::cohere::CohereError))
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
    let embeds = |m: &openembed_pipeline::ServedModel| m.model.info().embeds();
    let names: Vec<&str> = registry
        .names()
        .filter(|(_, m)| embeds(m))
        .map(|(name, _)| name)
        .collect();
    let rerankers: Vec<&str> = registry
        .names()
        .filter(|(_, m)| is_reranker(m))
        .map(|(name, _)| name)
        .collect();
    let embedders: Vec<&std::sync::Arc<openembed_pipeline::ServedModel>> =
        registry.models().iter().filter(|m| embeds(m)).collect();
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
    let prompts = prompts_of(&infos);
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
    props["embedding_type"]["enum"] = embedding_types();
    // Float vectors and integer codes are both arrays of numbers (`[1.0]` is both).
    if let Some(variants) = schemas["EmbeddingValue"]
        .as_object_mut()
        .and_then(|o| o.remove("oneOf"))
    {
        schemas["EmbeddingValue"]["anyOf"] = variants;
    }
    // Ollama's routes: the embedding models' names, and at most MAX_INPUTS texts.
    for schema in ["OllamaEmbedBody", "OllamaLegacyBody", "OllamaShowBody"] {
        doc["components"]["schemas"][schema]["properties"]["model"]["enum"] = json!(names);
    }
    if let Some(many) = doc["components"]["schemas"]["OllamaEmbedInput"]["oneOf"].get_mut(1) {
        many["maxItems"] = json!(crate::api::MAX_INPUTS);
    }
    doc["components"]["schemas"]["OllamaEmbedBody"]["properties"]["dimensions"]["maximum"] = json!(max_dims);
    tei(&mut doc, registry, &prompts_of(&infos), max_dims);
    cohere(&mut doc, &names, &infos, max_dims);
    if rerankers.is_empty() {
        if let Some(paths) = doc["paths"].as_object_mut() {
            for path in ["/v1/rerank", "/v2/rerank", "/rerank"] {
                paths.remove(path);
            }
        }
    } else {
        let max = openembed_pipeline::rerank::MAX_DOCUMENTS;
        for (schema, list) in [("RerankRequest", "documents"), ("TeiRerankRequest", "texts")] {
            let required_model = schema == "RerankRequest" && rerankers.len() > 1;
            let s = &mut doc["components"]["schemas"][schema];
            s["properties"]["model"]["enum"] = rerankers.iter().map(|r| json!(r)).chain([Value::Null]).collect();
            s["properties"]["query"]["minLength"] = json!(1);
            s["properties"][list]["minItems"] = json!(1);
            s["properties"][list]["maxItems"] = json!(max);
            if required_model {
                // Without a model name the request is ambiguous (TEI's routes take the first).
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

/// The prompt names every one of `infos` has.
fn prompts_of(infos: &[&openembed_engine::ModelInfo]) -> Vec<String> {
    let mut prompts: Vec<String> = infos
        .first()
        .map(|i| i.prompts.keys().cloned().collect())
        .unwrap_or_default();
    prompts.retain(|p| infos.iter().all(|i| i.prompts.contains_key(p)));
    prompts
}

/// TEI's routes made exact for the served models: `model` lists the models each route takes
/// (a route no served model can answer is left out), `prompt_name` the common prompts, token
/// ids the smallest vocabulary, inputs at most MAX_INPUTS, pairs one or two texts.
fn tei(doc: &mut Value, registry: &Registry, prompts: &[String], max_dims: usize) {
    let names = |fits: fn(&openembed_engine::ModelInfo) -> bool| -> Vec<Value> {
        registry
            .names()
            .filter(|(_, m)| fits(m.model.info()))
            .map(|(n, _)| json!(n))
            .chain([Value::Null])
            .collect()
    };
    let embedders = names(|i| i.embeds());
    let classifiers = names(|i| i.classifier.is_some());
    let sparse = names(|i| i.sparse.is_some());
    let all = names(|_| true);
    let prompt_enum: Value = prompts.iter().map(|p| json!(p)).chain([Value::Null]).collect();
    let schemas = &mut doc["components"]["schemas"];
    for (schema, models) in [
        ("TeiSimilarityRequest", &embedders),
        ("TeiPredictRequest", &classifiers),
        ("ClassificationRequest", &classifiers),
        ("TeiTokenizeRequest", &all),
    ] {
        schemas[schema]["properties"]["model"]["enum"] = Value::Array(models.clone());
    }
    for schema in [
        "TeiEmbedRequest",
        "TeiEmbedAllRequest",
        "TeiEmbedSparseRequest",
        "TeiTokenizeRequest",
        "SimilarityParameters",
    ] {
        schemas[schema]["properties"]["prompt_name"]["enum"] = prompt_enum.clone();
    }
    schemas["TeiEmbedRequest"]["properties"]["dimensions"]["maximum"] = json!(max_dims);
    schemas["TeiEmbedRequest"]["properties"]["embedding_type"]["enum"] = embedding_types();
    schemas["SimilarityInputs"]["properties"]["sentences"]["minItems"] = json!(1);
    schemas["SimilarityInputs"]["properties"]["sentences"]["maxItems"] = json!(crate::api::MAX_INPUTS - 1);
    // Token ids are bounded by the vocabulary of the model a request names: one variant of
    // the body per vocabulary size.
    let many = |item: Value| json!({"type": "array", "items": item, "minItems": 1, "maxItems": crate::api::MAX_INPUTS});
    for (schema, fits) in [
        ("TeiEmbedRequest", embeds as fn(&openembed_engine::ModelInfo) -> bool),
        ("TeiEmbedAllRequest", embeds),
        ("TeiEmbedSparseRequest", is_sparse),
    ] {
        by_vocabulary(registry, schemas, schema, "inputs", fits, |max_id| {
            let ids = json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": max_id},
                                 "minItems": 1});
            let one = json!({"oneOf": [{"type": "string"}, ids]});
            json!({"oneOf": [one.clone(), many(one)]})
        });
    }
    by_vocabulary(
        registry,
        schemas,
        "TeiDecodeRequest",
        "ids",
        |_| true,
        |max_id| {
            let ids =
                json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": max_id}, "minItems": 1});
            json!({"oneOf": [ids.clone(), many(ids)]})
        },
    );
    // A sequence of /predict is one text or a pair.
    schemas["TeiPredictInputs"]["oneOf"][1]["minItems"] = json!(1);
    schemas["TeiPredictInputs"]["oneOf"][1]["maxItems"] = json!(2);
    schemas["TeiPredictInputs"]["oneOf"][2]["minItems"] = json!(1);
    schemas["TeiPredictInputs"]["oneOf"][2]["maxItems"] = json!(crate::api::MAX_INPUTS);
    schemas["TeiPredictInputs"]["oneOf"][2]["items"]["minItems"] = json!(1);
    schemas["TeiPredictInputs"]["oneOf"][2]["items"]["maxItems"] = json!(2);
    schemas["TokenizeInputs"]["oneOf"][1]["minItems"] = json!(1);
    schemas["TokenizeInputs"]["oneOf"][1]["maxItems"] = json!(crate::api::MAX_INPUTS);
    let paths = doc["paths"].as_object_mut();
    if let Some(paths) = paths {
        if classifiers.len() == 1 {
            paths.remove("/predict");
        }
        if sparse.len() == 1 {
            paths.remove("/embed_sparse");
        }
        if embedders.len() == 1 {
            paths.remove("/embed");
            paths.remove("/embed_all");
            paths.remove("/similarity");
        }
    }
}

/// Replaces the body schema `schema` by one variant per vocabulary size of the models it takes
/// (those for which `fits` holds): each names its models in `model` (the first fitting model's
/// variant also takes no model) and bounds `field` by `ids(max_id)`.
fn by_vocabulary(
    registry: &Registry,
    schemas: &mut Value,
    schema: &str,
    field: &str,
    fits: fn(&openembed_engine::ModelInfo) -> bool,
    ids: impl Fn(usize) -> Value,
) {
    let default = registry
        .models()
        .iter()
        .find(|m| fits(m.model.info()))
        .map(|m| m.name.clone());
    let mut groups: std::collections::BTreeMap<usize, Vec<(String, bool)>> = Default::default();
    for (name, served) in registry.names().filter(|(_, m)| fits(m.model.info())) {
        let max_id = served.model.info().vocab_size.saturating_sub(1);
        groups
            .entry(max_id)
            .or_default()
            .push((name.to_string(), default.as_deref() == Some(served.name.as_str())));
    }
    let base = schemas[schema].clone();
    let variants: Vec<Value> = groups
        .into_iter()
        .map(|(max_id, names)| {
            let mut variant = base.clone();
            let takes_default = names.iter().any(|(_, d)| *d);
            let mut models: Vec<Value> = names.into_iter().map(|(n, _)| json!(n)).collect();
            if takes_default {
                models.push(Value::Null);
            } else if let Some(required) = variant["required"].as_array_mut() {
                required.push(json!("model"));
            }
            variant["properties"]["model"] = json!({"enum": models});
            variant["properties"][field] = ids(max_id);
            variant
        })
        .collect();
    schemas[schema] = match variants.len() {
        0 => return, // no model takes it: its route is left out of the document
        1 => variants.into_iter().next().unwrap_or_default(),
        _ => json!({"oneOf": variants}),
    };
}

/// Cohere's embed routes made exact for the served models: the embedding models' names, the
/// input types and embedding types, `texts` or `inputs` (one of them), v2's required
/// `input_type`.
fn cohere(doc: &mut Value, names: &[&str], infos: &[&openembed_engine::ModelInfo], max_dims: usize) {
    if names.is_empty() {
        if let Some(paths) = doc["paths"].as_object_mut() {
            paths.remove("/v1/embed");
            paths.remove("/v2/embed");
        }
        return;
    }
    let max_limit = infos.iter().map(|i| i.max_input_tokens).max().unwrap_or(1);
    let schemas = &mut doc["components"]["schemas"];
    let s = &mut schemas["CohereEmbedRequest"];
    let props = &mut s["properties"];
    props["model"]["enum"] = json!(names);
    props["input_type"]["enum"] = crate::cohere::INPUT_TYPES
        .iter()
        .map(|t| json!(t.0))
        .chain([Value::Null])
        .collect();
    props["embedding_types"]["items"]["enum"] = json!(["float", "int8", "uint8", "binary", "ubinary", "base64"]);
    props["embedding_types"]["minItems"] = json!(1);
    props["truncate"]["enum"] = json!(["NONE", "START", "END", null]);
    props["output_dimension"]["maximum"] = json!(max_dims);
    props["max_tokens"]["minimum"] = json!(max_limit);
    props["images"]["maxItems"] = json!(0);
    for list in ["texts", "inputs"] {
        props[list]["minItems"] = json!(1);
        props[list]["maxItems"] = json!(crate::api::MAX_INPUTS);
    }
    // Exactly one of `texts` and `inputs` (null is the same as left out).
    let one_of = |given: &str, other: &str| {
        json!({"required": [given], "properties": {given: {"type": "array"}},
               "anyOf": [{"not": {"required": [other]}}, {"properties": {other: {"type": "null"}}}]})
    };
    s["oneOf"] = json!([one_of("texts", "inputs"), one_of("inputs", "texts")]);
    schemas["CohereInput"]["properties"]["content"]["minItems"] = json!(1);
    schemas["CohereContent"]["properties"]["type"]["enum"] = json!(["text"]);
    if let Some(required) = schemas["CohereContent"]["required"].as_array_mut() {
        required.push(json!("text"));
    }
    schemas["CohereContent"]["properties"]["text"]["type"] = json!("string");
    let mut v2 = schemas["CohereEmbedRequest"].clone();
    if let Some(required) = v2["required"].as_array_mut() {
        required.push(json!("input_type"));
    }
    v2["properties"]["input_type"]["enum"] = crate::cohere::INPUT_TYPES.iter().map(|t| json!(t.0)).collect();
    doc["paths"]["/v2/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"] = v2;
}

/// The `embedding_type` values (and null).
fn embedding_types() -> Value {
    openembed_pipeline::EmbeddingType::ALL
        .iter()
        .map(|t| json!(t.name()))
        .chain([Value::Null])
        .collect()
}

fn embeds(info: &openembed_engine::ModelInfo) -> bool {
    info.embeds()
}

fn is_sparse(info: &openembed_engine::ModelInfo) -> bool {
    info.sparse.is_some()
}
