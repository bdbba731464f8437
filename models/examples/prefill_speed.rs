//! Prefill time of a model on the CPU, the model loaded once and the same prompt prefilled again
//! and again (each into a fresh KV cache): median wall time, and the median CPU time of all
//! threads (/proc/self/task/*/schedstat), which does not count time spent preempted by other
//! work on a shared machine — compare two builds by CPU time with `RAYON_NUM_THREADS=1`.
//!
//! `cargo run --release -p kiln-models --example prefill_speed -- MODEL.gguf [TOKENS] [RUNS]`
//! (default: 55 tokens of the longest fixture prompt repeated, 15 runs; weights as stored;
//! `KILN_CPU_ACTIVATIONS`, `KILN_CPU_SIMD` as for `kiln`).

use kiln_models::loader::{load_with, WeightMode};
use kiln_runtime::attention::SeqAttn;
use kiln_runtime::device::timing::{median, process_cpu_seconds};
use kiln_runtime::model::ForwardBatch;
use kiln_runtime::{DType, Device};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().expect("usage: prefill_speed MODEL.gguf [TOKENS] [RUNS]"));
    let tokens: usize = args.next().map_or(55, |t| t.parse().expect("a token count"));
    let runs: usize = args.next().map_or(15, |r| r.parse().expect("a run count"));
    let loaded = load_with(&path, &Device::Cpu, DType::F32, WeightMode::Stored).expect("load the model");
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference.json");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures).expect("reference.json")).unwrap();
    let longest = r["prompts"].as_array().unwrap().iter().map(|p| p["ids"].as_array().unwrap().len()).max().unwrap();
    let prompt: Vec<u32> =
        r["prompts"].as_array().unwrap().iter().find(|p| p["ids"].as_array().unwrap().len() == longest).unwrap()["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .cycle()
            .take(tokens)
            .collect();
    let model = loaded.model.as_ref();
    let block = 16;
    let blocks = tokens.div_ceil(block);
    let table: Vec<u32> = (0..blocks as u32).collect();
    let positions: Vec<i32> = (0..tokens as i32).collect();
    let slots: Vec<u32> = (0..tokens as u32).collect();
    let seqs = [SeqAttn { q_start: 0, q_len: tokens, ctx_len: tokens, block_table: &table }];
    let batch =
        ForwardBatch { tokens: &prompt, positions: &positions, slots: &slots, seqs: &seqs, logits_rows: &[tokens - 1] };
    let (mut wall, mut cpu, mut first) = (vec![], vec![], 0.0);
    for run in 0..=runs {
        let mut kv = model.new_kv_cache(blocks, block).expect("a KV cache");
        let (t, c) = (Instant::now(), process_cpu_seconds());
        std::hint::black_box(model.forward(&batch, &mut kv).expect("prefill").to_host_f32().unwrap());
        // Run 0 is apart: the first touch of the weights' pages and of fresh allocations.
        if run == 0 {
            first = t.elapsed().as_secs_f64();
        } else {
            wall.push(t.elapsed().as_secs_f64());
            if let (Some(c0), Some(c1)) = (c, process_cpu_seconds()) {
                cpu.push(c1 - c0);
            }
        }
    }
    let (w, c) = (median(&mut wall), median(&mut cpu));
    println!(
        "{} {tokens} tokens, {} threads: wall {:.1} ms ({:.0} tok/s), CPU {:.1} ms; the first prefill {:.1} ms",
        path.file_name().unwrap().to_string_lossy(),
        rayon::current_num_threads(),
        w * 1e3,
        tokens as f64 / w,
        c * 1e3,
        first * 1e3
    );
}
