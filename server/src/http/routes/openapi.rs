//! `GET /openapi.json`: the OpenAPI 3.1 description generated from the handler annotations
//! and the wire types (utoipa), so it cannot drift from the code.
//!
//! Each handler's annotation lists what the handler itself answers; [`Layers`] adds what the
//! layers around every handler answer (401 from `require_key`, 400/413/415 from `ApiJson`),
//! the API-key security schemes and the `Retry-After` header, from the same constants those
//! layers use. A streamed reply is documented as `text/event-stream` whose `schema` describes
//! one event (OpenAPI 3.1 has no item schema; this is how schema-driven tools read it), the
//! event's `data` being the chunk as JSON text (`contentMediaType`/`contentSchema`), an error
//! body, or `[DONE]`. Served, every request's `model` is the one served model's name
//! ([`spec_json_for`]). `tests/python/openapi_fuzz.py` checks the live server against all of it.

use crate::auth::OPEN_PATHS;
use crate::error::{ErrorBody, ErrorInfo};
use crate::protocol::{chat, common, completion, guided, models, tokenize, tools};
use crate::state::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Ref, Schema, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

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
        tools::FunctionCallDelta,
        models::ModelList,
        models::ModelCard,
        tokenize::TokenizeRequest,
        tokenize::TokenizeResponse,
        tokenize::DetokenizeRequest,
        tokenize::DetokenizeResponse,
        super::health::HealthOk,
        ChatCompletionStreamEvent,
        CompletionStreamEvent,
    )),
    modifiers(&Layers, &TokenizeInput)
)]
pub struct ApiDoc;

/// One event of a streamed `POST /v1/chat/completions` reply.
pub struct ChatCompletionStreamEvent;

impl PartialSchema for ChatCompletionStreamEvent {
    fn schema() -> RefOr<Schema> {
        sse_event(&chat::ChatCompletionChunk::name())
    }
}

impl ToSchema for ChatCompletionStreamEvent {}

/// One event of a streamed `POST /v1/completions` reply (chunks have the reply's shape).
pub struct CompletionStreamEvent;

impl PartialSchema for CompletionStreamEvent {
    fn schema() -> RefOr<Schema> {
        sse_event(&completion::CompletionResponse::name())
    }
}

impl ToSchema for CompletionStreamEvent {}

/// An SSE event (as parsed: `data`, plus `event`/`id` fields kiln never sends) whose `data` is
/// a `chunk` as JSON, an [`ErrorBody`] (the engine failed after the 200 went out), or the
/// closing `[DONE]`.
fn sse_event(chunk: &str) -> RefOr<Schema> {
    let json = |name: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .content_schema(Some(Ref::from_schema_name(name)))
    };
    let data = AnyOfBuilder::new()
        .item(json(chunk))
        .item(json(&ErrorBody::name()))
        .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["[DONE]"])))
        .description(Some("A chunk as JSON; an error body if the engine failed mid-stream; `[DONE]` last"));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(format!(
            "One server-sent event (`data: ...` and a blank line): a `{chunk}`, an `ErrorBody` or `[DONE]`"
        )))
        .property("data", data)
        .required("data")
        .into()
}

/// The responses and security that come from the layers around the handlers, added to every
/// operation they apply to (a handler's own description of the same status wins).
struct Layers;

impl Modify for Layers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("`Authorization: Bearer <key>`, when the server was started with API keys"))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "The key alone, in place of `Authorization`",
            ))),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let open = OPEN_PATHS.contains(&path.as_str());
            for op in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch].into_iter().flatten()
            {
                let r = &mut op.responses.responses;
                if !open {
                    // `{}` first: a server started without keys takes requests without one.
                    op.security = Some(vec![
                        SecurityRequirement::default(),
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                        SecurityRequirement::new("api_key", Vec::<String>::new()),
                    ]);
                    r.entry("401".into()).or_insert_with(|| error("Missing or wrong API key (only with API keys)"));
                }
                if op.request_body.is_some() {
                    let body_errors = [
                        ("400", "Invalid request: not JSON, not an object, a field of the wrong type, or a value the route refuses (`param` names the field)"),
                        ("413", "The body is over the size limit"),
                        ("415", "The `Content-Type` is not JSON"),
                    ];
                    for (status, why) in body_errors {
                        r.entry(status.into()).or_insert_with(|| error(why));
                    }
                }
                for (status, resp) in r.iter_mut() {
                    if let (RefOr::T(resp), "429" | "503") = (resp, status.as_str()) {
                        let h = HeaderBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))))
                            .description(Some("Seconds to wait before retrying (overload, loading, draining)"))
                            .build();
                        resp.headers.insert("Retry-After".into(), RefOr::T(h));
                    }
                }
            }
        }
    }
}

