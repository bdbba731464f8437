//! `GET /openapi.json`: the OpenAPI 3.1 description generated from the handler annotations
//! and the wire types (utoipa), so it cannot drift from the code.

use crate::error::{ErrorBody, ErrorInfo};
use crate::protocol::{chat, common, completion, guided, models, tokenize, tools};
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
        guided::ResponseFormat,
        guided::JsonSchemaFormat,
        tools::ToolDef,
        tools::FunctionDef,
        tools::ToolChoice,
        tools::NamedToolChoice,
        tools::FunctionName,
        tools::ToolCallIn,
        tools::FunctionCallIn,
        tools::ToolCallOut,
        tools::FunctionCallOut,
        tools::ToolCallDelta,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    /// Every schema the document refers to is in it, the structured-output and tool fields
    /// among them.
    #[test]
    fn every_reference_resolves_and_the_new_fields_are_described() {
        let doc: serde_json::Value = serde_json::from_str(spec_json()).unwrap();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        let schemas = &doc["components"]["schemas"];
        for r in &all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
            assert!(schemas.get(name).is_some(), "{r} is not in the document");
        }
        let chat = &schemas["ChatCompletionRequest"]["properties"];
        for f in [
            "response_format",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "guided_regex",
            "guided_choice",
            "guided_grammar",
            "guided_json",
        ] {
            assert!(chat.get(f).is_some(), "chat request field {f}");
        }
        let cmpl = &schemas["CompletionRequest"]["properties"];
        for f in ["response_format", "guided_regex", "guided_choice", "guided_grammar", "guided_json"] {
            assert!(cmpl.get(f).is_some(), "completion request field {f}");
        }
        assert!(schemas["ChatMessageOut"]["properties"].get("tool_calls").is_some());
        assert!(schemas["ChatDelta"]["properties"].get("tool_calls").is_some());
        assert!(schemas["ChatMessageIn"]["properties"].get("tool_call_id").is_some());
    }
}
