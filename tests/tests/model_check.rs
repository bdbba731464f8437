//! The tools behind `kiln-check-model` on the real default model (CPU): a truncated GGUF keeps
//! the first N layers and still loads and runs, and the check's greedy loop gives the tokens
//! `generate` gives.

use kiln_models::generate::generate;
use kiln_models::loader::{load_with, WeightMode};
use kiln_models::model_check::{common_prefix, greedy, truncate_gguf};
use kiln_runtime::sample::SamplingParams;
use kiln_runtime::DType;
use kiln_runtime::Device;

fn default_model() -> std::path::PathBuf {
    match std::env::var_os("KILN_MODEL") {
        Some(p) => p.into(),
        None => kiln_models::fetch::default_model_path().expect("the default model (run `kiln fetch`)"),
    }
}

#[test]
fn a_truncated_model_loads_and_runs() {
    let dir = std::env::temp_dir().join(format!("kiln-truncate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("three.gguf");
    truncate_gguf(&default_model(), &out, 3).unwrap();
    let m = load_with(&out, &Device::Cpu, DType::F32, WeightMode::Dense).unwrap();
    assert_eq!(m.model.info().num_layers(), 3);
    let ids = m.tokenizer.encode("The capital of France is", false).unwrap();
    let (logits, tokens) = greedy(m.model.as_ref(), &ids, 4).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()) && tokens.len() == 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_check_greedy_loop_is_generate_greedy() {
    let m = load_with(&default_model(), &Device::Cpu, DType::F32, WeightMode::Dense).unwrap();
    let ids = m.tokenizer.encode("def fibonacci(n):", false).unwrap();
    let (_, tokens) = greedy(m.model.as_ref(), &ids, 12).unwrap();
    let params = SamplingParams { max_tokens: 12, ignore_eos: true, ..SamplingParams::greedy() };
    let want = generate(m.model.as_ref(), &m.tokenizer, &ids, &params, |_| {}).unwrap().token_ids;
    assert_eq!(common_prefix(&tokens, &want), 12, "{tokens:?} vs {want:?}");
}
