//! The FP8 KV cache on the CPU (`--kv-cache-dtype fp8`): calibration, pools of e4m3 bytes,
//! logits near the unquantized cache's, and a prefill + decode that reads back exactly what a
//! longer prefill wrote — for a Llama layout and one with per-head q/k norms (Qwen3, Gemma 3:
//! the per-head KV write).

use kiln_models::decoder::{Decoder, DecoderSpec};
use kiln_models::model::{CausalLm, ForwardBatch, KvCache};
use kiln_runtime::attention::SeqAttn;
use kiln_runtime::model::Runner;
use kiln_runtime::{DType, Device};

fn tiny(qk_norm: bool) -> Runner<Decoder> {
    let mut cfg = kiln_models::synth::preset("smollm2-135m").unwrap();
    cfg.num_hidden_layers = 2;
    let spec = DecoderSpec { qk_norm, ..DecoderSpec::llama(cfg) };
    Runner::new(Decoder::random(spec, &Device::Cpu, DType::F32, 3).unwrap())
}

/// Tokens `start..start + toks.len()` of one sequence (blocks 0, 1, ... of 16), the last
/// row's logits.
fn step(m: &dyn CausalLm, kv: &mut KvCache, toks: &[u32], start: usize) -> Vec<f32> {
    let table: Vec<u32> = (0..kv.num_blocks as u32).collect();
    let pos: Vec<i32> = (start as i32..(start + toks.len()) as i32).collect();
    let slots: Vec<u32> = (start as u32..(start + toks.len()) as u32).collect();
    let seqs = [SeqAttn { q_start: 0, q_len: toks.len(), ctx_len: start + toks.len(), block_table: &table }];
    let b = ForwardBatch { tokens: toks, positions: &pos, slots: &slots, seqs: &seqs, logits_rows: &[toks.len() - 1] };
    m.forward(&b, kv).unwrap().to_host_f32().unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    d / b.iter().map(|x| x.abs()).fold(0f32, f32::max)
}

#[test]
fn an_fp8_cache_stores_bytes_and_reads_them_back_on_every_path() {
    let toks: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 1000).collect();
    for qk_norm in [false, true] {
        let mut m = tiny(qk_norm);
        let dense_bytes = m.info().kv_bytes_per_token();
        let mut kv = m.new_kv_cache(4, 16).unwrap();
        let dense = step(&m, &mut kv, &toks, 0);

        let fp8 = kiln_models::kv_fp8::apply(&mut m, None, kiln_models::kv_fp8::KvCacheDtype::Fp8).unwrap().unwrap();
        let scales = &fp8.scales;
        assert!(!fp8.from_checkpoint);
        assert_eq!(scales.len(), 2);
        assert!(scales.iter().all(|s| s.k > 0.0 && s.v > 0.0 && s.k.is_finite() && s.v.is_finite()));
        assert_eq!(m.info().kv_bytes_per_token() * 4, dense_bytes, "one byte a value against f32's four");
        let mut kv = m.new_kv_cache(4, 16).unwrap();
        let width = m.info().layers[0].width();
        assert_eq!((kv.k[0].dtype(), kv.k[0].cols()), (DType::I32, width / 4));

        let whole = step(&m, &mut kv, &toks, 0);
        // e4m3 steps are up to 6% of a value, and random weights pass them on undamped; the
        // cost on a trained model is measured as KL (`kiln perplexity --kv-cache-dtype fp8`).
        assert!(rel(&whole, &dense) < 0.15, "qk_norm {qk_norm}: FP8 KV moved the logits by {}", rel(&whole, &dense));
        assert_ne!(whole, dense, "the cache really is quantized");

        // The same tokens as a prefill of 39 and one decode step: the decode reads the 39
        // stored rows and its own.
        let mut kv2 = m.new_kv_cache(4, 16).unwrap();
        step(&m, &mut kv2, &toks[..39], 0);
        let split = step(&m, &mut kv2, &toks[39..], 39);
        assert!(rel(&split, &whole) < 1e-4, "qk_norm {qk_norm}: prefill + decode off by {}", rel(&split, &whole));
        for (a, b) in kv.k.iter().zip(&kv2.k) {
            assert_eq!(a.to_host::<i32>().unwrap(), b.to_host::<i32>().unwrap(), "the same bytes in the pools");
        }
    }
}

