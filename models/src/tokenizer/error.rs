//! Typed errors for tokenizer loading, encoding/decoding and chat-template rendering.
//!
//! Invariant: no tokenizer path panics on bad input; every failure becomes one of these
//! variants, carrying enough context (path, token, index) to act on without a debugger.

use std::path::PathBuf;

/// The error type the `tokenizers` crate returns (a boxed trait object).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a tokenizer could not be built, loaded, saved or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load tokenizer from {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("tokenizer model `{0}` is not supported (byte-level BPE `gpt2` and SentencePiece BPE `llama` are)")]
    UnsupportedModel(String),
    #[error(
        "pre-tokenizer `{0}` (tokenizer.ggml.pre) is not supported; supported: {supported}",
        supported = crate::tokenizer::pretok::SUPPORTED_PRE.join(", ")
    )]
    UnsupportedPreTokenizer(String),
    #[error("{tokens} tokens but {types} token types: the two arrays must have the same length")]
    TokenTypesLength { tokens: usize, types: usize },
    #[error("{tokens} tokens but {scores} token scores: a SentencePiece vocabulary needs one score per token")]
    ScoresLength { tokens: usize, scores: usize },
    #[error("token `{token}` appears twice in the vocabulary (ids {first} and {second})")]
    DuplicateToken { token: String, first: u32, second: u32 },
    #[error("merge #{index} `{merge}` is not two space-separated tokens")]
    BadMerge { index: usize, merge: String },
    #[error("{what} id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenIdOutOfRange { what: &'static str, id: u32, vocab_size: usize },
    #[error("{what} token `{token}` is not in the vocabulary")]
    MissingToken { what: &'static str, token: String },
    #[error("{field} in tokenizer_config.json has an unexpected shape: {detail}")]
    ConfigField { field: &'static str, detail: String },
    #[error("cannot build the tokenizer: {0}")]
    Build(#[source] BoxError),
    #[error("cannot encode text: {0}")]
    Encode(#[source] BoxError),
    #[error("cannot decode token ids: {0}")]
    Decode(#[source] BoxError),
    #[error("cannot serialize the tokenizer: {0}")]
    Serialize(#[source] BoxError),
}

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("chat template does not compile{}: {message}", at_line(*line))]
    Syntax { message: String, line: Option<usize> },
    #[error("chat template failed while rendering{}: {message}", at_line(*line))]
    Render { message: String, line: Option<usize> },
    /// The template itself called `raise_exception(...)`, e.g. to reject a role order.
    #[error("chat template rejected the conversation: {message}")]
    Raised { message: String },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}
