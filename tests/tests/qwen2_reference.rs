//! Qwen2 against HF transformers on a tiny random checkpoint (tests/fixtures/qwen2-tiny, made
//! by tests/fixtures/make_qwen2_tiny.py): every logit of a prefill within 1e-4 of the largest
//! reference logit, greedy continuations equal, the GGUF form of the same weights (llama.cpp
//! names, Q/K rows unpermuted) giving the same logits; and the loader refusing what Qwen2 does
//! not implement, leftover tensors and missing biases, each with the name in the error.

use kiln_models::loader::load_weights_only;
use kiln_models::model_check::{compare_logits, greedy, prefill_logits};
use kiln_models::weights::{HostTensor, Weights};
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen2-tiny")
}

fn reference() -> Value {
    let p = fixture_dir().join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("qwen2-tiny/reference.json")).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check_against_hf(path: &Path) {
    let m = load_weights_only(path, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(m.info().architecture, "qwen2");
    let r = reference();
    for p in r["prompts"].as_array().unwrap() {
        let prompt = ids(&p["ids"]);
        let (last, tokens) = greedy(m.as_ref(), &prompt, 16).unwrap();
        let (err, same_argmax) = compare_logits(&last, &floats(&p["last_logits"]));
        assert!(
            err <= 1e-4 && same_argmax,
            "{}: prompt of {} tokens: relative error {err}",
            path.display(),
            prompt.len()
        );
        assert_eq!(tokens, ids(&p["greedy_16"]), "{}: greedy continuation", path.display());
        if let Some(rows) = p.get("all_logits") {
            let got = prefill_logits(m.as_ref(), &prompt).unwrap();
            for (i, (g, want)) in got.iter().zip(rows.as_array().unwrap()).enumerate() {
                let (err, _) = compare_logits(g, &floats(want));
                assert!(err <= 1e-4, "position {i}: relative error {err}");
            }
        }
    }
}

#[test]
fn hf_safetensors_match_transformers() {
    check_against_hf(&fixture_dir());
}

#[test]
fn gguf_matches_transformers() {
    check_against_hf(&fixture_dir().join("qwen2-tiny.gguf"));
}

/// A copy of the fixture checkpoint with `edit` applied to its config and tensors.
fn edited(tag: &str, edit: impl FnOnce(&mut Value, &mut Weights)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-qwen2-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("config.json")).unwrap()).unwrap();
    let mut w = Weights::from_safetensors_dir(&fixture_dir()).unwrap();
    edit(&mut cfg, &mut w);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    kiln_models::safetensors_io::write_safetensors(&dir.join("model.safetensors"), &w).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    let e = load_weights_only(dir, &Device::Cpu, DType::F32).err().expect("the load must fail").to_string();
    let _ = std::fs::remove_dir_all(dir);
    e
}

#[test]
fn sliding_window_is_refused_by_name() {
    let dir = edited("swa", |c, _| {
        c["use_sliding_window"] = Value::Bool(true);
        c["sliding_window"] = 4096.into();
    });
    let e = load_error(&dir);
    assert!(e.contains("use_sliding_window"), "{e}");
}

#[test]
fn a_tensor_the_architecture_does_not_use_is_an_error() {
    let dir = edited("extra", |_, w| {
        w.insert("model.layers.0.self_attn.o_proj.bias", HostTensor::new(vec![64], vec![0.5; 64]).unwrap()).unwrap();
    });
    let e = load_error(&dir);
    assert!(e.contains("model.layers.0.self_attn.o_proj.bias") && e.contains("not used"), "{e}");
}

#[test]
fn a_missing_bias_is_an_error_naming_it() {
    let dir = edited("nobias", |_, w| {
        w.take("model.layers.1.self_attn.k_proj.bias").unwrap();
    });
    let e = load_error(&dir);
    assert!(e.contains("model.layers.1.self_attn.k_proj.bias"), "{e}");
}

#[test]
fn a_llama_config_with_an_attention_bias_is_refused() {
    let dir = edited("llama-bias", |c, _| {
        c["model_type"] = "llama".into();
        c["attention_bias"] = Value::Bool(true);
    });
    let e = load_error(&dir);
    assert!(e.contains("attention_bias"), "{e}");
}
