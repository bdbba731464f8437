//! The engine's [`Detokenizer`] over kiln-models' tokenizer: each choice gets a [`DetokStream`]
//! that starts after the tail of the prompt, so the first generated token is spaced as it would
//! be mid-text, and only complete UTF-8 characters are emitted. Special tokens (EOS) produce no
//! text.

use crate::tokenizer::{DetokStream, Tokenizer};
use kiln_runtime::engine::{Detokenizer, TextStream};

/// Prompt ids given to a new stream as context: enough for the decoder to place the first
/// token's leading space, few enough that its first decode stays cheap for long prompts.
const CONTEXT_TOKENS: usize = 8;

pub struct TokenizerDetokenizer {
    tokenizer: Tokenizer,
}

impl TokenizerDetokenizer {
    pub fn new(tokenizer: Tokenizer) -> Self {
        TokenizerDetokenizer { tokenizer }
    }
}

impl Detokenizer for TokenizerDetokenizer {
    fn stream(&self, prompt_ids: &[u32]) -> Box<dyn TextStream> {
        let tail = &prompt_ids[prompt_ids.len().saturating_sub(CONTEXT_TOKENS)..];
        Box::new(Stream(DetokStream::with_context(&self.tokenizer, true, tail)))
    }
}

struct Stream(DetokStream);

impl TextStream for Stream {
    fn step(&mut self, token: u32) -> Result<String, String> {
        self.0.step(token).map_err(|e| e.to_string())
    }

    fn finish(&mut self) -> Result<String, String> {
        self.0.finish().map_err(|e| e.to_string())
    }
}

/// A detokenizer for models without a tokenizer (synthetic benchmark models): no text.
pub struct NoText;

impl Detokenizer for NoText {
    fn stream(&self, _prompt_ids: &[u32]) -> Box<dyn TextStream> {
        Box::new(NoText)
    }
}

impl TextStream for NoText {
    fn step(&mut self, _token: u32) -> Result<String, String> {
        Ok(String::new())
    }
    fn finish(&mut self) -> Result<String, String> {
        Ok(String::new())
    }
}
