//! Checkpoints written by the reference library compressed-tensors (tests/fixtures/ct-tiny, made
//! by make_ct_tiny.py, which checks its own reading of every stored tensor against the
//! library's decompression): W4A16 `pack-quantized` (symmetric and asymmetric), FP8
//! `float-quantized` / `naive-quantized` (per channel, per tensor with a static activation
//! scale, 16×16 blocks), INT8 `int-quantized` W8A8, and a DeepSeek-style `quant_method: fp8`
//! with `weight_scale_inv` blocks. Read with every projection dequantized, each gives exactly
//! the logits of its float32 reference; W4A16 kept packed on the CPU (the default) within 1e-5,
//! whole and split over two tensor-parallel ranks.

use kiln_models::loader::{build_parallel, load_weights_only_with, WeightMode};
use kiln_models::model_check::{compare_logits, greedy, prefill_logits};
use kiln_runtime::model::CausalLm;
use kiln_runtime::{DType, Device};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ct-tiny").join(name)
}

fn load(path: &Path, mode: WeightMode) -> Box<dyn CausalLm> {
    load_weights_only_with(path, &Device::Cpu, DType::F32, mode).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn prompt() -> Vec<u32> {
    (0..23).map(|i| (i * 41 + 7) % 256).collect()
}

/// Dequantized at load: bit for bit the reference's logits.
fn exactly_the_reference(name: &str) {
    let reference = fixture(&format!("{name}-dequantized"));
    let want = prefill_logits(load(&reference, WeightMode::Dense).as_ref(), &prompt()).unwrap();
    let model = load(&fixture(name), WeightMode::Stored);
    let got = prefill_logits(model.as_ref(), &prompt()).unwrap();
    assert!(got == want, "{name}: the stored values must give the reference's logits exactly");
    let ref_model = load(&reference, WeightMode::Stored);
    assert_eq!(greedy(model.as_ref(), &prompt(), 8).unwrap().1, greedy(ref_model.as_ref(), &prompt(), 8).unwrap().1);
}

#[test]
fn fp8_per_channel_weights_read_as_their_reference() {
    exactly_the_reference("fp8-channel");
}

#[test]
fn fp8_per_tensor_weights_with_a_static_activation_scale_read_as_their_reference() {
    exactly_the_reference("fp8-tensor");
}

#[test]
fn fp8_block_weights_read_as_their_reference() {
    exactly_the_reference("fp8-block");
}

#[test]
fn deepseek_style_fp8_blocks_read_as_their_reference() {
    exactly_the_reference("fp8-deepseek");
}

#[test]
fn int8_w8a8_weights_read_as_their_reference() {
    exactly_the_reference("int8-w8a8");
}

/// W4A16: exactly the reference dequantized at load; kept packed (the CPU default) within 1e-5
/// of the reference, whole and over two ranks.
fn w4a16(name: &str) {
    let reference = fixture(&format!("{name}-dequantized"));
    let want = prefill_logits(load(&reference, WeightMode::Dense).as_ref(), &prompt()).unwrap();
    let got = prefill_logits(load(&fixture(name), WeightMode::Dense).as_ref(), &prompt()).unwrap();
    assert!(got == want, "{name} dequantized at load: the same weights must give the same logits");
    let stored_ref = load(&reference, WeightMode::Stored);
    let want = prefill_logits(stored_ref.as_ref(), &prompt()).unwrap();
    let want_tokens = greedy(stored_ref.as_ref(), &prompt(), 12).unwrap().1;
    let kept = load(&fixture(name), WeightMode::Stored);
    let split = build_parallel(&fixture(name), &[Device::Cpu, Device::Cpu], DType::F32, WeightMode::Stored).unwrap();
    for (what, m) in [("kept packed", kept.as_ref()), ("kept packed, tp=2", &split as &dyn CausalLm)] {
        for (pos, (g, w)) in prefill_logits(m, &prompt()).unwrap().iter().zip(&want).enumerate() {
            let (err, same) = compare_logits(g, w);
            assert!(err <= 1e-5 && same, "{name} {what} position {pos}: relative error {err}");
        }
        assert_eq!(greedy(m, &prompt(), 12).unwrap().1, want_tokens, "{name} {what}: greedy tokens");
    }
}

#[test]
fn w4a16_symmetric_pack_quantized_loads_as_its_reference() {
    w4a16("w4a16-g32");
}

#[test]
fn w4a16_asymmetric_pack_quantized_loads_as_its_reference() {
    w4a16("w4a16-asym-g32");
}

/// The packed projections stay packed on the CPU: no dense copy of a W4A16 matrix exists.
#[test]
fn w4a16_projections_stay_packed_on_the_cpu() {
    use kiln_models::weights::quantization::{from_hf, Quantization};
    use kiln_models::weights::{Part, WeightSource};
    use kiln_runtime::device::linear::Weight;
    let dir = fixture("w4a16-asym-g32");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let Some(Quantization::Packed(packed)) = from_hf(&cfg).unwrap() else { panic!("a packed checkpoint") };
    let mut src = WeightSource::open_safetensors_dir(&dir).unwrap();
    src.set_packed(packed).unwrap();
    src.set_keep_quantized(true);
    let name = "model.layers.1.mlp.down_proj.weight";
    let w = src.weight(name, &[64, 128], &Part::Whole, &Device::Cpu, DType::F32).unwrap();
    assert!(matches!(w, Weight::Int4(ref parts) if parts.len() == 1 && parts[0].rows() == 64), "{w:?}");
}

/// Bad inputs: a scale of the wrong shape, an FP8 weight read as int8, a compressed-tensors
/// scheme kiln does not read: clear errors naming the tensor or the field.
#[test]
fn bad_scaled_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("fp8-block");
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let try_cfg = |text: String| {
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        load_weights_only_with(dir.path(), &Device::Cpu, DType::F32, WeightMode::Stored).err().map(|e| e.to_string())
    };
    // Blocks of 8 do not fit the stored 16×16 scales.
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["quantization_config"]["config_groups"]["group_0"]["weights"]["block_structure"] = serde_json::json!([8, 8]);
    let e = try_cfg(v.to_string()).expect("wrong block size");
    assert!(e.contains("weight") && e.contains("scale of shape"), "{e}");
    // Declared as int8: the e4m3 tensors are refused by name.
    let e =
        try_cfg(cfg.replace("\"type\": \"float\"", "\"type\": \"int\"").replace("naive-quantized", "int-quantized"))
            .expect("wrong element type");
    assert!(e.contains("f8_e4m3") && e.contains("proj.weight"), "{e}");
    let e =
        try_cfg(cfg.replace("\"kv_cache_scheme\": null", "\"kv_cache_scheme\": {\"num_bits\": 8}")).expect("kv scheme");
    assert!(e.contains("quantization_config.kv_cache_scheme"), "{e}");
}