/// `/tokenize` takes `prompt` or `messages`, exactly one (the handler refuses both and
/// neither, and reads a null as absent): its request schema says so with a `oneOf` of the two
/// forms next to the fields, each form's other field null or absent (without that, `messages:
/// []` beside a prompt was valid by the schema — the empty list fails only the messages form —
/// and refused by the handler as both).
struct TokenizeInput;

impl Modify for TokenizeInput {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let Some(schemas) = doc.components.as_mut().map(|c| &mut c.schemas) else { return };
        let Some(fields) = schemas.remove(tokenize::TokenizeRequest::name().as_ref()) else { return };
        let prompt = ObjectBuilder::new()
            .property("prompt", ObjectBuilder::new().schema_type(Type::String))
            .property("messages", ObjectBuilder::new().schema_type(Type::Null))
            .required("prompt")
            .description(Some("Plain text"));
        let messages = ObjectBuilder::new()
            .property(
                "messages",
                ArrayBuilder::new().items(Ref::from_schema_name(chat::ChatMessageIn::name())).min_items(Some(1)),
            )
            .property("prompt", ObjectBuilder::new().schema_type(Type::Null))
            .required("messages")
            .description(Some("A conversation, rendered with the chat template"));
        let forms = OneOfBuilder::new().item(prompt).item(messages);
        let schema = AllOfBuilder::new().item(fields).item(forms).description(Some("Either `prompt` or `messages`"));
        schemas.insert(tokenize::TokenizeRequest::name().into_owned(), RefOr::T(Schema::AllOf(schema.build())));
    }
}

/// A response with OpenAI's error body.
fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build();
    ResponseBuilder::new().description(description).content("application/json", content).build().into()
}

/// The spec as JSON text, built once.
pub fn spec_json() -> &'static str {
    static SPEC: OnceLock<String> = OnceLock::new();
    SPEC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"could not serialize the OpenAPI spec: {e}\"}}"))
    })
}

