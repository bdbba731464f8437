//! `convert`: a GGUF Llama model -> an HF checkpoint directory (`model.safetensors` in f32 with
//! HF names and layouts, `config.json`), so other tools can read what kiln reads.
//!
//! Invariants: the safetensors file holds exactly the tensors `Weights::from_gguf` produces
//! (dequantized, Q/K rows in HF order), so reloading it with `Weights::from_safetensors_dir`
//! gives bit-identical f32 data; each output file is written whole or not at all (temporary
//! file + rename).
//!
//! Tokenizer files (`tokenizer.json`, `tokenizer_config.json`) come from the GGUF's
//! `tokenizer.ggml.*` metadata, which the tokenizer module owns: callers pass its writer as
//! the `write_tokenizer_files` hook of `convert_gguf_to_hf_with_tokenizer`.

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, LlamaConfig};
use crate::gguf::{GgufError, GgufFile};
use crate::safetensors_io::{write_safetensors, SINGLE_FILE};
use crate::weights::{Weights, WeightsError};

pub const CONFIG_FILE: &str = "config.json";

/// The error a tokenizer-writing hook may return.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {err}", .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: writing tokenizer files failed: {err}", .out_dir.display())]
    Tokenizer { out_dir: PathBuf, err: HookError },
}

/// What a conversion wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertSummary {
    pub config: LlamaConfig,
    pub n_tensors: usize,
    pub n_params: usize,
    pub files: Vec<PathBuf>,
}

/// Writes `model.safetensors` and `config.json` for the GGUF model `gguf` into `out_dir`
/// (created if needed). Writes no tokenizer files: see `convert_gguf_to_hf_with_tokenizer`.
pub fn convert_gguf_to_hf(gguf: &Path, out_dir: &Path) -> Result<ConvertSummary, ConvertError> {
    convert_gguf_to_hf_with_tokenizer(gguf, out_dir, |_, _| Ok(Vec::new()))
}

/// `convert_gguf_to_hf`, then `write_tokenizer_files(&gguf_file, out_dir)`, which returns the
/// paths it wrote (they are added to the summary).
pub fn convert_gguf_to_hf_with_tokenizer(
    gguf: &Path,
    out_dir: &Path,
    write_tokenizer_files: impl FnOnce(&GgufFile, &Path) -> Result<Vec<PathBuf>, HookError>,
) -> Result<ConvertSummary, ConvertError> {
    let file = GgufFile::open(gguf)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let weights = Weights::from_gguf(&file, &config)?;
    std::fs::create_dir_all(out_dir).map_err(|err| ConvertError::Io { path: out_dir.to_path_buf(), err })?;

    let st_path = out_dir.join(SINGLE_FILE);
    write_safetensors(&st_path, &weights)?;
    let cfg_path = out_dir.join(CONFIG_FILE);
    write_json(&cfg_path, &config.to_hf_config_json())?;

    let mut files = vec![st_path, cfg_path];
    let tokenizer_files = write_tokenizer_files(&file, out_dir)
        .map_err(|err| ConvertError::Tokenizer { out_dir: out_dir.to_path_buf(), err })?;
    files.extend(tokenizer_files);
    Ok(ConvertSummary {
        n_tensors: weights.len(),
        n_params: weights.iter().map(|(_, t)| t.numel()).sum(),
        config,
        files,
    })
}

/// Writes pretty-printed JSON to `path` via a temporary file and a rename.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ConvertError> {
    let io = |err| ConvertError::Io { path: path.to_path_buf(), err };
    let mut text = serde_json::to_string_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    text.push('\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
