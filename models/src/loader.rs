//! Load a model from a path: a GGUF file (weights, config and tokenizer all inside) or an HF
//! directory (config.json, *.safetensors, tokenizer.json, tokenizer_config.json).
//!
//! The checkpoint is opened without its weights ([`Checkpoint`]), the registry's entry for
//! its architecture parses the config and builds the model from the memory-mapped weights,
//! tensor by tensor, and the load fails on any tensor the architecture did not consume.

use crate::arch::Checkpoint;
pub use crate::arch::WeightMode;
use crate::model::CausalLm;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use crate::tp::TpModel;
use kiln_runtime::DType;
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

fn open(path: &Path, mode: WeightMode) -> Result<Checkpoint, LoadError> {
    if !path.exists() {
        return Err(err(path, "no such file or directory"));
    }
    let mut ckpt = Checkpoint::open(path).map_err(|e| err(path, e))?;
    ckpt.set_weight_mode(mode);
    Ok(ckpt)
}

/// The tokenizer of a checkpoint: its GGUF metadata, or the directory's tokenizer files.
fn tokenizer(ckpt: &Checkpoint) -> Result<Tokenizer, LoadError> {
    let path = ckpt.path();
    match ckpt.gguf() {
        Some(file) => {
            let spec = crate::gguf_tokenizer::tokenizer_spec(file).map_err(|e| err(path, e))?;
            Tokenizer::from_gguf_spec(&spec).map_err(|e| err(path, e))
        }
        None => Tokenizer::from_hf_dir(path).map_err(|e| err(path, e)),
    }
}

/// Load weights, config and tokenizer, and build the model on `dev` in `dtype`, quantized
/// projections kept as stored where the device has kernels for them ([`WeightMode::Stored`]).
pub fn load(path: &Path, dev: &Device, dtype: DType) -> Result<LoadedModel, LoadError> {
    load_with(path, dev, dtype, WeightMode::Stored)
}

/// [`load`] with the weights held as `mode` says.
pub fn load_with(path: &Path, dev: &Device, dtype: DType, mode: WeightMode) -> Result<LoadedModel, LoadError> {
    let ckpt = open(path, mode)?;
    let tokenizer = tokenizer(&ckpt)?;
    let chat_template = ChatTemplate::for_tokenizer(&tokenizer).map_err(|e| err(path, e))?;
    let model = crate::registry::build(&ckpt, dev, dtype).map_err(|e| err(path, e))?.model;
    Ok(LoadedModel { model, tokenizer, chat_template, path: path.to_path_buf() })
}

/// [`load_with`] over `devices.len()` tensor-parallel ranks, rank `r` on `devices[r]` (one
/// device: the plain model). CPU ranks talk through the in-process CPU group, CUDA ranks
/// through NCCL.
pub fn load_parallel(
    path: &Path,
    devices: &[Device],
    dtype: DType,
    mode: WeightMode,
) -> Result<LoadedModel, LoadError> {
    let [dev] = devices else {
        let ckpt = open(path, mode)?;
        let tokenizer = tokenizer(&ckpt)?;
        let chat_template = ChatTemplate::for_tokenizer(&tokenizer).map_err(|e| err(path, e))?;
        let model = Box::new(build_parallel(path, devices, dtype, mode)?);
        return Ok(LoadedModel { model, tokenizer, chat_template, path: path.to_path_buf() });
    };
    load_with(path, dev, dtype, mode)
}

/// The tensor-parallel model of a checkpoint over `devices` (no tokenizer), each rank built from
/// its own view of the checkpoint, one after the other.
pub fn build_parallel(path: &Path, devices: &[Device], dtype: DType, mode: WeightMode) -> Result<TpModel, LoadError> {
    let comms = crate::tp::group(devices).map_err(|e| err(path, e))?;
    let mut ranks = Vec::with_capacity(devices.len());
    for (dev, comm) in devices.iter().zip(&comms) {
        let mut ckpt = open(path, mode)?;
        ckpt.set_tp(Some(comm.clone()));
        ranks.push(crate::registry::build(&ckpt, dev, dtype).map_err(|e| err(path, e))?.model);
    }
    TpModel::new(ranks, comms).map_err(|e| err(path, e))
}

/// The model of a checkpoint without its tokenizer (a synthetic checkpoint from `kiln
/// synth-model`, a test fixture): config and weights only.
pub fn load_weights_only(path: &Path, dev: &Device, dtype: DType) -> Result<Box<dyn CausalLm>, LoadError> {
    load_weights_only_with(path, dev, dtype, WeightMode::Stored)
}

/// [`load_weights_only`] with the weights held as `mode` says.
pub fn load_weights_only_with(
    path: &Path,
    dev: &Device,
    dtype: DType,
    mode: WeightMode,
) -> Result<Box<dyn CausalLm>, LoadError> {
    let ckpt = open(path, mode)?;
    Ok(crate::registry::build(&ckpt, dev, dtype).map_err(|e| err(path, e))?.model)
}
