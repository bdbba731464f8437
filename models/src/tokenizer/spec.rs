//! `GgufTokenizerSpec`: the tokenizer facts a GGUF file carries in its `tokenizer.*` metadata,
//! as a plain struct, so the tokenizer builder does not depend on the GGUF container reader.
//!
//! Invariants the builder checks (not this struct): `token_types` is empty or as long as
//! `tokens`; every id field indexes into `tokens`.

/// Tokenizer metadata of a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufTokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` for byte-level BPE, `"llama"` for SentencePiece BPE
    /// with byte fallback (merges derived from `scores`).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer (split regex) the model was trained with.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary; a token's id is its index.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (see [`GgufTokenType`]); may be empty.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: BPE merges in priority order, each `"left right"`.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores`, one per token (SentencePiece models: a higher score merges
    /// first); may be empty.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece models): whether text gets a leading
    /// `▁`. Absent means llama.cpp's default, true.
    pub add_space_prefix: Option<bool>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: whether prompts start with BOS by default.
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template`: the Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
}

/// The meaning of a `tokenizer.ggml.token_type` entry (llama.cpp's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTokenType {
    Normal,
    Unknown,
    /// Control tokens (`<|im_start|>`, `<|endoftext|>`): special, skipped when asked.
    Control,
    /// Tokens a user added to the vocabulary: matched whole in text, but ordinary text.
    UserDefined,
    Unused,
    /// Raw byte tokens (`<0x0A>`) of SentencePiece byte fallback.
    Byte,
}

impl GgufTokenType {
    /// Maps the stored integer; unknown codes count as normal tokens, which is what they
    /// are to BPE (the type only decides how a token is matched and skipped).
    pub fn from_code(code: i32) -> Self {
        match code {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}
