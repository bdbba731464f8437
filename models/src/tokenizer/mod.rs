//! Tokenizer: text <-> token ids for a model, on top of Hugging Face `tokenizers`, plus the
//! chat template and incremental detokenization the engine needs.
//!
//! A `Tokenizer` comes from an HF `tokenizer.json` (+ optional `tokenizer_config.json`) or is
//! built from GGUF metadata ([`GgufTokenizerSpec`]) to equal the model's original
//! tokenizer.json. Invariants:
//! - `encode` recognises special tokens written in the text (`<|im_start|>` is one id) and
//!   adds BOS only when asked: BOS is the caller's decision, never the post-processor's;
//!   `encode_plain` never does (text that spells a special token is tokenized as text), for
//!   input that must stay data (message contents, tool results).
//! - `decode(encode(x)) == x` for byte-level BPE (every byte sequence is representable).
//! - The special-token names held here all exist in the vocabulary (checked at construction).
//! - Cloning is cheap (the HF tokenizer is shared), so each request's [`DetokStream`] can own one.

mod chat;
mod config;
mod detok;
mod error;
mod from_gguf;
mod pretok;
mod spec;

use std::path::Path;
use std::sync::Arc;

use tokenizers::PostProcessor;

pub use chat::{ChatMessage, ChatTemplate, RenderOptions, CHATML_TEMPLATE, GEMMA_TEMPLATE};
pub use config::SpecialTokens;
pub use detok::DetokStream;
pub use error::{ChatTemplateError, TokenizerError};
pub use pretok::SUPPORTED_PRE;
pub use spec::{GgufTokenType, GgufTokenizerSpec};

/// Token strings that end a turn in common chat formats. Besides the declared EOS, a model
/// may emit any of these that its vocabulary has as a special token, and generation should
/// stop there too (SmolLM2's declared EOS is `<|im_end|>`, yet it can emit `<|endoftext|>`).
const END_OF_TURN_TOKENS: &[&str] =
    &["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>"];

/// A model's tokenizer. See the module docs for its invariants.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// The same tokenizer with special-token matching off (`encode_plain`).
    plain: Arc<tokenizers::Tokenizer>,
    /// The texts of the special added tokens.
    special_texts: Arc<[String]>,
    specials: SpecialTokens,
    /// Cached: `tokenizers` rebuilds its whole vocabulary map to count it (milliseconds).
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).field("specials", &self.specials).finish()
    }
}

impl Tokenizer {
    /// Wraps an HF tokenizer, checking that every named special token is in its vocabulary.
    pub fn new(inner: tokenizers::Tokenizer, specials: SpecialTokens) -> Result<Self, TokenizerError> {
        let named =
            [("BOS", &specials.bos), ("EOS", &specials.eos), ("unknown", &specials.unk), ("padding", &specials.pad)];
        for (what, token) in named {
            if let Some(token) = token {
                if inner.token_to_id(token).is_none() {
                    return Err(TokenizerError::MissingToken { what, token: token.clone() });
                }
            }
        }
        let vocab_size = inner.get_vocab_size(true);
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let special_texts: Arc<[String]> =
            inner.get_added_tokens_decoder().into_values().filter(|t| t.special).map(|t| t.content).collect();
        Ok(Self { inner: Arc::new(inner), plain: Arc::new(plain), special_texts, specials, vocab_size })
    }

