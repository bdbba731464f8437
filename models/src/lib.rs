//! kiln-models: model architectures written with `#[fused]` blocks, and everything needed to
//! load them: configs, weights (GGUF, safetensors), tokenizers and chat templates.
