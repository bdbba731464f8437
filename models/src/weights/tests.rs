//! Weights from synthetic GGUF files (name mapping, shapes, Q/K un-permutation) and through
//! safetensors (single file, shards, dtypes, bad indexes).

use std::collections::HashMap;

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

use super::*;
use crate::gguf::{dequantize, permute_qk_rows, GgmlType, GgufBuilder, GgufFile, MetadataValue};
use crate::safetensors_io::{write_safetensors, INDEX_FILE, SINGLE_FILE};

fn tiny_config(tied: bool) -> LlamaConfig {
    LlamaConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        vocab_size: 40,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 128,
        tie_word_embeddings: tied,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        architecture: "llama".into(),
    }
}

fn hf_to_gguf_name(hf: &str) -> String {
    let simple = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = simple.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let stem = rest.strip_suffix(".weight").unwrap();
    let g = match stem {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{g}.weight")
}

/// A GGUF of random weights for `c` in several storage types, and the f32 values the loader
/// must produce for each HF name.
fn tiny_gguf(c: &LlamaConfig, rng: &mut StdRng) -> (Vec<u8>, HashMap<String, HostTensor>) {
    let mut b = GgufBuilder::new();
    let meta = [
        ("general.architecture", MetadataValue::String("llama".into())),
        ("llama.embedding_length", MetadataValue::U32(c.hidden_size as u32)),
        ("llama.feed_forward_length", MetadataValue::U32(c.intermediate_size as u32)),
        ("llama.block_count", MetadataValue::U32(c.num_hidden_layers as u32)),
        ("llama.attention.head_count", MetadataValue::U32(c.num_attention_heads as u32)),
        ("llama.attention.head_count_kv", MetadataValue::U32(c.num_key_value_heads as u32)),
        ("llama.attention.layer_norm_rms_epsilon", MetadataValue::F32(c.rms_norm_eps)),
        ("llama.rope.freq_base", MetadataValue::F32(c.rope_theta)),
        ("llama.context_length", MetadataValue::U32(c.max_position_embeddings as u32)),
        ("llama.vocab_size", MetadataValue::U32(c.vocab_size as u32)),
        ("tokenizer.ggml.bos_token_id", MetadataValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetadataValue::U32(2)),
    ];
    for (k, v) in meta {
        b.metadata(k, v).unwrap();
    }
    let mut expected = HashMap::new();
    for (i, (name, shape)) in llama_tensor_shapes(c).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let hf: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let heads = if name.contains("q_proj") {
            Some(c.num_attention_heads)
        } else if name.contains("k_proj") {
            Some(c.num_key_value_heads)
        } else {
            None
        };
        let (ty, bytes, want) = if let Some(h) = heads {
            // Stored the way llama.cpp's converter stores them: rows permuted.
            let p = permute_qk_rows(&hf, shape[0], shape[1], h).unwrap();
            (GgmlType::F32, p.iter().flat_map(|v| v.to_le_bytes()).collect(), hf)
        } else {
            match i % 3 {
                0 => {
                    let bytes: Vec<u8> = hf.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
                    (GgmlType::F16, bytes, hf.iter().map(|v| f16::from_f32(*v).to_f32()).collect())
                }
                1 => {
                    let bytes: Vec<u8> = hf.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect();
                    (GgmlType::Bf16, bytes, hf.iter().map(|v| bf16::from_f32(*v).to_f32()).collect())
                }
                _ if shape.len() == 2 => {
                    let mut bytes: Vec<u8> = (0..n / 32 * 34).map(|_| rng.random()).collect();
                    for blk in bytes.chunks_exact_mut(34) {
                        blk[..2].copy_from_slice(&f16::from_f32(rng.random_range(0.001..0.01)).to_le_bytes());
                    }
                    let want = dequantize(GgmlType::Q8_0, &bytes, n).unwrap();
                    (GgmlType::Q8_0, bytes, want)
                }
                _ => (GgmlType::F32, hf.iter().flat_map(|v| v.to_le_bytes()).collect(), hf),
            }
        };
        b.tensor(&hf_to_gguf_name(&name), &dims, ty, bytes).unwrap();
        expected.insert(name, HostTensor { shape, data: want });
    }
    (b.to_bytes(), expected)
}

