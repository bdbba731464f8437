//! `POST /tokenize` and `POST /detokenize` (the vLLM shapes).

use super::chat::ChatMessageIn;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Either `prompt` (plain text) or `messages` (rendered through the chat template).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    /// Prepend BOS as plain prompts do (default true; ignored for `messages`).
    pub add_special_tokens: Option<bool>,
    /// For `messages`: append the assistant-turn header (default true).
    pub add_generation_prompt: Option<bool>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: usize,
    pub max_model_len: usize,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    // `Option` so that a missing one is our 400 naming it (`missing_field`), not serde's.
    #[schema(required = true, value_type = Vec<u32>)]
    pub tokens: Option<Vec<u32>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
