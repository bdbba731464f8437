//! Request pieces shared by completions and chat, and the `usage` object.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `stop`: one string or a list of strings.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and empty `choices`) before `[DONE]`.
    pub include_usage: Option<bool>,
}

/// The sampling and decoding fields of a request, gathered from either route's flat fields.
#[derive(Clone, Debug, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<u64>,
    /// Which field `max_tokens` came from (for error `param`s).
    pub max_tokens_param: &'static str,
    /// Used when `max_tokens` is absent (`None`: what the context leaves).
    pub default_max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub n: Option<u64>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    /// Top alternatives per token; `Some` turns logprobs on.
    pub logprobs: Option<u32>,
    /// The field `logprobs` came from (`logprobs` or `top_logprobs`).
    pub logprobs_param: &'static str,
    pub use_beam_search: Option<bool>,
    pub best_of: Option<u64>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<bool>,
    pub logit_bias_entries: usize,
}

/// Token counts of a request.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct UsageInfo {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl UsageInfo {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        UsageInfo {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
        }
    }
}
