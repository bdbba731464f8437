//! Reads a GGUF file's `tokenizer.*` metadata into a [`GgufTokenizerSpec`], the plain struct
//! the tokenizer builder takes (so the tokenizer does not depend on the container reader).

use crate::gguf::{GgufFile, MetadataArray, MetadataValue};
use crate::tokenizer::GgufTokenizerSpec;

#[derive(Debug, thiserror::Error)]
#[error("{path}: tokenizer metadata `{key}`: {what}")]
pub struct GgufTokenizerError {
    pub path: String,
    pub key: &'static str,
    pub what: String,
}

pub fn tokenizer_spec(file: &GgufFile) -> Result<GgufTokenizerSpec, GgufTokenizerError> {
    let err = |key: &'static str, what: &str| GgufTokenizerError {
        path: file.path().display().to_string(),
        key,
        what: what.to_string(),
    };
    let string = |key: &'static str| file.get(key).and_then(MetadataValue::as_str).map(str::to_string);
    let id = |key: &'static str| -> Result<Option<u32>, GgufTokenizerError> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().and_then(|x| u32::try_from(x).ok()).map(Some).ok_or_else(|| err(key, "not a token id"))
            }
        }
    };
    let strings = |key: &'static str| -> Result<Vec<String>, GgufTokenizerError> {
        match file.get(key) {
            None => Ok(vec![]),
            Some(MetadataValue::Array(MetadataArray::String(v))) => Ok(v.clone()),
            Some(_) => Err(err(key, "not an array of strings")),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(err("tokenizer.ggml.tokens", "missing or empty"));
    }
    let token_types = match file.get("tokenizer.ggml.token_type") {
        None => vec![],
        Some(MetadataValue::Array(MetadataArray::I32(v))) => v.clone(),
        Some(MetadataValue::Array(MetadataArray::U32(v))) => v.iter().map(|&x| x as i32).collect(),
        Some(_) => return Err(err("tokenizer.ggml.token_type", "not an array of integers")),
    };
    let scores = match file.get("tokenizer.ggml.scores") {
        None => vec![],
        Some(MetadataValue::Array(MetadataArray::F32(v))) => v.clone(),
        Some(_) => return Err(err("tokenizer.ggml.scores", "not an array of f32")),
    };
    Ok(GgufTokenizerSpec {
        model: string("tokenizer.ggml.model").ok_or_else(|| err("tokenizer.ggml.model", "missing"))?,
        pre: string("tokenizer.ggml.pre"),
        tokens,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        scores,
        add_space_prefix: file.get("tokenizer.ggml.add_space_prefix").and_then(MetadataValue::as_bool),
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        add_bos: file.get("tokenizer.ggml.add_bos_token").and_then(MetadataValue::as_bool),
        chat_template: string("tokenizer.chat_template"),
    })
}

/// `kiln convert`'s tokenizer step: write tokenizer.json and tokenizer_config.json for the
/// GGUF's tokenizer into `out_dir`; returns the files written.
pub fn write_tokenizer_files(
    file: &GgufFile,
    out_dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, Box<dyn std::error::Error + Send + Sync>> {
    let tok = crate::tokenizer::Tokenizer::from_gguf_spec(&tokenizer_spec(file)?)?;
    tok.save_hf_dir(out_dir)?;
    Ok(vec![out_dir.join("tokenizer.json"), out_dir.join("tokenizer_config.json")])
}
