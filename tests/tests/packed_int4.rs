//! Pre-quantized INT4 checkpoints (tests/fixtures/int4-tiny, made by make_int4_tiny.py from the
//! layout rules of AutoAWQ and GPTQ): AWQ (asymmetric, group 32) and GPTQ (v1 zeros, act-order
//! `g_idx`) load and give exactly the logits of their dequantized float32 references, whole and
//! split over 2 tensor-parallel ranks; a `quantization_config` kiln does not read is refused
//! naming the field.

use kiln_models::loader::{build_parallel, load_weights_only, WeightMode};
use kiln_models::model_check::{compare_logits, greedy, prefill_logits};
use kiln_runtime::{DType, Device};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/int4-tiny").join(name)
}

fn check(packed: &str) {
    let prompt: Vec<u32> = (0..29).map(|i| (i * 37 + 5) % 256).collect();
    let model = load_weights_only(&fixture(packed), &Device::Cpu, DType::F32).unwrap();
    let reference = load_weights_only(&fixture(&format!("{packed}-dequantized")), &Device::Cpu, DType::F32).unwrap();
    let (got, want) =
        (prefill_logits(model.as_ref(), &prompt).unwrap(), prefill_logits(reference.as_ref(), &prompt).unwrap());
    assert_eq!(got, want, "{packed}: the same weights, the same logits");
    assert_eq!(greedy(model.as_ref(), &prompt, 12).unwrap().1, greedy(reference.as_ref(), &prompt, 12).unwrap().1);
    let split = build_parallel(&fixture(packed), &[Device::Cpu, Device::Cpu], DType::F32, WeightMode::Stored).unwrap();
    for (pos, (g, w)) in prefill_logits(&split, &prompt).unwrap().iter().zip(&want).enumerate() {
        let (err, same) = compare_logits(g, w);
        assert!(err <= 1e-5 && same, "{packed} tp=2 position {pos}: {err}");
    }
}

#[test]
fn awq_gemm_loads_as_its_dequantized_reference() {
    check("awq");
}

#[test]
fn gptq_act_order_loads_as_its_dequantized_reference() {
    check("gptq");
}

#[test]
fn quantization_configs_kiln_does_not_read_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("awq").join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(fixture("awq").join("config.json")).unwrap();
    for (from, to, field) in [
        ("\"awq\"", "\"fp8\"", "quantization_config.quant_method"),
        ("\"gemm\"", "\"gemv\"", "quantization_config.version"),
        ("\"bits\": 4", "\"bits\": 3", "quantization_config.bits"),
    ] {
        assert!(cfg.contains(from), "{from}");
        std::fs::write(dir.path().join("config.json"), cfg.replace(from, to)).unwrap();
        let e = load_weights_only(dir.path(), &Device::Cpu, DType::F32).err().unwrap().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}
