//! `POST /v1/chat/completions`: request, response, stream chunk.

use super::common::{SamplingFields, StopSpec, StreamOptions, UsageInfo};
use super::guided::{GuidedFields, ResponseFormat};
use super::tools::{ToolCallDelta, ToolCallIn, ToolCallOut, ToolChoice, ToolDef};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A message's `content`: a string or a list of parts (only `text` parts are supported).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    #[schema(schema_with = super::schema::text_part_type)]
    pub kind: String,
    // `Option` so that a part without it is our 400 naming the part, not serde's.
    #[schema(required = true, value_type = String)]
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    #[schema(schema_with = super::schema::role)]
    pub role: String,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    /// An assistant turn's earlier tool calls.
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
}

// The example is a streamed request: the OpenAPI fuzz's examples phase sends it, so every run
// streams at least once whatever it generates.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": true}))]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    // `Option` so that a missing one is our 400 naming it (`missing_field`), not serde's.
    /// The conversation (at least one message).
    #[schema(required = true, value_type = Vec<ChatMessageIn>, min_items = 1)]
    pub messages: Option<Vec<ChatMessageIn>>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// Preferred over `max_tokens` when both are given.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u64>,
    #[schema(minimum = 0, maximum = 100)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f32>,
    #[schema(minimum = 1)]
    pub n: Option<u64>,
    pub stop: Option<StopSpec>,
    #[schema(max_items = 64)]
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<i64>,
    /// Return the chosen tokens' log-probabilities.
    pub logprobs: Option<bool>,
    /// With `logprobs`: this many alternatives per token (0..=20).
    #[schema(maximum = 20)]
    pub top_logprobs: Option<u32>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    #[schema(minimum = 0.001, maximum = 10)]
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub use_beam_search: Option<bool>,
    #[schema(minimum = 1)]
    pub best_of: Option<u64>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<bool>,
    /// Not supported: a non-empty map is refused with 400.
    #[schema(schema_with = super::schema::unsupported_map)]
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// Functions the model may call (rendered by the chat template, or described in the system
    /// message when the template takes no tools).
    pub tools: Option<Vec<ToolDef>>,
    /// `none`, `auto` (default with tools), `required`, or a named function; with `required`
    /// or a named function the call's arguments follow the function's JSON schema.
    pub tool_choice: Option<ToolChoice>,
    /// Let `required` produce several calls (default true).
    pub parallel_tool_calls: Option<bool>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}`.
    pub response_format: Option<ResponseFormat>,
    /// vLLM extension: a JSON schema (an object, or its text) the output follows.
    #[schema(schema_with = super::schema::optional_object_or_text)]
    pub guided_json: Option<serde_json::Value>,
    /// vLLM extension: the whole output matches this regular expression.
    pub guided_regex: Option<String>,
    /// vLLM extension: the output is exactly one of these strings.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM extension: a Lark grammar (llguidance's dialect) the output follows.
    pub guided_grammar: Option<String>,
    /// Append the assistant-turn header to the prompt (default true).
    pub add_generation_prompt: Option<bool>,
}

impl ChatCompletionRequest {
    pub fn guided(&self) -> GuidedFields {
        GuidedFields {
            response_format: self.response_format.clone(),
            guided_json: self.guided_json.clone(),
            guided_regex: self.guided_regex.clone(),
            guided_choice: self.guided_choice.clone(),
            guided_grammar: self.guided_grammar.clone(),
        }
    }
    pub fn sampling(&self) -> SamplingFields {
        let (max_tokens, max_tokens_param) = match self.max_completion_tokens {
            Some(m) => (Some(m), "max_completion_tokens"),
            None => (self.max_tokens, "max_tokens"),
        };
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), top) => Some(top.unwrap_or(0)),
            // Without `logprobs: true` nothing is returned, but an out-of-range value is still
            // refused (the schema's bound holds whatever else the request says).
            (_, Some(top)) if top as usize > kiln_runtime::sample::params::MAX_LOGPROBS => Some(top),
            _ => None,
        };
        SamplingFields {
            max_tokens,
            max_tokens_param,
            default_max_tokens: None,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            n: self.n,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repetition_penalty: self.repetition_penalty,
            ignore_eos: self.ignore_eos,
            logprobs,
            logprobs_param: "top_logprobs",
            use_beam_search: self.use_beam_search,
            best_of: self.best_of,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            logit_bias_entries: self.logit_bias.as_ref().map_or(0, |m| m.len()),
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatMessageOut {
    /// `assistant`
    pub role: &'static str,
    /// Null when the reply is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TokenLogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprobOut>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// `chat.completion`
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageInfo,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// `chat.completion.chunk`
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logprobs_of(json: &str) -> Option<u32> {
        serde_json::from_str::<ChatCompletionRequest>(json).unwrap().sampling().logprobs
    }

    /// `top_logprobs` counts only with `logprobs: true`, but its range holds either way: 21
    /// alone reaches validation (a 400 naming it) instead of being dropped silently.
    #[test]
    fn top_logprobs_is_range_checked_even_without_logprobs() {
        let m = r#""messages": [{"role": "user", "content": "hi"}]"#;
        assert_eq!(logprobs_of(&format!("{{{m}, \"logprobs\": true, \"top_logprobs\": 3}}")), Some(3));
        assert_eq!(logprobs_of(&format!("{{{m}, \"top_logprobs\": 3}}")), None);
        assert_eq!(logprobs_of(&format!("{{{m}, \"top_logprobs\": 21}}")), Some(21));
        assert_eq!(logprobs_of(&format!("{{{m}, \"logprobs\": false, \"top_logprobs\": 21}}")), Some(21));
    }
}
