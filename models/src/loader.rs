//! Load a model from a path: a GGUF file (weights, config and tokenizer all inside) or an HF
//! directory (config.json, *.safetensors, tokenizer.json, tokenizer_config.json).

use crate::config::LlamaConfig;
use crate::gguf::GgufFile;
use crate::model::CausalLm;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use crate::weights::Weights;
use kiln_codegen::ir::DType;
use kiln_runtime::Device;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct LoadError {
    pub path: PathBuf,
    pub msg: String,
}

pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    /// The model's chat template, or ChatML when it has none.
    pub chat_template: ChatTemplate,
    pub path: PathBuf,
}

fn err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError { path: path.to_path_buf(), msg: e.to_string() }
}

/// What a path holds, read without the weights.
pub fn read_config_and_tokenizer(path: &Path) -> Result<(LlamaConfig, Tokenizer), LoadError> {
    if path.is_dir() {
        let cfg = LlamaConfig::from_hf_config_file(&path.join("config.json")).map_err(|e| err(path, e))?;
        let tok = Tokenizer::from_hf_dir(path).map_err(|e| err(path, e))?;
        Ok((cfg, tok))
    } else {
        let file = GgufFile::open(path).map_err(|e| err(path, e))?;
        let cfg = LlamaConfig::from_gguf(&file).map_err(|e| err(path, e))?;
        let spec = crate::gguf_tokenizer::tokenizer_spec(&file).map_err(|e| err(path, e))?;
        let tok = Tokenizer::from_gguf_spec(&spec).map_err(|e| err(path, e))?;
        Ok((cfg, tok))
    }
}

/// Load weights, config and tokenizer, and build the model on `dev` in `dtype`.
pub fn load(path: &Path, dev: &Device, dtype: DType) -> Result<LoadedModel, LoadError> {
    if !path.exists() {
        return Err(err(path, "no such file or directory"));
    }
    let (cfg, tokenizer) = read_config_and_tokenizer(path)?;
    let weights = if path.is_dir() {
        Weights::from_safetensors_dir(path).map_err(|e| err(path, e))?
    } else {
        let file = GgufFile::open(path).map_err(|e| err(path, e))?;
        Weights::from_gguf(&file, &cfg).map_err(|e| err(path, e))?
    };
    let chat_template = ChatTemplate::for_tokenizer(&tokenizer).map_err(|e| err(path, e))?;
    let model = crate::registry::build(cfg, weights, dev, dtype).map_err(|e| err(path, e))?;
    Ok(LoadedModel { model, tokenizer, chat_template, path: path.to_path_buf() })
}

/// The model of an HF directory without its tokenizer (a synthetic checkpoint from `kiln
/// synth-model` has none): config.json and the safetensors only.
pub fn load_weights_only(dir: &Path, dev: &Device, dtype: DType) -> Result<Box<dyn CausalLm>, LoadError> {
    let cfg = LlamaConfig::from_hf_config_file(&dir.join("config.json")).map_err(|e| err(dir, e))?;
    let weights = Weights::from_safetensors_dir(dir).map_err(|e| err(dir, e))?;
    crate::registry::build(cfg, weights, dev, dtype).map_err(|e| err(dir, e))
}
