//! Prompts → token ids: the completions `prompt` forms and chat `messages` (through the
//! model's template), checked and tokenized.
//!
//! Invariants: every returned prompt is non-empty and every id is inside the vocabulary; long
//! inputs are tokenized on the blocking pool (a 2 MiB prompt must not stall the reactor that
//! serves every other connection); tokenizer or template failures caused by the input are 400.

use crate::codec::{Codec, CodecError};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::protocol::chat::{ChatMessageIn, MessageContent};
use crate::protocol::completion::PromptInput;
use crate::protocol::tools::ToolCallIn;
use crate::tools::{render, ToolPlan};
use kiln_models::tokenizer::ChatMessage;
use std::sync::Arc;

/// One prompt, tokenized, and its text when the response echoes it.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub text: Option<String>,
}

/// The roles a message may have (also what `/openapi.json` lists).
pub const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

enum Source {
    Text(String),
    Ids(Vec<u32>),
}

pub async fn completion_prompts(
    input: Option<PromptInput>,
    cfg: &ServerConfig,
    codec: &Arc<dyn Codec>,
    echo: bool,
) -> Result<Vec<Prompt>, ApiError> {
    let sources: Vec<Source> = match input {
        None => return Err(ApiError::invalid(Some("prompt"), "missing_field", "`prompt` is required")),
        Some(PromptInput::Text(s)) => vec![Source::Text(s)],
        Some(PromptInput::Texts(v)) => v.into_iter().map(Source::Text).collect(),
        Some(PromptInput::Ids(v)) => vec![Source::Ids(v)],
        Some(PromptInput::IdLists(v)) => v.into_iter().map(Source::Ids).collect(),
    };
    if sources.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "empty_prompt", "`prompt` is an empty list"));
    }
    if sources.len() > cfg.max_prompts {
        return Err(ApiError::bad_value(
            "prompt",
            format!("{} prompts given, at most {} per request", sources.len(), cfg.max_prompts),
        ));
    }
    let vocab = codec.vocab_size();
    let mut out = Vec::with_capacity(sources.len());
    for s in sources {
        let p = match s {
            Source::Text(t) => {
                if t.is_empty() {
                    return Err(ApiError::invalid(
                        Some("prompt"),
                        "empty_prompt",
                        "`prompt` is empty: give at least one token of input",
                    ));
                }
                let big = t.len() > cfg.inline_tokenize_bytes;
                let c = Arc::clone(codec);
                let (ids, text) = on_pool(big, "prompt", move || {
                    let ids = c.encode(&t, c.default_bos())?;
                    Ok((ids, echo.then_some(t)))
                })
                .await?;
                Prompt { ids, text }
            }
            Source::Ids(ids) => {
                check_ids(&ids, vocab, "prompt")?;
                let text = if echo { Some(codec.decode(&ids).map_err(|e| codec_error(e, "prompt"))?) } else { None };
                Prompt { ids, text }
            }
        };
        out.push(p);
    }
    Ok(out)
}

pub fn check_ids(ids: &[u32], vocab: usize, param: &str) -> Result<(), ApiError> {
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(t) => Err(ApiError::bad_value(param, format!("token id {t} is outside the vocabulary of {vocab}"))),
        None => Ok(()),
    }
}

/// Chat messages in the template's form; refuses unknown roles and non-text content.
pub fn chat_messages(messages: Option<Vec<ChatMessageIn>>) -> Result<Vec<ChatMessage>, ApiError> {
    let messages =
        messages.ok_or_else(|| ApiError::invalid(Some("messages"), "missing_field", "`messages` is required"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "empty_prompt",
            "`messages` is empty: give at least one message",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::bad_value(&format!("messages[{i}].role"), format!("role `{}` is not one of {}", m.role, ROLES.join(", "))));
            }
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(s)) => s,
                Some(MessageContent::Parts(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => s.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::bad_value(
                                    &format!("messages[{i}].content[{j}]"),
                                    format!("content part of type `{kind}` is not supported: only `text` parts with a `text` field are"),
                                ))
                            }
                        }
                    }
                    s
                }
            };
            let mut msg = ChatMessage::new(m.role, content);
            msg.tool_calls = m.tool_calls.map(|calls| tool_calls_json(i, calls)).transpose()?;
            msg.tool_call_id = m.tool_call_id;
            msg.name = m.name;
            Ok(msg)
        })
        .collect()
}