#[test]
fn calibration_refuses_a_model_already_fp8_and_scales_must_fit_the_layers() {
    let mut m = tiny(false);
    kiln_models::kv_fp8::apply(&mut m, None, kiln_models::kv_fp8::KvCacheDtype::Fp8).unwrap();
    assert!(kiln_runtime::model::kv_fp8::calibrate(&m, &[1, 2, 3]).is_err());
    let one = kiln_runtime::attention::KvScale { k: 1.0, v: 1.0 };
    assert!(tiny(false).use_fp8_kv(vec![one]).is_err(), "one scale for two layers");
    assert!(tiny(false).use_fp8_kv(vec![kiln_runtime::attention::KvScale { k: f32::NAN, v: 1.0 }; 2]).is_err());
    assert!(tiny(false).use_fp8_kv(vec![one; 2]).is_ok());
}

/// `dir` (a copy of an FP8 fixture) with a compressed-tensors FP8 KV scheme: `k_scale` and
/// `v_scale` for each of its layers in a second shard (`v_scale` of the last layer left out
/// with `drop_last_v`).
fn with_kv_scales(dir: &std::path::Path, scales: &[(f32, f32)], drop_last_v: bool) {
    use kiln_models::weights::{HostTensor, WeightSource, Weights};
    let src = WeightSource::open_safetensors_dir(dir).unwrap();
    let mut map: serde_json::Map<String, serde_json::Value> =
        src.names().map(|n| (n.to_string(), "model.safetensors".into())).collect();
    let mut w = Weights::new("kv scales");
    for (l, &(k, v)) in scales.iter().enumerate() {
        let mut put = |which: &str, x: f32| {
            let name = format!("model.layers.{l}.self_attn.{which}");
            map.insert(name.clone(), "kv.safetensors".into());
            w.insert(name, HostTensor::new(vec![], vec![x]).unwrap()).unwrap();
        };
        put("k_scale", k);
        if !(drop_last_v && l + 1 == scales.len()) {
            put("v_scale", v);
        }
    }
    kiln_models::safetensors_io::write_safetensors(&dir.join("kv.safetensors"), &w).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["quantization_config"]["kv_cache_scheme"] =
        serde_json::json!({"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": false, "symmetric": true});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
}

fn fixture_copy(tag: &str) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ct-tiny/fp8-tensor");
    let dir = std::env::temp_dir().join(format!("kiln-kv-scales-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

/// A checkpoint's own KV scales (compressed-tensors `kv_cache_scheme`) are read with its
/// weights and used by an FP8 cache instead of calibrating; a layer without its `v_scale` is a
/// load error naming it.
#[test]
fn checkpoint_kv_scales_are_read_and_used() {
    let load = |dir: &std::path::Path| {
        kiln_models::loader::load_weights_only_with(dir, &Device::Cpu, DType::F32, Default::default())
    };
    let dir = fixture_copy("ok");
    let want = [(0.02f32, 0.003f32), (0.05, 0.0007)];
    with_kv_scales(&dir, &want, false);
    let mut m = load(&dir).unwrap();
    let scales: Vec<(f32, f32)> = m.checkpoint_kv_scales().unwrap().iter().map(|s| (s.k, s.v)).collect();
    assert_eq!(scales, want);
    let fp8 = kiln_models::kv_fp8::apply(m.as_mut(), None, kiln_models::kv_fp8::KvCacheDtype::Fp8).unwrap().unwrap();
    assert!(fp8.from_checkpoint);
    assert_eq!(m.info().kv_fp8.as_ref().unwrap()[1].v, 0.0007);
    assert!(!step(m.as_ref(), &mut m.new_kv_cache(2, 16).unwrap(), &[1, 2, 3], 0).iter().any(|x| !x.is_finite()));
    std::fs::remove_dir_all(&dir).ok();

    let dir = fixture_copy("missing");
    with_kv_scales(&dir, &want, true);
    let err = load(&dir).err().expect("a missing v_scale is an error").to_string();
    assert!(err.contains("model.layers.1.self_attn.v_scale"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
