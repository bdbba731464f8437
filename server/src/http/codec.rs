//! [`Codec`]: text ↔ token ids and chat rendering, as the HTTP layer needs them. The real one
//! wraps the model's tokenizer and chat template ([`crate::engine_backend::ModelCodec`]).
//!
//! Invariant: codec calls never panic on user input; text that can't be tokenized or rendered
//! (a template's `raise_exception`) is [`CodecError::Invalid`] (HTTP 400), anything else
//! `Internal` (HTTP 500).

use crate::structured::Structured;
use kiln_models::tokenizer::ChatMessage;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The input can't be encoded or rendered as given.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

pub trait Codec: Send + Sync + 'static {
    /// Token ids of `text` (special tokens written in it are recognised); BOS prepended when
    /// `with_bos` and the model has one.
    fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>, CodecError>;
    /// Whether plain prompts start with BOS for this model.
    fn default_bos(&self) -> bool;
    /// Text of `ids`, special tokens left out.
    fn decode(&self, ids: &[u32]) -> Result<String, CodecError>;
    /// The text of one token, for logprobs (lossy for partial UTF-8).
    fn token_text(&self, id: u32) -> String;
    /// The prompt text of a conversation, through the model's chat template.
    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, CodecError>;
    fn vocab_size(&self) -> usize;

    /// The prompt ids of a conversation (with `tools` for templates that take them). A real
    /// model's codec keeps message contents as data: text in them that spells a special
    /// token is tokenized as text; only the template's own markup yields special tokens.
    fn encode_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, CodecError> {
        let _ = tools;
        let text = self.render_chat(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// Whether the chat template renders a `tools` variable itself.
    fn takes_tools(&self) -> bool {
        false
    }

    /// The grammar engine for this tokenizer (structured output), if it could be built.
    fn structured(&self) -> Option<&Structured> {
        None
    }
}
