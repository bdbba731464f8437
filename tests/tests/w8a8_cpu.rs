//! `KILN_W8=w8a8` on the CPU: FP8 checkpoints whose projections take W8A8 (scales per channel
//! or tensor) load as the CPU's twin of the GPU's FP8 W8A8 (`Weight::W8a8Cpu`: activations
//! quantized to e4m3 per token before each product), INT8 ones per channel as INT8 W8A8
//! (activations quantized to int8 per token), so their logits move off the W8A16
//! reference by the activations' rounding — and only that far; a checkpoint whose scale blocks
//! W8A8 does not take (16×16 blocks) keeps the W8A16 reference's logits exactly; the norms
//! that quantize for their projection (e4m3 or int8) give the logits of the projections
//! quantizing themselves. The setting is read once per process, so this file holds one test that sets it
//! first.

use kiln_models::loader::{load_weights_only_with, WeightMode};
use kiln_models::model_check::{compare_logits, prefill_logits};
use kiln_runtime::{DType, Device};
use std::path::PathBuf;

fn logits(name: &str) -> Vec<Vec<f32>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ct-tiny").join(name);
    let model = load_weights_only_with(&path, &Device::Cpu, DType::F32, WeightMode::Stored)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let prompt: Vec<u32> = (0..23).map(|i| (i * 41 + 7) % 256).collect();
    prefill_logits(model.as_ref(), &prompt).unwrap()
}

#[test]
fn w8a8_quantizes_the_activations_of_the_projections_that_take_it() {
    std::env::set_var("KILN_W8", "w8a8");
    for name in ["fp8-channel", "fp8-tensor", "int8-w8a8"] {
        let (got, want) = (logits(name), logits(&format!("{name}-dequantized")));
        let worst = got.iter().zip(&want).map(|(g, w)| compare_logits(g, w).0).fold(0f64, f64::max);
        eprintln!("{name}: W8A8 logits {worst:.4} off W8A16");
        // e4m3 keeps 4 significant bits of each activation, int8 per token about 7: a few
        // percent or less, never nothing.
        assert!(worst > 1e-4 && worst < 0.25, "{name}: W8A8 logits {worst} off W8A16");
    }
    assert!(logits("fp8-block") == logits("fp8-block-dequantized"), "16×16 blocks stay W8A16");

    // The norms before q/k/v and gate/up quantize their own output (`rms_norm_quant_e4m3`,
    // `rms_norm_quant_i8`): in f32 the same arithmetic as the projection quantizing the stored
    // norm output, so the same logits to the bit (with the setting off, the 8-bit products
    // quantize themselves and must agree).
    for name in ["fp8-channel", "int8-w8a8"] {
        let fused = logits(name);
        std::env::set_var("KILN_FUSED_NORM_QUANT", "0");
        let unfused = logits(name);
        std::env::remove_var("KILN_FUSED_NORM_QUANT");
        assert!(fused == unfused, "{name}: fused norm + quantization changed the W8A8 logits");
    }
}
