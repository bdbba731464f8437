//! Config parsing from HF JSON and GGUF metadata, and the HF JSON round trip.

use super::*;
use crate::gguf::{GgmlType, GgufBuilder, GgufFile, MetadataArray, MetadataValue};

const SMOLLM2_HF: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
  "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
  "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "vocab_size": 49152
}"#;

fn smollm2() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        vocab_size: 49152,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        architecture: "llama".into(),
    }
}

#[test]
fn parses_an_hf_config() {
    assert_eq!(LlamaConfig::from_hf_json_str(SMOLLM2_HF, "config.json").unwrap(), smollm2());
}

#[test]
fn parses_llama3_rope_scaling_and_eos_lists() {
    let text = r#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;
    let c = LlamaConfig::from_hf_json_str(text, "c.json").unwrap();
    assert_eq!(c.head_dim, 128);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.eos_token_ids, [128001, 128008, 128009]);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling {
            kind: RopeScalingKind::Llama3,
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    let back = LlamaConfig::from_hf_json_str(&c.to_hf_config_json().to_string(), "back.json").unwrap();
    assert_eq!(back, c);
}

#[test]
fn hf_json_round_trips() {
    let mut c = smollm2();
    let v = c.to_hf_config_json();
    assert_eq!(v["architectures"][0], "LlamaForCausalLM");
    assert_eq!(v["eos_token_id"], 2);
    assert_eq!(LlamaConfig::from_hf_json_str(&v.to_string(), "x").unwrap(), c);
    c.rope_scaling = Some(RopeScaling {
        kind: RopeScalingKind::Linear,
        factor: 2.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    });
    c.eos_token_ids = vec![2, 0];
    assert_eq!(LlamaConfig::from_hf_json_str(&c.to_hf_config_json().to_string(), "x").unwrap(), c);
}

#[test]
fn bad_hf_configs_name_the_field() {
    let no_hidden = SMOLLM2_HF.replace("\"hidden_size\": 576,", "");
    let e = LlamaConfig::from_hf_json_str(&no_hidden, "m/config.json").unwrap_err();
    assert_eq!(e.to_string(), "m/config.json: missing required field 'hidden_size'");
    let bad_kv = SMOLLM2_HF.replace("\"num_key_value_heads\": 3", "\"num_key_value_heads\": 4");
    assert!(
        matches!(LlamaConfig::from_hf_json_str(&bad_kv, "c").unwrap_err(), ConfigError::Invalid { field, .. } if field == "num_key_value_heads")
    );
    let yarn =
        SMOLLM2_HF.replace("\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}");
    assert!(matches!(LlamaConfig::from_hf_json_str(&yarn, "c").unwrap_err(), ConfigError::Unsupported { .. }));
    assert!(matches!(LlamaConfig::from_hf_json_str("{", "c").unwrap_err(), ConfigError::Json { .. }));
}

fn smollm2_gguf(extra: &[(&str, MetadataValue)], with_output: bool) -> GgufBuilder {
    use MetadataValue as V;
    let mut b = GgufBuilder::new();
    let meta = [
        ("general.architecture", V::String("llama".into())),
        ("llama.embedding_length", V::U32(576)),
        ("llama.feed_forward_length", V::U32(1536)),
        ("llama.block_count", V::U32(30)),
        ("llama.attention.head_count", V::U32(9)),
        ("llama.attention.head_count_kv", V::U32(3)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.rope.freq_base", V::F32(100000.0)),
        ("llama.rope.dimension_count", V::U32(64)),
        ("llama.context_length", V::U32(8192)),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
    ];
    for (k, v) in meta.into_iter().chain(extra.iter().cloned()) {
        b.metadata(k, v).unwrap();
    }
    if with_output {
        b.tensor("output.weight", &[32, 2], GgmlType::Q8_0, vec![1; 68]).unwrap();
    }
    b
}

fn from_builder(b: &GgufBuilder) -> Result<LlamaConfig, ConfigError> {
    LlamaConfig::from_gguf(&GgufFile::from_bytes("m.gguf", b.to_bytes()).unwrap())
}

#[test]
fn parses_gguf_metadata() {
    let vocab = ("llama.vocab_size", MetadataValue::U32(49152));
    assert_eq!(from_builder(&smollm2_gguf(std::slice::from_ref(&vocab), false)).unwrap(), smollm2());

    // vocab from the token list; untied when output.weight exists; eot joins the stop ids.
    let tokens = MetadataValue::Array(MetadataArray::String((0..100).map(|i| format!("t{i}")).collect()));
    let c = from_builder(&smollm2_gguf(
        &[("tokenizer.ggml.tokens", tokens), ("tokenizer.ggml.eot_token_id", MetadataValue::U32(7))],
        true,
    ))
    .unwrap();
    assert_eq!((c.vocab_size, c.tie_word_embeddings, c.eos_token_ids.clone()), (100, false, vec![2, 7]));

    let linear = [
        vocab.clone(),
        ("llama.rope.scaling.type", MetadataValue::String("linear".into())),
        ("llama.rope.scaling.factor", MetadataValue::F32(4.0)),
    ];
    let c = from_builder(&smollm2_gguf(&linear, false)).unwrap();
    assert_eq!(c.rope_scaling.map(|s| (s.kind, s.factor)), Some((RopeScalingKind::Linear, 4.0)));
}

#[test]
fn bad_gguf_metadata_is_an_error() {
    let vocab = ("llama.vocab_size", MetadataValue::U32(49152));
    let e = from_builder(&smollm2_gguf(&[], false)).unwrap_err();
    assert_eq!(e.to_string(), "m.gguf: missing required field 'llama.vocab_size'");
    let yarn = [vocab.clone(), ("llama.rope.scaling.type", MetadataValue::String("yarn".into()))];
    assert!(matches!(from_builder(&smollm2_gguf(&yarn, false)).unwrap_err(), ConfigError::Unsupported { .. }));
    let mut b = smollm2_gguf(std::slice::from_ref(&vocab), false);
    b.tensor("rope_freqs.weight", &[32], GgmlType::F32, vec![0; 128]).unwrap();
    assert!(matches!(from_builder(&b).unwrap_err(), ConfigError::Unsupported { .. }));
    // A negative size: built from scratch, since the builder rejects a second context_length.
    let mut b = GgufBuilder::new();
    let meta = [
        ("general.architecture", MetadataValue::String("llama".into())),
        ("llama.embedding_length", MetadataValue::U32(576)),
        ("llama.attention.head_count", MetadataValue::U32(9)),
        vocab,
        ("llama.context_length", MetadataValue::I32(-1)),
    ];
    for (k, v) in meta {
        b.metadata(k, v).unwrap();
    }
    let e = from_builder(&b).unwrap_err();
    assert!(matches!(&e, ConfigError::Invalid { field, .. } if field == "llama.context_length"), "{e}");
}
