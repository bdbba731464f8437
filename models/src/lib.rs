//! kiln-models: model architectures written with `#[fused]` blocks, and everything needed to
//! load them: configs, weights (GGUF, safetensors), tokenizers and chat templates.

pub mod arch;
pub mod calibration;
pub mod config;
pub mod convert;
pub mod decoder;
pub mod detok_adapter;
pub mod falcon;
pub mod fetch;
pub mod gemma;
pub mod generate;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod kernels;
pub mod kv_fp8;
pub mod llama;
pub mod loader;
pub mod mixtral;
pub mod model;
pub mod model_check;
pub mod perplexity;
pub mod phi3;
pub mod quantize_ct;
pub mod quantize_gguf;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3_moe;
pub mod registry;
pub mod safetensors_io;
pub mod smoothquant;
pub mod synth;
pub mod tokenizer;
pub mod tp;
pub mod weights;
