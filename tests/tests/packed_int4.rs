//! Pre-quantized INT4 checkpoints (tests/fixtures/int4-tiny, made by make_int4_tiny.py from the
//! layout rules of AutoAWQ and GPTQ): AWQ (asymmetric, group 32) and GPTQ (v1 zeros, act-order
//! `g_idx`). Dequantized at load (`--weights dense`) they give exactly the logits of their
//! float32 references; kept packed on the CPU (the default) within 1e-5 of the reference (the
//! same values, summed in another order), whole and split over 2 tensor-parallel ranks; a
//! `quantization_config` kiln does not read is refused naming the field.

use kiln_models::loader::{build_parallel, load_weights_only_with, WeightMode};
use kiln_models::model_check::{compare_logits, greedy, prefill_logits};
use kiln_runtime::model::CausalLm;
use kiln_runtime::{DType, Device};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/int4-tiny").join(name)
}

fn load(path: &Path, mode: WeightMode) -> Box<dyn CausalLm> {
    load_weights_only_with(path, &Device::Cpu, DType::F32, mode).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(packed: &str) {
    let prompt: Vec<u32> = (0..29).map(|i| (i * 37 + 5) % 256).collect();
    let reference = fixture(&format!("{packed}-dequantized"));
    // Everything dense: exactly the reference.
    let want = prefill_logits(load(&reference, WeightMode::Dense).as_ref(), &prompt).unwrap();
    let got = prefill_logits(load(&fixture(packed), WeightMode::Dense).as_ref(), &prompt).unwrap();
    assert!(got == want, "{packed} dequantized at load: the same weights must give the same logits");
    // As stored (the default): the projections kept packed; the f16 embedding and head as
    // stored on both sides.
    let stored_ref = load(&reference, WeightMode::Stored);
    let want = prefill_logits(stored_ref.as_ref(), &prompt).unwrap();
    let want_tokens = greedy(stored_ref.as_ref(), &prompt, 12).unwrap().1;
    let kept = load(&fixture(packed), WeightMode::Stored);
    let split = build_parallel(&fixture(packed), &[Device::Cpu, Device::Cpu], DType::F32, WeightMode::Stored).unwrap();
    for (what, m) in [("kept packed", kept.as_ref()), ("kept packed, tp=2", &split as &dyn CausalLm)] {
        for (pos, (g, w)) in prefill_logits(m, &prompt).unwrap().iter().zip(&want).enumerate() {
            let (err, same) = compare_logits(g, w);
            assert!(err <= 1e-5 && same, "{packed} {what} position {pos}: relative error {err}");
        }
        assert_eq!(greedy(m, &prompt, 12).unwrap().1, want_tokens, "{packed} {what}: greedy tokens");
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
        ("\"awq\"", "\"bitsandbytes\"", "quantization_config.quant_method"),
        ("\"gemm\"", "\"gemv\"", "quantization_config.version"),
        ("\"bits\": 4", "\"bits\": 3", "quantization_config.bits"),
    ] {
        assert!(cfg.contains(from), "{from}");
        std::fs::write(dir.path().join("config.json"), cfg.replace(from, to)).unwrap();
        let e = load_weights_only_with(dir.path(), &Device::Cpu, DType::F32, WeightMode::Stored).err().unwrap();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
}

#[test]
fn projections_stay_packed_on_the_cpu_unless_asked_dense() {
    use kiln_models::weights::packed::PackedConfig;
    use kiln_models::weights::{Part, WeightSource};
    use kiln_runtime::device::linear::Weight;
    let dir = fixture("gptq");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut src = WeightSource::open_safetensors_dir(&dir).unwrap();
    src.set_packed(PackedConfig::from_hf(&cfg).unwrap().unwrap()).unwrap();
    let name = "model.layers.0.mlp.down_proj.weight";
    src.set_keep_quantized(true);
    let w = src.weight(name, &[64, 128], &Part::Whole, &Device::Cpu, DType::F32).unwrap();
    assert!(matches!(&w, Weight::Int4(parts) if parts.len() == 1 && parts[0].rows() == 64), "kept packed");
    src.set_keep_quantized(false);
    let w = src.weight(name, &[64, 128], &Part::Whole, &Device::Cpu, DType::F32).unwrap();
    assert!(matches!(w, Weight::Dense(_)), "dequantized");
}
