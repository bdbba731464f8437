//! kiln-models: model architectures written with `#[fused]` blocks, and everything needed to
//! load them: configs, weights (GGUF, safetensors), tokenizers and chat templates.

pub mod config;
pub mod convert;
pub mod fetch;
pub mod gguf;
pub mod safetensors_io;
pub mod weights;
pub mod tokenizer;
pub mod kernels;
