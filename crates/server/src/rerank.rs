//! Reranking over HTTP: the request and response types of Cohere's `/v1/rerank` and
//! `/v2/rerank` (also Jina's and vLLM's shape); TEI's `/rerank` is in [`crate::tei`]. What a rerank request means
//! (its rules, tokenization, the scheduler, ranking) is the pipeline's (`openembed_pipeline::rerank`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A document: a string, or an object with `text` (Cohere v1 / Jina).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerankDocument {
    /// Plain text.
    Text(String),
    /// `{"text": …}` (other fields are ignored).
    Object {
        /// The text.
        text: String,
    },
}

impl RerankDocument {
    /// The document's text.
    pub fn text(&self) -> &str {
        match self {
            Self::Text(t) | Self::Object { text: t } => t,
        }
    }
}

/// `POST /v1/rerank`, `/v2/rerank`: Cohere's request (Jina and vLLM send the same).
#[derive(Debug, Deserialize, ToSchema)]
pub struct RerankRequest {
    /// A served reranker; may be left out when exactly one is served.
    pub model: Option<String>,
    /// The query.
    pub query: String,
    /// The candidates, 1 to 1,000.
    pub documents: Vec<RerankDocument>,
    /// Return only the best `top_n` results (default: all).
    #[serde(default, deserialize_with = "crate::api::json_count")]
    pub top_n: Option<usize>,
    /// Include each result's document text.
    pub return_documents: Option<bool>,
    /// Cut each document to this many tokens first (cross-encoders; default: the model limit).
    #[serde(default, deserialize_with = "crate::api::json_count")]
    pub max_tokens_per_doc: Option<usize>,
    /// Extension: the instruction of an instruction-following reranker (Qwen3-Reranker).
    pub instruction: Option<String>,
    /// Extension: logits instead of scores.
    pub raw_scores: Option<bool>,
}

/// A document's text in a result.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultDocument {
    /// The text.
    pub text: String,
}

/// One ranked document.
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResult {
    /// Position of the document in the request.
    pub index: usize,
    /// The model's score (higher is more relevant).
    pub relevance_score: f32,
    /// The document, with `return_documents`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<ResultDocument>,
}

/// Token counts of a rerank request.
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankUsage {
    /// Tokens of every pair fed to the model.
    pub prompt_tokens: usize,
    /// Same as `prompt_tokens`.
    pub total_tokens: usize,
}

/// The response: results sorted by score, best first (ties keep request order).
#[derive(Debug, Serialize, ToSchema)]
pub struct RerankResponse {
    /// Response id.
    pub id: String,
    /// The model, as the client named it.
    pub model: String,
    /// Ranked documents.
    pub results: Vec<RerankResult>,
    /// Cohere's metadata: API version, billed units, tokens.
    pub meta: serde_json::Value,
    /// Jina / vLLM usage.
    pub usage: RerankUsage,
}