#[test]
fn gguf_names_map_to_hf_names() {
    assert_eq!(gguf_to_hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
    assert_eq!(gguf_to_hf_name("blk.12.attn_q.weight").as_deref(), Some("model.layers.12.self_attn.q_proj.weight"));
    assert_eq!(
        gguf_to_hf_name("blk.0.ffn_norm.weight").as_deref(),
        Some("model.layers.0.post_attention_layernorm.weight")
    );
    assert_eq!(gguf_to_hf_name("blk.3.attn_k.bias").as_deref(), Some("model.layers.3.self_attn.k_proj.bias"));
    for bad in [
        "blk.x.attn_q.weight",
        "blk..attn_q.weight",
        "blk.1.attn_qq.weight",
        "blk.1.attn_q.scale",
        "rope_freqs.weight",
        "blk.1",
    ] {
        assert_eq!(gguf_to_hf_name(bad), None, "{bad}");
    }
}

#[test]
fn loads_a_synthetic_gguf_in_hf_layout() {
    let mut rng = StdRng::seed_from_u64(21);
    for tied in [true, false] {
        let c = tiny_config(tied);
        let (bytes, expected) = tiny_gguf(&c, &mut rng);
        let file = GgufFile::from_bytes("tiny.gguf", bytes).unwrap();
        assert_eq!(LlamaConfig::from_gguf(&file).unwrap(), c);
        let w = Weights::from_gguf(&file, &c).unwrap();
        assert_eq!(w.len(), expected.len());
        for (name, want) in &expected {
            assert_eq!(w.get(name).unwrap(), want, "{name}");
        }
        let head = w.lm_head().unwrap();
        let want_head = if tied { "model.embed_tokens.weight" } else { "lm_head.weight" };
        assert_eq!(head, &expected[want_head]);
    }
}

#[test]
fn gguf_with_unknown_or_missing_tensors_is_an_error() {
    let mut rng = StdRng::seed_from_u64(5);
    let c = tiny_config(true);
    let (bytes, _) = tiny_gguf(&c, &mut rng);
    let good = GgufFile::from_bytes("tiny.gguf", bytes).unwrap();
    let mut wrong = c.clone();
    wrong.num_hidden_layers = 3;
    let e = Weights::from_gguf(&good, &wrong).unwrap_err();
    assert_eq!(e.to_string(), "tiny.gguf: missing tensor 'model.layers.2.self_attn.q_proj.weight'");
    let mut wrong = c.clone();
    wrong.intermediate_size = 128;
    assert!(
        matches!(Weights::from_gguf(&good, &wrong).unwrap_err(), WeightsError::Shape { tensor, .. } if tensor == "model.layers.0.mlp.gate_proj.weight")
    );

    let mut b = GgufBuilder::new();
    b.tensor("mystery.weight", &[4], GgmlType::F32, vec![0; 16]).unwrap();
    let f = GgufFile::from_bytes("m.gguf", b.to_bytes()).unwrap();
    assert!(
        matches!(Weights::from_gguf(&f, &c).unwrap_err(), WeightsError::UnknownTensor { tensor, .. } if tensor == "mystery.weight")
    );
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-weights-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn safetensors_round_trip_single_and_sharded() {
    let mut rng = StdRng::seed_from_u64(8);
    let c = tiny_config(false);
    let (bytes, _) = tiny_gguf(&c, &mut rng);
    let w = Weights::from_gguf(&GgufFile::from_bytes("t.gguf", bytes).unwrap(), &c).unwrap();

    let dir = tmpdir("single");
    write_safetensors(&dir.join(SINGLE_FILE), &w).unwrap();
    let back = Weights::from_safetensors_dir(&dir).unwrap();
    assert_eq!(back.len(), w.len());
    for (name, t) in w.iter() {
        let b = back.get(name).unwrap();
        assert_eq!(b.shape, t.shape);
        assert!(b.data.iter().zip(&t.data).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}");
    }
    back.validate_llama(&c).unwrap();

    // Two shards plus an index; f16 and bf16 shards widen exactly.
    let dir = tmpdir("sharded");
    let x: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.25).collect();
    let h: Vec<u8> = x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
    let bb: Vec<u8> = x.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect();
    let a = TensorView::new(Dtype::F16, vec![2, 3], &h).unwrap();
    let b = TensorView::new(Dtype::BF16, vec![6], &bb).unwrap();
    safetensors::serialize_to_file([("a", a)], None, &dir.join("model-00001-of-00002.safetensors")).unwrap();
    safetensors::serialize_to_file([("b", b)], None, &dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.join(INDEX_FILE), index).unwrap();
    let s = Weights::from_safetensors_dir(&dir).unwrap();
    assert_eq!(s.get("a").unwrap(), &HostTensor { shape: vec![2, 3], data: x.clone() });
    assert_eq!(s.get("b").unwrap(), &HostTensor { shape: vec![6], data: x });

    // The index lists a tensor in the wrong shard; a shard name escapes the directory.
    std::fs::write(dir.join(INDEX_FILE), index.replace(r#""b": "model-00002"#, r#""b": "model-00001"#)).unwrap();
    let e = Weights::from_safetensors_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("tensor 'b' is listed in shard"), "{e}");
    std::fs::write(dir.join(INDEX_FILE), index.replace("model-00002-of-00002.safetensors", "../x.safetensors"))
        .unwrap();
    assert!(Weights::from_safetensors_dir(&dir).unwrap_err().to_string().contains("not a plain file name"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_safetensors_inputs_are_errors() {
    let dir = tmpdir("bad");
    assert!(Weights::from_safetensors_dir(&dir).unwrap_err().to_string().contains("no model.safetensors"));
    let ints: Vec<u8> = [1u16, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let v = TensorView::new(Dtype::U16, vec![3], &ints).unwrap();
    safetensors::serialize_to_file([("ids", v)], None, &dir.join(SINGLE_FILE)).unwrap();
    let e = Weights::from_safetensors_dir(&dir).unwrap_err();
    assert!(matches!(&e, WeightsError::UnsupportedDtype { tensor, .. } if tensor == "ids"), "{e}");
    // I32 tensors are read (the words of packed INT4 weights), but are no float weights.
    let ints: Vec<u8> = [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let v = TensorView::new(Dtype::I32, vec![3], &ints).unwrap();
    safetensors::serialize_to_file([("ids", v)], None, &dir.join(SINGLE_FILE)).unwrap();
    let e = Weights::from_safetensors_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("'ids'") && e.contains("i32 cannot be dequantized"), "{e}");
    // Truncated file: header promises more data than present.
    let full = std::fs::read(dir.join(SINGLE_FILE)).unwrap();
    std::fs::write(dir.join(SINGLE_FILE), &full[..full.len() - 4]).unwrap();
    assert!(matches!(Weights::from_safetensors_dir(&dir).unwrap_err(), WeightsError::Safetensors { .. }));
    std::fs::write(dir.join(SINGLE_FILE), b"").unwrap();
    assert!(matches!(Weights::from_safetensors_dir(&dir).unwrap_err(), WeightsError::Safetensors { .. }));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_tensor_checks_its_shape() {
    assert!(HostTensor::new(vec![2, 3], vec![1.0; 6]).is_some());
    assert!(HostTensor::new(vec![2, 3], vec![1.0; 5]).is_none());
    assert!(HostTensor::new(vec![usize::MAX, 3], vec![]).is_none());
}