/// The spec as this server answers it: every request's `model` names the one model served
/// (`enum`), since any other is a 404 (a client generating requests from the document would
/// otherwise see most of them refused). Built once per served name.
pub fn spec_json_for(served: &str) -> Arc<str> {
    static BY_NAME: OnceLock<Mutex<HashMap<String, Arc<str>>>> = OnceLock::new();
    let mut cache = BY_NAME.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = cache.get(served) {
        return Arc::clone(s);
    }
    let mut doc: serde_json::Value = serde_json::from_str(spec_json()).unwrap_or_default();
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(|v| v.as_object_mut()) {
        for schema in schemas.values_mut() {
            // The fields sit in the schema, or in the first part of an `allOf` (`/tokenize`).
            let fields = if schema.get("allOf").is_some() { schema.pointer_mut("/allOf/0") } else { Some(schema) };
            let Some(model) = fields.and_then(|f| f.pointer_mut("/properties/model")).and_then(|m| m.as_object_mut())
            else {
                continue;
            };
            let nullable = model.get("type").and_then(|t| t.as_array()).is_some_and(|t| t.iter().any(|x| x == "null"));
            let names = if nullable { serde_json::json!([served, null]) } else { serde_json::json!([served]) };
            model.insert("enum".into(), names);
        }
    }
    let text: Arc<str> = doc.to_string().into();
    cache.insert(served.to_owned(), Arc::clone(&text));
    text
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 JSON", content_type = "application/json")))]
pub async fn openapi_json(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], spec_json_for(&state.cfg.served_model_name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Served, every request schema's `model` admits the served name only (and null where the
    /// field is optional); the rest of the document is the generated one.
    #[test]
    fn the_served_document_names_the_served_model() {
        let doc: serde_json::Value = serde_json::from_str(&spec_json_for("tiny-model")).unwrap();
        let base: serde_json::Value = serde_json::from_str(spec_json()).unwrap();
        let mut seen = 0;
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            let Some(model) = schema["properties"].get("model") else { continue };
            seen += 1;
            let names: Vec<&serde_json::Value> = model["enum"].as_array().unwrap().iter().collect();
            assert_eq!(names[0], "tiny-model", "{name}");
            let nullable = model["type"].as_array().is_some_and(|t| t.iter().any(|x| x == "null"));
            assert_eq!(names.len(), 1 + usize::from(nullable), "{name}");
            let mut without = schema.clone();
            without["properties"]["model"].as_object_mut().unwrap().remove("enum");
            assert_eq!(without, base["components"]["schemas"][name], "{name}");
        }
        assert!(seen >= 3, "completions, chat and detokenize name a model: {seen}");
        // `/tokenize`'s fields sit in an `allOf` next to its two forms, exactly one of which holds.
        let tok = &doc["components"]["schemas"]["TokenizeRequest"];
        assert_eq!(tok["allOf"][0]["properties"]["model"]["enum"][0], "tiny-model");
        let forms = tok["allOf"][1]["oneOf"].as_array().unwrap();
        assert_eq!(
            (forms[0]["required"][0].as_str(), forms[1]["required"][0].as_str()),
            (Some("prompt"), Some("messages"))
        );
        assert!(Arc::ptr_eq(&spec_json_for("tiny-model"), &spec_json_for("tiny-model")), "built once");
    }

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
        // A streamed call's later chunks carry only its index and an arguments piece.
        assert_eq!(schemas["ToolCallDelta"]["required"], serde_json::json!(["index", "function"]));
        assert_eq!(schemas["FunctionCallDelta"]["required"], serde_json::json!(["arguments"]));
    }

    fn operations(doc: &serde_json::Value) -> Vec<(String, &serde_json::Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((format!("{} {path}", method.to_uppercase()), op));
            }
        }
        out
    }

    fn request_schema<'a>(doc: &'a serde_json::Value, op: &serde_json::Value) -> Option<&'a serde_json::Value> {
        let r = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()?;
        Some(&doc["components"]["schemas"][r.rsplit('/').next().unwrap()])
    }

    /// The statuses the layers and handlers answer are documented where they apply: 401 off
    /// the open paths, 400/413/415 with a JSON body, 404 wherever a model is named, and
    /// streamed replies as `text/event-stream` events.
    #[test]
    fn every_route_documents_what_it_answers() {
        let doc: serde_json::Value = serde_json::from_str(spec_json()).unwrap();
        for (name, op) in operations(&doc) {
            let statuses: Vec<&str> = op["responses"].as_object().unwrap().keys().map(String::as_str).collect();
            let path = name.split(' ').nth(1).unwrap();
            let open = OPEN_PATHS.contains(&path);
            assert_eq!(statuses.contains(&"401"), !open, "{name}: {statuses:?}");
            assert_eq!(op.get("security").is_some(), !open, "{name}");
            if let Some(req) = request_schema(&doc, op) {
                for s in ["400", "413", "415"] {
                    assert!(statuses.contains(&s), "{name} lacks {s}");
                }
                if req["properties"].get("model").is_some() {
                    assert!(statuses.contains(&"404"), "{name} takes `model` but does not document 404");
                }
            }
            if path.contains("{id}") {
                assert!(statuses.contains(&"404"), "{name}");
            }
            for (status, resp) in op["responses"].as_object().unwrap() {
                if status != "200" {
                    let body = &resp["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(body, "#/components/schemas/ErrorBody", "{name} {status}");
                }
                if status == "429" || status == "503" {
                    assert!(resp["headers"].get("Retry-After").is_some(), "{name} {status}");
                }
            }
        }
        for (path, event) in
            [("/v1/chat/completions", "ChatCompletionStreamEvent"), ("/v1/completions", "CompletionStreamEvent")]
        {
            let content = &doc["paths"][path]["post"]["responses"]["200"]["content"];
            assert_eq!(content["text/event-stream"]["schema"]["$ref"], format!("#/components/schemas/{event}"));
            assert!(content.get("application/json").is_some());
        }
    }

    /// The ranges the document states are the ones the server enforces.
    #[test]
    fn documented_ranges_are_the_enforced_ones() {
        use kiln_runtime::sample::params::{
            MAX_ADDITIVE_PENALTY, MAX_LOGPROBS, MAX_REPETITION_PENALTY, MAX_TEMPERATURE, MIN_REPETITION_PENALTY,
        };
        let doc: serde_json::Value = serde_json::from_str(spec_json()).unwrap();
        let f = |v: f32| serde_json::json!(v as f64).as_f64().unwrap();
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
        for req in ["CompletionRequest", "ChatCompletionRequest"] {
            let p = &doc["components"]["schemas"][req]["properties"];
            assert_eq!(num(&p["temperature"]["maximum"]), f(MAX_TEMPERATURE), "{req}");
            assert_eq!(num(&p["repetition_penalty"]["maximum"]), f(MAX_REPETITION_PENALTY), "{req}");
            assert!((num(&p["repetition_penalty"]["minimum"]) - f(MIN_REPETITION_PENALTY)).abs() < 1e-9, "{req}");
            for k in ["presence_penalty", "frequency_penalty"] {
                assert_eq!(num(&p[k]["maximum"]), f(MAX_ADDITIVE_PENALTY), "{req} {k}");
                assert_eq!(num(&p[k]["minimum"]), -f(MAX_ADDITIVE_PENALTY), "{req} {k}");
            }
            let logprobs = if req == "CompletionRequest" { "logprobs" } else { "top_logprobs" };
            assert_eq!(num(&p[logprobs]["maximum"]), MAX_LOGPROBS as f64, "{req}");
            assert_eq!(p["stop_token_ids"]["maxItems"], crate::validate::MAX_STOP_TOKEN_IDS, "{req}");
        }
        let role = &doc["components"]["schemas"]["ChatMessageIn"]["properties"]["role"]["enum"];
        assert_eq!(role, &serde_json::json!(crate::prompt::ROLES));
    }
}