/// `kiln quantize --method`: each scheme written from a full-precision checkpoint loads back,
/// its logits near the original's (round-to-nearest error only); bad requests are refused and
/// write nothing. (Byte equality with compressed-tensors' own quantizer is checked by
/// bench/quant/check_kiln_ct.py, which needs the Python library.)
#[test]
fn kiln_quantize_writes_checkpoints_that_load_near_the_original() {
    use kiln_models::quantize_ct::{quantize_ct, CtMethod};
    // A full-precision checkpoint (not one already on a quantization grid). Measured errors:
    // fp8-dynamic 4.1%, fp8 (per tensor, static activation scales) 5.0%, int8 1.2%, w4a16 g32
    // 15.8% of the largest logit (a random 2-layer model).
    let input = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arch-tiny/mistral");
    let want = prefill_logits(load(&input, WeightMode::Stored).as_ref(), &prompt()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let methods = [
        (CtMethod::Fp8Dynamic, 0.06),
        (CtMethod::Fp8Static, 0.07),
        (CtMethod::Int8, 0.02),
        (CtMethod::W4A16 { group: 32 }, 0.25),
    ];
    for (method, tol) in methods {
        let out = dir.path().join(format!("{method:?}"));
        let s = quantize_ct(&input, &out, method, false).unwrap();
        assert_eq!((s.quantized, s.kept.len()), (14, 0), "{method:?}");
        let got = prefill_logits(load(&out, WeightMode::Stored).as_ref(), &prompt()).unwrap();
        let worst = got.iter().zip(&want).map(|(g, w)| compare_logits(g, w).0).fold(0f64, f64::max);
        assert!(worst > 0.0 && worst <= tol, "{method:?}: relative logit error {worst} (tolerance {tol})");
        // Refusals: an existing output, the output is the input, an already quantized input.
        let e = quantize_ct(&input, &out, method, false).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
        assert!(quantize_ct(&input, &input, method, true).unwrap_err().to_string().contains("the output is the input"));
        let e = quantize_ct(&out, &dir.path().join("again"), method, false).unwrap_err().to_string();
        assert!(e.contains("already quantized") && !dir.path().join("again").exists(), "{e}");
    }
    // fp8's static activation scales: one per projection, positive, shared by projections
    // that read the same input (q, k, v), from the calibration pass.
    let ct = dir.path().join("Fp8Static");
    let scale = |name: &str| {
        use kiln_models::weights::{Part, WeightSource};
        let src = WeightSource::open_safetensors_dir(&ct).unwrap();
        src.read_part(&format!("model.layers.1.{name}.input_scale"), None, &Part::Whole).unwrap().to_f32().unwrap()
    };
    let (q, k, o) = (scale("self_attn.q_proj"), scale("self_attn.k_proj"), scale("self_attn.o_proj"));
    assert!(q.len() == 1 && q[0] > 0.0 && q == k && o[0] > 0.0 && o != q, "{q:?} {k:?} {o:?}");
    // Groups that do not divide a projection's inputs: those stay as they are, listed in `ignore`.
    let s = quantize_ct(&input, &dir.path().join("g48"), CtMethod::W4A16 { group: 48 }, false).unwrap();
    assert_eq!((s.quantized, s.kept.len()), (0, 14));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("g48/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["ignore"].as_array().unwrap().len(), 15);
}

/// `kiln quantize --method int8-sq`: SmoothQuant's factors (calibrated on the CPU) divide the
/// norms before q/k/v and gate/up and multiply their projections' columns — the same function
/// before rounding, so the INT8 checkpoint's logits stay as near the original's as plain INT8's;
/// the norms did move (a smoothing in the wrong direction, or applied to one side only, would
/// put the logits far off). Llama's norms, Gemma 3's (`pre_feedforward_layernorm`, scaling by
/// `1 + w`, which the smoothing must divide as a whole) and Phi-3's (fused projections); other
/// layouts are refused by name.
#[test]
fn int8_smoothquant_moves_the_norms_and_keeps_the_logits() {
    use kiln_models::quantize_ct::{quantize_ct, CtMethod};
    let dir = tempfile::tempdir().unwrap();
    let read = |dir: &Path, name: &str| {
        use kiln_models::weights::{Part, WeightSource};
        WeightSource::open_safetensors_dir(dir).unwrap().read_part(name, None, &Part::Whole).unwrap().to_f32().unwrap()
    };
    for (arch, norms, offset, layers, per_layer) in [
        ("mistral", ["input_layernorm", "post_attention_layernorm"], 0.0f32, 2, 7),
        ("gemma3", ["input_layernorm", "pre_feedforward_layernorm"], 1.0, 4, 7),
        // Fused qkv_proj and gate_up_proj (up: the second half of its rows).
        ("phi3", ["input_layernorm", "post_attention_layernorm"], 0.0, 2, 4),
    ] {
        let input = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arch-tiny").join(arch);
        let want = prefill_logits(load(&input, WeightMode::Stored).as_ref(), &prompt()).unwrap();
        let out = dir.path().join(arch);
        let s = quantize_ct(&input, &out, CtMethod::Int8Sq { alpha: 0.5 }, false).unwrap();
        assert_eq!(s.quantized, per_layer * layers, "{arch}");
        let got = prefill_logits(load(&out, WeightMode::Stored).as_ref(), &prompt()).unwrap();
        let worst = got.iter().zip(&want).map(|(g, w)| compare_logits(g, w).0).fold(0f64, f64::max);
        assert!(worst > 0.0 && worst <= 0.03, "{arch} int8-sq: relative logit error {worst}");
        // Every smoothed norm moved, some channel by more than 10% (of the factor it scales by).
        for l in 0..layers {
            for norm in norms {
                let name = format!("model.layers.{l}.{norm}.weight");
                let (a, b) = (read(&input, &name), read(&out, &name));
                let moved = a.iter().zip(&b).map(|(a, b)| ((a - b) / (a + offset)).abs()).fold(0f32, f32::max);
                assert!(moved > 0.1, "{arch}: {name} barely moved ({moved})");
            }
        }
    }
    let input = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arch-tiny/mistral");
    // Refusals: another norm layout, an alpha outside 0..1; nothing is written.
    let falcon = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arch-tiny/falcon");
    let e =
        quantize_ct(&falcon, &dir.path().join("f"), CtMethod::Int8Sq { alpha: 0.5 }, false).unwrap_err().to_string();
    assert!(e.contains("int8-sq") && e.contains("FalconForCausalLM") && !dir.path().join("f").exists(), "{e}");
    let e = quantize_ct(&input, &dir.path().join("a"), CtMethod::Int8Sq { alpha: 1.5 }, false).unwrap_err().to_string();
    assert!(e.contains("alpha") && !dir.path().join("a").exists(), "{e}");
}
