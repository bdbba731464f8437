//! How big the KV pool is, and the context length the engine then promises.
//!
//! `blocks = kv_cache_bytes / (kv_bytes_per_token * block_size)`, where `kv_cache_bytes` is the
//! configured budget or a default for the device, capped at what `max_num_seqs` sequences of
//! `max_model_len` tokens could ever use (a CPU run of a small model should not zero gigabytes it
//! cannot fill). The effective `max_model_len` is the configured (or the model's) context
//! length, lowered to what the whole pool holds, so that every request that passes `submit`'s
//! length check can also be stored.

use super::api::EngineConfig;
use super::error::EngineError;
use crate::kv::KvLayout;
use crate::model::ModelInfo;
use crate::Device;

/// Default KV budget on the CPU.
pub const DEFAULT_KV_BYTES_CPU: usize = 256 << 20;
/// Default KV budget on a GPU when its free memory cannot be read.
pub const DEFAULT_KV_BYTES_GPU: usize = 4 << 30;
/// Of the GPU memory free once the weights are loaded, the share the KV pool takes by default.
pub const GPU_KV_FRACTION: f64 = 0.85;
/// Left free on the GPU besides that share: activations, cuBLAS workspace, graphs.
pub const GPU_HEADROOM_BYTES: usize = 2 << 30;

/// The default KV budget on `device`: a fixed size on the CPU; on a GPU a share of its free
/// memory (measured now, after the weights are loaded) minus headroom.
fn default_budget(device: &Device) -> usize {
    match device.cuda_backend().map(|b| b.free_mem()) {
        None => DEFAULT_KV_BYTES_CPU,
        Some(Ok(free)) => ((free as f64 * GPU_KV_FRACTION) as usize).saturating_sub(GPU_HEADROOM_BYTES).max(64 << 20),
        Some(Err(_)) => DEFAULT_KV_BYTES_GPU,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizing {
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_model_len: usize,
}

pub(crate) fn size(info: &ModelInfo, device: &Device, cfg: &EngineConfig) -> Result<Sizing, EngineError> {
    let bad = |m: String| Err(EngineError::InvalidConfig(m));
    if cfg.block_size == 0 {
        return bad("block_size is 0".into());
    }
    let mut max_len = cfg.max_model_len.unwrap_or(info.max_model_len);
    if max_len == 0 {
        return bad("max_model_len is 0".into());
    }
    if max_len > info.max_model_len {
        return bad(format!("max_model_len {max_len} exceeds the model's context length {}", info.max_model_len));
    }
    // One allocator group: every KV layer has the same block shape (see model::kv_spec).
    let Some((num_kv_heads, head_dim)) = info.uniform_kv() else {
        return bad("a model whose layers keep KV of different shapes (or none) is not supported yet".into());
    };
    let layout = KvLayout {
        num_layers: info.kv_layers().count(),
        num_kv_heads,
        head_dim,
        dtype_bytes: info.kv_elem_bytes(),
        block_size: cfg.block_size,
    };
    let budget = cfg.kv_cache_bytes.unwrap_or_else(|| default_budget(device));
    let mut num_blocks = layout.blocks_for_budget(budget as u64)?;
    if cfg.kv_cache_bytes.is_none() {
        let most = cfg.max_num_seqs.max(1).saturating_mul(max_len.div_ceil(cfg.block_size));
        num_blocks = num_blocks.min(most).max(1);
    }
    max_len = max_len.min(num_blocks.saturating_mul(cfg.block_size));
    Ok(Sizing { num_blocks, block_size: cfg.block_size, max_model_len: max_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn info() -> ModelInfo {
        ModelInfo {
            architecture: "llama".into(),
            vocab_size: 100,
            max_model_len: 8192,
            eos_token_ids: vec![2],
            layers: crate::model::LayerKv::uniform(30, 3, 64),
            kv_dtype: DType::F32,
            kv_fp8: None,
        }
    }

    #[test]
    fn default_cpu_budget_is_capped_by_what_sequences_can_use() {
        let cfg = EngineConfig { max_num_seqs: 2, max_model_len: Some(64), ..EngineConfig::default() };
        let s = size(&info(), &Device::Cpu, &cfg).unwrap();
        assert_eq!(s, Sizing { num_blocks: 8, block_size: 16, max_model_len: 64 });
    }

    #[test]
    fn explicit_budget_sets_blocks_and_lowers_the_context() {
        // 46080 bytes per token (30 layers * 2 * 3 * 64 * 4): 10 blocks of 16 tokens.
        let cfg = EngineConfig { kv_cache_bytes: Some(46080 * 16 * 10 + 5), ..EngineConfig::default() };
        let s = size(&info(), &Device::Cpu, &cfg).unwrap();
        assert_eq!(s, Sizing { num_blocks: 10, block_size: 16, max_model_len: 160 });
    }

    #[test]
    fn bad_configs_are_errors() {
        let e = |cfg: EngineConfig| size(&info(), &Device::Cpu, &cfg).is_err();
        assert!(e(EngineConfig { block_size: 0, ..EngineConfig::default() }));
        assert!(e(EngineConfig { max_model_len: Some(9000), ..EngineConfig::default() }));
        assert!(e(EngineConfig { kv_cache_bytes: Some(10), ..EngineConfig::default() }));
    }
}
