//! `POST /v1/completions`: request, response, stream chunk.

use super::common::{SamplingFields, StopSpec, StreamOptions, UsageInfo};
use super::guided::{GuidedFields, ResponseFormat};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `max_tokens` of a completions request that gives none (OpenAI's default).
pub const DEFAULT_MAX_TOKENS: usize = 16;

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

// The example is a streamed request: the OpenAPI fuzz's examples phase sends it, so every run
// streams at least once whatever it generates.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[schema(example = json!({"prompt": "Hello", "max_tokens": 4, "stream": true}))]
pub struct CompletionRequest {
    /// The served model name (optional here; the server serves one model).
    pub model: Option<String>,
    // `Option` so that a missing one is our 400 naming it (`missing_field`), not serde's.
    #[schema(required = true, value_type = PromptInput)]
    pub prompt: Option<PromptInput>,
    /// Most tokens to generate; default 16 (as OpenAI's completions API); prompt + output fit
    /// the context (`max_model_len` of `/v1/models`).
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// 0 means greedy; at most 100.
    #[schema(minimum = 0, maximum = 100)]
    pub temperature: Option<f32>,
    /// In (0, 1].
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    /// -1 or 0: off.
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f32>,
    /// Choices per prompt (at most `--max-n`, default 16).
    #[schema(minimum = 1)]
    pub n: Option<u64>,
    pub stop: Option<StopSpec>,
    #[schema(max_items = 64)]
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<i64>,
    /// Return this many top log-probabilities per token (0..=20).
    #[schema(maximum = 20)]
    pub logprobs: Option<u32>,
    /// Prepend the prompt text to each choice.
    pub echo: Option<bool>,
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
    /// Beam search (extension): `best_of` beams, the best `n` returned.
    pub use_beam_search: Option<bool>,
    #[schema(minimum = 1)]
    pub best_of: Option<u64>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<bool>,
    /// Not supported: a non-empty map is refused with 400.
    #[schema(schema_with = super::schema::unsupported_map)]
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
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
}

impl CompletionRequest {
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
        SamplingFields {
            max_tokens: self.max_tokens,
            max_tokens_param: "max_tokens",
            default_max_tokens: Some(DEFAULT_MAX_TOKENS),
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
            logprobs: self.logprobs,
            logprobs_param: "logprobs",
            use_beam_search: self.use_beam_search,
            best_of: self.best_of,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            logit_bias_entries: self.logit_bias.as_ref().map_or(0, |m| m.len()),
        }
    }
}

/// Legacy completions logprobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop`, `length`, `abort`; null in stream chunks until the choice ends.
    pub finish_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    /// `text_completion`
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    /// Absent in stream chunks except the last one when `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageInfo>,
}
