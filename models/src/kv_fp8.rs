//! `--kv-cache-dtype fp8`: turning a loaded model's KV cache to FP8 (e4m3 pools, one K and one
//! V scale per layer; the mechanism is `kiln_runtime::model::kv_fp8`). The scales come from a
//! calibration pass over a text shipped with kiln ([`CALIBRATION_TEXT`]: prose, a chat, code,
//! data, other scripts) with the model's unquantized cache; a model without a tokenizer (a
//! benchmark's random weights) is calibrated on fixed pseudo-random token ids instead.
//!
//! A checkpoint that stores its own scales (compressed-tensors `kv_cache_scheme`: `k_scale` and
//! `v_scale` beside each layer's attention) is not calibrated: its scales are used.

use crate::model::{CausalLm, ModelError};
use crate::tokenizer::Tokenizer;
use kiln_runtime::model::kv_fp8::{calibrate, KvScale, CALIBRATION_TOKENS};

/// The text FP8 KV scales are calibrated on.
pub const CALIBRATION_TEXT: &str = include_str!("kv_fp8/calibration.txt");

/// The KV cache's element type (`--kv-cache-dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvCacheDtype {
    /// The model's compute dtype (f32 on the CPU, bf16 or f16 on a GPU).
    #[default]
    Auto,
    /// OCP FP8 e4m3 with per-layer scales: half the bytes of bf16 (a quarter of f32).
    Fp8,
}

/// The calibration tokens: [`CALIBRATION_TEXT`] through the tokenizer, or without one a fixed
/// pseudo-random sequence of ids below `vocab`.
pub fn calibration_tokens(tokenizer: Option<&Tokenizer>, vocab: usize) -> Result<Vec<u32>, ModelError> {
    match tokenizer {
        Some(t) => t
            .encode(CALIBRATION_TEXT, t.add_bos_by_default())
            .map_err(|e| ModelError::Load(format!("tokenizing the FP8 KV calibration text: {e}"))),
        None => {
            let mut x = 0x6b69_6c6e_u64;
            Ok((0..CALIBRATION_TOKENS / 2)
                .map(|_| {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    ((x >> 33) % vocab.max(1) as u64) as u32
                })
                .collect())
        }
    }
}

/// The scales an FP8 cache was given, and where they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Scales {
    pub scales: Vec<KvScale>,
    /// The checkpoint's own (`k_scale` / `v_scale`), else calibrated.
    pub from_checkpoint: bool,
}

/// Make `model`'s KV caches `dtype` from now on; for FP8, returns the scales: the checkpoint's
/// when it stores them, else calibrated.
pub fn apply(
    model: &mut dyn CausalLm,
    tokenizer: Option<&Tokenizer>,
    dtype: KvCacheDtype,
) -> Result<Option<Fp8Scales>, ModelError> {
    match dtype {
        KvCacheDtype::Auto => Ok(None),
        KvCacheDtype::Fp8 => {
            let (scales, from_checkpoint) = match model.checkpoint_kv_scales() {
                Some(s) => (s, true),
                None => (calibrate(model, &calibration_tokens(tokenizer, model.info().vocab_size)?)?, false),
            };
            model.use_fp8_kv(scales.clone())?;
            Ok(Some(Fp8Scales { scales, from_checkpoint }))
        }
    }
}

/// One line for the log: where the scales came from and their range over the layers.
pub fn describe(s: &Fp8Scales) -> String {
    let (scales, from_checkpoint) = (&s.scales, s.from_checkpoint);
    let range = |f: fn(&KvScale) -> f32| {
        let v: Vec<f32> = scales.iter().map(f).collect();
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = v.iter().copied().fold(0f32, f32::max);
        format!("{lo:.3e}..{hi:.3e}")
    };
    format!(
        "FP8 (e4m3) KV cache, scales {} over {} layers: K {}, V {}",
        if from_checkpoint { "from the checkpoint" } else { "calibrated per layer" },
        scales.len(),
        range(|s| s.k),
        range(|s| s.v)
    )
}
