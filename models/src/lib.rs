//! kiln-models: model architectures written with `#[fused]` blocks, and everything needed to
//! load them: configs, weights (GGUF, safetensors), tokenizers and chat templates.

pub mod tokenizer;
pub mod gguf;
pub mod config;
pub mod weights;
pub mod safetensors_io;
pub mod fetch;
pub mod convert;
pub mod kernels;
pub mod generate;
pub mod detok_adapter;
pub mod gguf_tokenizer;
pub mod graphs;
pub mod llama;
pub mod loader;
pub mod model;
pub mod model_check;
pub mod registry;
pub mod step;
pub mod synth;