    /// Loads an HF `tokenizer.json` alone; no special-token roles are known.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|source| TokenizerError::Load { path: path.to_path_buf(), source })?;
        let specials = SpecialTokens { add_bos: adds_bos(&inner), ..SpecialTokens::default() };
        Self::new(inner, specials)
    }

    /// Loads an HF tokenizer directory: `tokenizer.json`, plus `tokenizer_config.json` and
    /// `chat_template.jinja` when present.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let json_path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&json_path)
            .map_err(|source| TokenizerError::Load { path: json_path, source })?;
        let config_path = dir.join("tokenizer_config.json");
        let mut specials = match read_optional(&config_path)? {
            Some(text) => {
                let value =
                    serde_json::from_str(&text).map_err(|source| TokenizerError::Json { path: config_path, source })?;
                config::from_config_json(&value, adds_bos(&inner))?
            }
            None => SpecialTokens { add_bos: adds_bos(&inner), ..SpecialTokens::default() },
        };
        // Newer transformers versions save the template as its own file.
        if specials.chat_template.is_none() {
            specials.chat_template = read_optional(&dir.join("chat_template.jinja"))?;
        }
        Self::new(inner, specials)
    }

    /// Builds the tokenizer a GGUF file describes (see [`GgufTokenizerSpec`]).
    pub fn from_gguf_spec(spec: &GgufTokenizerSpec) -> Result<Self, TokenizerError> {
        let (inner, specials) = from_gguf::build(spec)?;
        Self::new(inner, specials)
    }

    /// Token ids of `text`; special tokens written in it are matched whole. BOS is prepended
    /// only when `add_bos` is true and the model has one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode_fast(text, false).map_err(TokenizerError::Encode)?;
        let ids = encoding.get_ids();
        match self.bos_id().filter(|_| add_bos) {
            Some(bos) => Ok(std::iter::once(bos).chain(ids.iter().copied()).collect()),
            None => Ok(ids.to_vec()),
        }
    }

    /// Token ids of `text` with every character taken as text: a special token's spelling
    /// (`<|im_end|>`) gives the ordinary tokens of those characters, never the special id.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.plain.encode_fast(text, false).map_err(TokenizerError::Encode)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The texts of the special added tokens (what [`Tokenizer::encode`] turns into one id).
    pub fn special_texts(&self) -> &[String] {
        &self.special_texts
    }

    /// Text of `ids`. With `skip_special`, special tokens (BOS, `<|im_end|>`, ...) are left
    /// out. Ids outside the vocabulary contribute nothing (the HF decoder skips them).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special).map_err(TokenizerError::Decode)
    }

    /// The stored token string (byte-level form, e.g. `Ġthe`), not its decoded text.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether `id` is a special added token (dropped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_vocabulary().get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.id_of(&self.specials.bos)
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.id_of(&self.specials.pad)
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.id_of(&self.specials.unk)
    }

    /// Ids that end generation: the declared EOS first, then any other end-of-turn special
    /// token of [`END_OF_TURN_TOKENS`] the vocabulary has. No duplicates.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.id_of(&self.specials.eos).into_iter().collect();
        for token in END_OF_TURN_TOKENS {
            if let Some(id) = self.inner.token_to_id(token) {
                if self.is_special(id) && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// Whether prompts should start with BOS by default (GGUF `add_bos_token`).
    pub fn add_bos_by_default(&self) -> bool {
        self.specials.add_bos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.specials.chat_template.as_deref()
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.specials
    }

    /// The HF `tokenizer.json` text of this tokenizer.
    pub fn to_tokenizer_json(&self, pretty: bool) -> Result<String, TokenizerError> {
        self.inner.to_string(pretty).map_err(TokenizerError::Serialize)
    }

    /// Writes the HF `tokenizer.json`.
    pub fn save_tokenizer_json(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        let text = self.to_tokenizer_json(false)?;
        std::fs::write(path, text).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })
    }

    /// The HF `tokenizer_config.json` (special tokens, BOS convention, chat template).
    pub fn tokenizer_config_json(&self) -> serde_json::Value {
        config::to_config_json(&self.inner, &self.specials)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (which must exist), so
    /// [`Tokenizer::from_hf_dir`] or HF transformers can load it.
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let dir = dir.as_ref();
        self.save_tokenizer_json(dir.join("tokenizer.json"))?;
        let path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&self.tokenizer_config_json())
            .map_err(|e| TokenizerError::Serialize(e.into()))?;
        std::fs::write(&path, text).map_err(|source| TokenizerError::Io { path, source })
    }

    fn id_of(&self, token: &Option<String>) -> Option<u32> {
        token.as_deref().and_then(|t| self.inner.token_to_id(t))
    }
}

/// Whether the tokenizer.json post-processor inserts tokens (a BOS template) on its own.
fn adds_bos(inner: &tokenizers::Tokenizer) -> bool {
    inner.get_post_processor().is_some_and(|p| p.added_tokens(false) > 0)
}

fn read_optional(path: &Path) -> Result<Option<String>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io { path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests;
