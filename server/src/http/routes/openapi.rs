//! `GET /openapi.json`: the OpenAPI 3.1 description generated from the handler annotations
//! and the wire types (utoipa), so it cannot drift from the code.

use crate::error::{ErrorBody, ErrorInfo};
use crate::protocol::{chat, common, completion, models, tokenize};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use std::sync::OnceLock;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "kiln", description = "kiln's OpenAI-compatible inference API"),
    paths(
        super::completions::completions,
        super::chat::chat_completions,
        super::models::list_models,
        super::models::get_model,
        super::tokenize::tokenize,
        super::tokenize::detokenize,
        super::health::health,
        super::metrics::metrics,
        openapi_json,
    ),
    components(schemas(
        ErrorBody,
        ErrorInfo,
        common::StopSpec,
        common::StreamOptions,
        common::UsageInfo,
        common::PromptTokensDetails,
        completion::CompletionRequest,
        completion::PromptInput,
        completion::CompletionResponse,
        completion::CompletionChoice,
        completion::CompletionLogprobs,
        chat::ChatCompletionRequest,
        chat::ChatMessageIn,
        chat::MessageContent,
        chat::ContentPart,
        chat::ChatCompletionResponse,
        chat::ChatChoice,
        chat::ChatMessageOut,
        chat::ChatLogprobs,
        chat::TokenLogprobOut,
        chat::TopLogprob,
        chat::ChatCompletionChunk,
        chat::ChatChunkChoice,
        chat::ChatDelta,
        models::ModelList,
        models::ModelCard,
        tokenize::TokenizeRequest,
        tokenize::TokenizeResponse,
        tokenize::DetokenizeRequest,
        tokenize::DetokenizeResponse,
        super::health::HealthOk,
    ))
)]
pub struct ApiDoc;

/// The spec as JSON text, built once.
pub fn spec_json() -> &'static str {
    static SPEC: OnceLock<String> = OnceLock::new();
    SPEC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"could not serialize the OpenAPI spec: {e}\"}}"))
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 JSON", content_type = "application/json")))]
pub async fn openapi_json() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], spec_json())
}
