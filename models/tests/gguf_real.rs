//! The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) through the whole loading path:
//! metadata, tensor types, dequantization, HF shapes, and GGUF -> safetensors conversion.

use std::collections::BTreeMap;
use std::time::Instant;

use kiln_models::config::LlamaConfig;
use kiln_models::convert::convert_gguf_to_hf;
use kiln_models::fetch::default_model_path;
use kiln_models::gguf::{GgmlType, GgufFile, MetadataValue};
use kiln_models::weights::{gguf_to_hf_name, load_gguf, Weights};

fn open() -> GgufFile {
    GgufFile::open(default_model_path().expect("default model")).expect("open default model")
}

#[test]
fn metadata_and_config() {
    let f = open();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    let u = |k: &str| f.get(k).and_then(MetadataValue::as_u64).unwrap_or_else(|| panic!("{k}"));
    assert_eq!(f.get("general.architecture").and_then(MetadataValue::as_str), Some("llama"));
    assert_eq!(u("llama.block_count"), 30);
    assert_eq!(u("llama.embedding_length"), 576);
    assert_eq!(u("llama.attention.head_count"), 9);
    assert_eq!(u("llama.attention.head_count_kv"), 3);
    assert_eq!(u("llama.vocab_size"), 49152);
    assert_eq!(f.get("llama.rope.freq_base").and_then(MetadataValue::as_f64), Some(100000.0));
    let tokens = f.get("tokenizer.ggml.tokens").and_then(MetadataValue::as_array).unwrap();
    assert_eq!(tokens.as_strings().unwrap().len(), 49152);
    assert_eq!(tokens.as_strings().unwrap()[2], "<|im_end|>");

    let c = LlamaConfig::from_gguf(&f).unwrap();
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (30, 576, 9, 3, 64)
    );
    assert_eq!((c.vocab_size, c.intermediate_size, c.max_position_embeddings), (49152, 1536, 8192));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.rope_scaling.clone()), (100000.0, 1e-5, None));
    assert!(c.tie_word_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(1), vec![2]));
}

#[test]
fn tensor_types_and_hf_shapes() {
    let f = open();
    assert_eq!(f.tensors().len(), 30 * 9 + 2);
    let mut by_type = BTreeMap::new();
    for t in f.tensors() {
        *by_type.entry(t.ggml_type.name()).or_insert(0) += 1;
        assert!(gguf_to_hf_name(&t.name).is_some(), "unmapped tensor {}", t.name);
        let expected = if t.name == "token_embd.weight" {
            GgmlType::Q8_0
        } else if t.name.ends_with("norm.weight") {
            GgmlType::F32
        } else {
            GgmlType::Q4_1
        };
        assert_eq!(t.ggml_type, expected, "{}", t.name);
    }
    assert_eq!(by_type, BTreeMap::from([("f32", 61), ("q4_1", 210), ("q8_0", 1)]));
    let embd = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!((embd.dims.clone(), embd.hf_shape()), (vec![576, 49152], vec![49152, 576]));
    let k = f.tensor_info("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.hf_shape(), vec![192, 576]);
    let down = f.tensor_info("blk.29.ffn_down.weight").unwrap();
    assert_eq!(down.hf_shape(), vec![576, 1536]);
}

#[test]
fn every_tensor_dequantizes_quickly_to_plausible_values() {
    let path = default_model_path().unwrap();
    let start = Instant::now();
    let (config, weights) = load_gguf(&path).unwrap();
    let elapsed = start.elapsed();
    eprintln!("load_gguf: {} tensors in {elapsed:?}", weights.len());
    // Generous bound (shared CI cores); the measured time is ~0.1-0.3 s at opt-level 3.
    assert!(elapsed.as_secs_f64() < 10.0, "loading took {elapsed:?}");
    weights.validate_llama(&config).unwrap();
    assert!(!weights.contains("lm_head.weight"));
    assert_eq!(weights.lm_head().unwrap().shape, vec![49152, 576]);
    let n_params: usize = weights.iter().map(|(_, t)| t.numel()).sum();
    assert_eq!(n_params, 134_515_008);
    for (name, t) in weights.iter() {
        assert!(t.data.iter().all(|v| v.is_finite()), "{name}: non-finite value");
        let max = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.0 && max < 1e3, "{name}: max |w| = {max}");
        let first = t.data[0];
        assert!(t.data.iter().any(|&v| v != first), "{name}: constant");
        if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
            let mean = t.data.iter().sum::<f32>() / t.numel() as f32;
            assert!(mean > 0.0, "{name}: RMSNorm gains should be mostly positive, mean {mean}");
        }
    }
}

