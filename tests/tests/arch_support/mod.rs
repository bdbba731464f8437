//! The check both architecture tests share: a fixture of tests/fixtures/arch-tiny against HF
//! transformers' references (see `arch_reference.rs`).

use kiln_models::loader::load_weights_only;
use kiln_models::model_check::{compare_logits, greedy, prefill_logits};
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixture_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/arch-tiny").join(arch)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn check(arch: &str, path: &Path) {
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
