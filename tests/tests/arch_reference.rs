//! Every architecture against HF transformers, on the tiny random checkpoints of
//! tests/fixtures/arch-tiny (made by tests/fixtures/make_arch_tiny.py with every feature of the
//! architecture on: sliding windows shorter than the longest prompt, softcaps that bite, several
//! experts): on the CPU in f32, the last-position logits of each prompt within 1e-4 of the
//! largest reference logit, every position's logits of the longer prompts (sliding-window
//! positions included), and 32 greedy tokens equal. The GGUF written from the same weights
//! (llama.cpp's names and conventions) is held to the same references.

use kiln_models::loader::load_weights_only;
use kiln_models::model_check::{compare_logits, greedy, prefill_logits};
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arch-tiny").join(arch)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check(arch: &str, path: &Path) {
    let refj: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir(arch).join("reference.json")).unwrap())
        .expect("reference.json");
    let m = load_weights_only(path, &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for p in refj["prompts"].as_array().unwrap() {
        let prompt = ids(&p["ids"]);
        let (last, tokens) = greedy(m.as_ref(), &prompt, 32).unwrap();
        let (err, same_argmax) = compare_logits(&last, &floats(&p["last_logits"]));
        assert!(
            err <= 1e-4 && same_argmax,
            "{arch} {}: prompt of {} tokens: relative error {err}",
            path.display(),
            prompt.len()
        );
        assert_eq!(tokens, ids(&p["greedy_32"]), "{arch} {}: greedy continuation", path.display());
        if let Some(rows) = p.get("all_logits") {
            for (i, (g, want)) in
                prefill_logits(m.as_ref(), &prompt).unwrap().iter().zip(rows.as_array().unwrap()).enumerate()
            {
                let (err, _) = compare_logits(g, &floats(want));
                assert!(err <= 1e-4, "{arch} {}: position {i}: relative error {err}", path.display());
            }
        }
    }
}

fn check_safetensors(arch: &str) {
    check(arch, &fixture_dir(arch));
}

fn check_gguf(arch: &str) {
    check(arch, &fixture_dir(arch).join(format!("{arch}-tiny.gguf")));
}

macro_rules! arch_tests {
    ($($arch:ident),*) => {
        mod safetensors {
            $(#[test] fn $arch() { super::check_safetensors(stringify!($arch)); })*
        }
        mod gguf {
            $(#[test] fn $arch() { super::check_gguf(stringify!($arch)); })*
        }
    };
}

arch_tests!(mistral, qwen3, gemma2, gemma3, falcon, phi3, mixtral, qwen3_moe);