#[test]
fn convert_then_reload_is_bit_identical() {
    let path = default_model_path().unwrap();
    let out = std::env::temp_dir().join(format!("kiln-convert-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let summary = convert_gguf_to_hf(&path, &out).unwrap();
    assert_eq!(summary.n_params, 134_515_008);
    assert_eq!(summary.files.len(), 2);

    let file = GgufFile::open(&path).unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!(summary.config, config);
    let reread_config = LlamaConfig::from_hf_config_file(&out.join("config.json")).unwrap();
    assert_eq!(reread_config, config);

    let reloaded = Weights::from_safetensors_dir(&out).unwrap();
    reloaded.validate_llama(&config).unwrap();
    let original = Weights::from_gguf(&file, &config).unwrap();
    assert_eq!(reloaded.len(), original.len());
    for (name, t) in original.iter() {
        let r = reloaded.get(name).unwrap();
        assert_eq!(r.shape, t.shape, "{name}");
        assert!(r.data.iter().zip(&t.data).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} differs");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// `tests/fixtures/reference.json` holds values that gguf-py (the reference dequantizer that
/// transformers uses) produced for this file: the first 40 values of a few rows in GGUF row
/// order, and each tensor's sum. kiln's dequantization must agree.
#[test]
fn dequantized_values_match_the_transformers_reference() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference.json");
    let text = std::fs::read_to_string(&fixture).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let samples = reference["weights_check"]["dequant_samples"].as_object().unwrap();
    assert!(samples.len() >= 5);
    let f = open();
    for (name, s) in samples {
        let info = f.tensor_info(name).unwrap();
        let dims: Vec<u64> = s["ggml_shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(info.dims, dims, "{name}");
        assert_eq!(info.ggml_type.name().to_uppercase(), s["type"].as_str().unwrap(), "{name}");
        let data = f.dequantize(name).unwrap();
        let row_len = dims[0] as usize;
        for (row, want) in s["rows"].as_object().unwrap() {
            let row: usize = row.parse().unwrap();
            let got = &data[row * row_len..];
            for (i, w) in want.as_array().unwrap().iter().enumerate() {
                let w = w.as_f64().unwrap();
                // The fixture keeps 8 significant digits.
                assert!(
                    (got[i] as f64 - w).abs() <= 1e-7 * w.abs().max(1e-30) + 1e-12,
                    "{name} row {row} col {i}: {} vs {w}",
                    got[i]
                );
            }
        }
        let sum: f64 = data.iter().map(|&v| v as f64).sum();
        let want_sum = s["sum"].as_f64().unwrap();
        assert!((sum - want_sum).abs() < 1e-4 + 1e-9 * want_sum.abs(), "{name}: sum {sum} vs {want_sum}");
    }

    // transformers' reverse permutation, re-derived from its numpy form
    // `w.reshape(n, hd/2, 2, in).swapaxes(2, 1)`: HF row h·hd + t·hd/2 + i <- GGUF row h·hd + 2i + t.
    let config = LlamaConfig::from_gguf(&f).unwrap();
    let weights = Weights::from_gguf(&f, &config).unwrap();
    for (gguf, hf, heads) in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9),
        ("blk.29.attn_k.weight", "model.layers.29.self_attn.k_proj.weight", 3),
    ] {
        let raw = f.dequantize(gguf).unwrap();
        let ours = weights.get(hf).unwrap();
        let (rows, cols) = (ours.shape[0], ours.shape[1]);
        let hd = rows / heads;
        assert_ne!(raw, ours.data, "{gguf}: the permutation must change something");
        for h in 0..heads {
            for t in 0..2 {
                for i in 0..hd / 2 {
                    let hf_row = h * hd + t * hd / 2 + i;
                    let gguf_row = h * hd + 2 * i + t;
                    assert_eq!(
                        ours.data[hf_row * cols..(hf_row + 1) * cols],
                        raw[gguf_row * cols..(gguf_row + 1) * cols]
                    );
                }
            }
        }
    }
}