/// An earlier turn's calls in the form HF templates read: arguments as an object (OpenAI
/// sends them as JSON text).
fn tool_calls_json(i: usize, calls: Vec<ToolCallIn>) -> Result<serde_json::Value, ApiError> {
    let mut out = Vec::with_capacity(calls.len());
    for (j, c) in calls.into_iter().enumerate() {
        let param = || format!("messages[{i}].tool_calls[{j}].function.arguments");
        let args = match c.function.arguments {
            serde_json::Value::String(s) => serde_json::from_str(&s)
                .map_err(|e| ApiError::bad_value(&param(), format!("the arguments are not JSON: {e}")))?,
            v => v,
        };
        // Templates read the arguments as a mapping; a call's arguments are always an object.
        if !args.is_object() {
            return Err(ApiError::bad_value(&param(), "the arguments must be a JSON object (or its text)"));
        }
        out.push(serde_json::json!({
            "id": c.id,
            "type": c.kind.unwrap_or_else(|| "function".into()),
            "function": {"name": c.function.name, "arguments": args},
        }));
    }
    Ok(serde_json::Value::Array(out))
}

/// Renders and tokenizes a conversation (no BOS added: templates write their own), with the
/// tools of `tools` when given; message contents stay data ([`Codec::encode_chat`]).
pub async fn chat_prompt(
    messages: Vec<ChatMessage>,
    tools: Option<&ToolPlan>,
    add_generation_prompt: bool,
    cfg: &ServerConfig,
    codec: &Arc<dyn Codec>,
) -> Result<Prompt, ApiError> {
    let (messages, tools_var) = render::for_template(messages, tools, codec.takes_tools());
    let big = messages.iter().map(|m| m.content.len()).sum::<usize>() > cfg.inline_tokenize_bytes;
    let c = Arc::clone(codec);
    let ids = on_pool(big, "messages", move || c.encode_chat(&messages, tools_var, add_generation_prompt)).await?;
    Ok(Prompt { ids, text: None })
}

fn codec_error(e: CodecError, param: &str) -> ApiError {
    match e {
        CodecError::Invalid(m) => ApiError::invalid(Some(param), "invalid_input", m),
        CodecError::Internal(m) => ApiError::internal(m),
    }
}

/// Runs tokenizer work inline when small, on the blocking pool when big.
async fn on_pool<T: Send + 'static>(
    big: bool,
    param: &'static str,
    f: impl FnOnce() -> Result<T, CodecError> + Send + 'static,
) -> Result<T, ApiError> {
    let r = if big {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal(format!("the tokenizer task failed: {e}")))?
    } else {
        f()
    };
    r.map_err(|e| codec_error(e, param))
}

/// Tokenizes plain text (for `/tokenize`); empty text gives no ids.
pub async fn encode_text(
    text: String,
    with_bos: bool,
    cfg: &ServerConfig,
    codec: &Arc<dyn Codec>,
) -> Result<Vec<u32>, ApiError> {
    let big = text.len() > cfg.inline_tokenize_bytes;
    let c = Arc::clone(codec);
    on_pool(big, "prompt", move || c.encode(&text, with_bos)).await
}

/// Ids past which decoding leaves the reactor for the blocking pool.
const INLINE_DECODE_IDS: usize = 4096;

/// Text of token ids (for `/detokenize`); the body limit bounds how many there can be.
pub async fn decode_ids(ids: Vec<u32>, codec: &Arc<dyn Codec>) -> Result<String, ApiError> {
    let c = Arc::clone(codec);
    on_pool(ids.len() > INLINE_DECODE_IDS, "tokens", move || c.decode(&ids)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An earlier call's arguments are an object or its text; anything else is a 400 naming
    /// the call (as `/openapi.json` says; the fuzzer sent numbers and arrays).
    #[test]
    fn tool_call_arguments_are_an_object() {
        let call = |args: serde_json::Value| {
            let msg = serde_json::json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": args}}]});
            chat_messages(Some(vec![serde_json::from_value(msg).unwrap()]))
        };
        assert!(call(serde_json::json!({"x": 1})).is_ok());
        assert!(call(serde_json::json!("{\"x\": 1}")).is_ok());
        for bad in [serde_json::json!(3), serde_json::json!([1]), serde_json::json!("[1]"), serde_json::json!("{")] {
            let e = call(bad.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("messages[0].tool_calls[0].function.arguments"), "{bad}");
        }
    }
}
