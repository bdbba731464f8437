//! `kiln perplexity`'s library path on the default model (CPU, weights as stored, 16-bit
//! activation blocks: what the CLI runs by default) over the shipped public-domain text,
//! against llama.cpp (`tests/fixtures/perplexity/llama_cpp_reference.json`, made by
//! `tests/fixtures/make_perplexity_reference.py`): the first 4 windows of 512 tokens (of 7),
//! about 20 s on the 2-core CI machine.
//!
//! - Tokens: the same ids as llama.cpp's tokenizer (count and FNV-1a hash).
//! - Method (windows, BOS, which rows are scored against which tokens), against llama.cpp's
//!   `f32` run: the same dequantized weights multiplied in f32 with an f32 KV cache, which is
//!   kiln's arithmetic. Within 0.05% after every window (measured: 0.002% at most; kiln's
//!   dense path equals it to 1e-5). Any windowing or offset mistake moves it by percent.
//! - The number llama.cpp prints for the Q4_1 file: within 1.5% after 4 windows, not 0.5%.
//!   llama.cpp multiplies Q4_1 weights with 8-bit activations, which on this model raise its
//!   perplexity over its own f32 run by 0.8% after 4 windows (1.2% after 1, 0.4% after 7), and
//!   make it jump with arithmetic as small as the KV cache's type: f16 KV (llama-perplexity's
//!   default, `stored`) gives 16.3421 after 4 windows, f32 KV (`stored_f32_kv`) 16.3976, 0.34%
//!   apart (1.5% apart after 1 window). kiln's 16.2135 is 0.79% and 1.12% below those; over all
//!   7 windows kiln's 16.9105 is 0.42% and 0.75% below 16.9825 and 17.0377. The residual is
//!   llama.cpp's activation rounding, not a difference of method (the `f32` check above).

use kiln_models::loader::{load_with, WeightMode};
use kiln_models::perplexity::{evaluate, ModelSource, Windows};
use kiln_runtime::{DType, Device};
use serde_json::Value;
use std::path::PathBuf;

const WINDOWS: usize = 4;

fn model_path() -> PathBuf {
    match std::env::var_os("KILN_MODEL") {
        Some(p) => p.into(),
        None => kiln_models::fetch::default_model_path().expect("the default model (run `kiln fetch`)"),
    }
}

/// FNV-1a (64-bit) over the ids as little-endian u32 bytes, as the fixture script computes it.
fn fnv1a64(ids: &[u32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ids.iter().flat_map(|t| t.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn running(run: &Value, chunk: usize) -> f64 {
    run["per_chunk"][chunk - 1]["ppl_running"].as_f64().unwrap()
}

#[test]
fn perplexity_matches_llama_cpp_on_the_shipped_text() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/perplexity");
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("llama_cpp_reference.json")).unwrap()).unwrap();
    let text = std::fs::read_to_string(dir.join("founding-documents.txt")).unwrap();

    let t0 = std::time::Instant::now();
    let loaded = load_with(&model_path(), &Device::Cpu, DType::F32, WeightMode::Stored).unwrap();
    let tok = &loaded.tokenizer;
    let add_bos = tok.add_bos_by_default() && tok.bos_id().is_some();
    assert_eq!(add_bos, fx["add_bos"].as_bool().unwrap());
    let tokens = tok.encode(&text, add_bos).unwrap();
    // The same ids as llama.cpp's tokenizer.
    assert_eq!(tokens.len() as u64, fx["text_tokens"].as_u64().unwrap());
    assert_eq!(fnv1a64(&tokens), fx["tokens_fnv1a64"].as_str().unwrap());

    let ctx = fx["ctx"].as_u64().unwrap() as usize;
    let windows = Windows::new(
        tokens.len(),
        ctx,
        Some(WINDOWS),
        loaded.model.info().max_model_len,
        tok.bos_id().filter(|_| add_bos),
    )
    .unwrap();
    assert_eq!(windows.count(), WINDOWS);
    let mut src = ModelSource::new(loaded.model.as_ref());
    let report = evaluate(&mut src, None, &tokens, &windows, |_| {}).unwrap();
    assert_eq!(report.scored, WINDOWS * (ctx - 1 - ctx / 2));

    let runs = &fx["runs"];
    for c in &report.per_chunk {
        let want = running(&runs["f32"], c.chunk);
        let rel = c.ppl / want - 1.0;
        eprintln!(
            "after window {}: kiln {:.4}, llama.cpp f32 {want:.4} ({:+.4}%), Q4_1 {:.4} (f16 KV) / {:.4} (f32 KV)",
            c.chunk,
            c.ppl,
            100.0 * rel,
            running(&runs["stored"], c.chunk),
            running(&runs["stored_f32_kv"], c.chunk)
        );
        assert!(rel.abs() < 5e-4, "window {}: kiln {} vs llama.cpp f32 {want}", c.chunk, c.ppl);
    }
    let ppl = report.model.ppl;
    eprintln!(
        "kiln PPL {ppl:.4} +/- {:.4} over {WINDOWS} windows of {ctx}; {:.1} tok/s; {:.1} s in all",
        report.model.ppl_stderr,
        report.model.tokens_per_s,
        t0.elapsed().as_secs_f64()
    );
    for run in ["stored", "stored_f32_kv"] {
        let want = running(&runs[run], WINDOWS);
        assert!((ppl / want - 1.0).abs() < 1.5e-2, "kiln {ppl} vs llama.cpp Q4_1 ({run}) {want}");
    }
    assert!(report.model.ppl_stderr.is_finite() && report.model.ppl_stderr > 0.0);
}
