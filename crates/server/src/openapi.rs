//! `GET /openapi.json`: the API contract generated from the handlers' and types' annotations.

use crate::api::{
    EmbeddingObject, EmbeddingValue, EmbeddingsRequestSchema, EmbeddingsResponse, ErrorBody, ErrorDetail, InputSchema,
    ModelList, ModelObject, Usage,
};
use crate::routes;
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
        description = "OpenAI-compatible embeddings API. Token-id inputs are ids of the model's own vocabulary \
                       (native), each checked against its size."
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

/// The OpenAPI document as JSON.
pub fn document() -> Result<String, String> {
    ApiDoc::openapi().to_json().map_err(|e| e.to_string())
}
