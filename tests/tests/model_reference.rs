//! The default model on the CPU against HF transformers (tests/fixtures/reference.json, made by
//! tests/fixtures/make_reference.py): last-position logits within 1e-3, greedy continuations
//! identical for 32 tokens, and the GGUF and converted-safetensors paths giving identical logits.

use kiln_models::generate::generate;
use kiln_models::loader::{load_with, LoadedModel, WeightMode};
use kiln_models::model::ForwardBatch;
use kiln_runtime::attention::SeqAttn;
use kiln_runtime::sample::SamplingParams;
use kiln_runtime::DType;
use kiln_runtime::Device;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference.json");
        serde_json::from_str(&std::fs::read_to_string(&p).expect("tests/fixtures/reference.json")).unwrap()
    })
}

fn model_path() -> PathBuf {
    match std::env::var_os("KILN_MODEL") {
        Some(p) => p.into(),
        None => kiln_models::fetch::default_model_path().expect("the default model (run `kiln fetch`)"),
    }
}

fn gguf_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        load_with(&model_path(), &Device::Cpu, DType::F32, WeightMode::Dense).expect("load the default model")
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Last-position logits of a prompt, in one prefill step.
fn last_logits(m: &LoadedModel, prompt: &[u32]) -> Vec<f32> {
    let n = prompt.len();
    let block = 16;
    let blocks = n.div_ceil(block);
    let mut kv = m.model.new_kv_cache(blocks, block).unwrap();
    let table: Vec<u32> = (0..blocks as u32).collect();
    let positions: Vec<i32> = (0..n as i32).collect();
    let slots: Vec<u32> = (0..n as u32).collect();
    let seqs = [SeqAttn { q_start: 0, q_len: n, ctx_len: n, block_table: &table }];
    let batch =
        ForwardBatch { tokens: prompt, positions: &positions, slots: &slots, seqs: &seqs, logits_rows: &[n - 1] };
    m.model.forward(&batch, &mut kv).unwrap().to_host_f32().unwrap()
}

#[test]
fn prompt_ids_match_hf() {
    let m = gguf_model();
    for p in reference()["prompts"].as_array().unwrap() {
        let got = m.tokenizer.encode(p["text"].as_str().unwrap(), false).unwrap();
        assert_eq!(got, ids(&p["ids"]), "prompt {:?}", p["text"]);
    }
}

#[test]
fn last_logits_match_hf_within_1e3() {
    let r = reference();
    let m = gguf_model();
    let sample_ids = ids(&r["last_logits_sample_ids"]);
    for (i, p) in r["prompts"].as_array().unwrap().iter().enumerate() {
        let logits = last_logits(m, &ids(&p["ids"]));
        let mut worst = 0f32;
        for pair in p["last_logits_top"].as_array().unwrap() {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            worst = worst.max((logits[id] - want).abs());
        }
        for (&id, want) in sample_ids.iter().zip(p["last_logits_sample"].as_array().unwrap()) {
            worst = worst.max((logits[id as usize] - want.as_f64().unwrap() as f32).abs());
        }
        let argmax = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax as u64, p["last_logits_stats"]["argmax"].as_u64().unwrap(), "prompt {i}: argmax");
        assert!(worst <= 1e-3, "prompt {i}: max |kiln - hf| = {worst}");
        eprintln!("prompt {i}: max abs logit error {worst:.2e}");
    }
}

#[test]
fn greedy_32_tokens_identical() {
    let m = gguf_model();
    let params = SamplingParams { temperature: 0.0, max_tokens: 32, ignore_eos: true, ..SamplingParams::default() };
    for (i, p) in reference()["prompts"].as_array().unwrap().iter().enumerate() {
        let out = generate(m.model.as_ref(), &m.tokenizer, &ids(&p["ids"]), &params, |_| {}).unwrap();
        assert_eq!(out.token_ids, ids(&p["greedy_32"]), "prompt {i}: {:?}", out.text);
    }
}

#[test]
fn converted_safetensors_give_identical_logits() {
    let dir = std::env::temp_dir().join(format!("kiln-convert-test-{}", std::process::id()));
    kiln_models::convert::convert_gguf_to_hf_with_tokenizer(
        &model_path(),
        &dir,
        kiln_models::gguf_tokenizer::write_tokenizer_files,
    )
    .expect("convert");
    let hf = load_with(&dir, &Device::Cpu, DType::F32, WeightMode::Dense).expect("load the converted directory");
    let m = gguf_model();
    for p in reference()["prompts"].as_array().unwrap().iter().take(3) {
        let text = p["text"].as_str().unwrap();
        let a = m.tokenizer.encode(text, false).unwrap();
        let b = hf.tokenizer.encode(text, false).unwrap();
        assert_eq!(a, b, "tokenizers differ on {text:?}");
        assert_eq!(last_logits(m, &a), last_logits(&hf, &b), "logits differ on {text:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
