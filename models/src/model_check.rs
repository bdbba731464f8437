//! The whole model on a GPU against the CPU (`kiln-check-model`): the same weights loaded on
//! the CPU in f32 (the reference) and on the GPU in each dtype asked for; per fixture prompt
//! the last position's logits after the prefill and a greedy continuation; then the engine on
//! the GPU, 16 requests alone and all at once (batching invariance).
//!
//! Where the default model's file is too large to take to the GPU machine, [`truncate_gguf`]
//! keeps its first N layers (embedding, final norm and tokenizer kept): the comparison is then
//! of that N-layer model, and the report says so.

use crate::gguf::{GgufBuilder, GgufFile, MetadataValue};
use crate::model::{CausalLm, ForwardBatch, KvCache, ModelError};
use kiln_runtime::attention::SeqAttn;
use std::path::Path;

/// Write `input` with only blocks `0..layers` (and `{arch}.block_count = layers`) to `output`.
pub fn truncate_gguf(input: &Path, output: &Path, layers: usize) -> Result<(), String> {
    let f = GgufFile::open(input).map_err(|e| e.to_string())?;
    let arch = match f.get("general.architecture") {
        Some(MetadataValue::String(a)) => a.clone(),
        _ => return Err("no general.architecture".into()),
    };
    let count_key = format!("{arch}.block_count");
    let mut b = GgufBuilder::new();
    b.version(f.version());
    for (k, v) in f.metadata() {
        let v = if *k == count_key { MetadataValue::U32(layers as u32) } else { v.clone() };
        b.metadata(k, v).map_err(|e| e.to_string())?;
    }
    for t in f.tensors() {
        let keep =
            match t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok()) {
                Some(i) => i < layers,
                None => true,
            };
        if keep {
            let bytes = f.tensor_bytes(t).map_err(|e| e.to_string())?.to_vec();
            b.tensor(&t.name, &t.dims, t.ggml_type, bytes).map_err(|e| e.to_string())?;
        }
    }
    b.write_to(output).map(|_| ()).map_err(|e| format!("{}: {e}", output.display()))
}

/// The logits of every position of `prompt`, from one prefill step in a private cache.
pub fn prefill_logits(model: &dyn CausalLm, prompt: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
    const BS: usize = 16;
    let n = prompt.len();
    let mut kv = model.new_kv_cache(n.div_ceil(BS), BS)?;
    let table: Vec<u32> = (0..n.div_ceil(BS) as u32).collect();
    let positions: Vec<i32> = (0..n as i32).collect();
    let slots: Vec<u32> = (0..n as u32).collect();
    let rows: Vec<usize> = (0..n).collect();
    let seqs = [SeqAttn { q_start: 0, q_len: n, ctx_len: n, block_table: &table }];
    let batch = ForwardBatch { tokens: prompt, positions: &positions, slots: &slots, seqs: &seqs, logits_rows: &rows };
    let flat = model.forward(&batch, &mut kv)?.to_host_f32()?;
    Ok(flat.chunks(model.info().vocab_size).map(<[f32]>::to_vec).collect())
}

/// The prompt's last-position logits, then `n` greedy tokens (lowest id on ties), one
/// sequence in a private cache.
pub fn greedy(model: &dyn CausalLm, prompt: &[u32], n: usize) -> Result<(Vec<f32>, Vec<u32>), ModelError> {
    const BS: usize = 16;
    let total = prompt.len() + n;
    let mut kv: KvCache = model.new_kv_cache(total.div_ceil(BS), BS)?;
    let table: Vec<u32> = (0..total.div_ceil(BS) as u32).collect();
    let argmax = |l: &[f32]| {
        l.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
    };
    let p = prompt.len();
    let positions: Vec<i32> = (0..p as i32).collect();
    let slots: Vec<u32> = (0..p as u32).collect();
    let seqs = [SeqAttn { q_start: 0, q_len: p, ctx_len: p, block_table: &table }];
    let batch =
        ForwardBatch { tokens: prompt, positions: &positions, slots: &slots, seqs: &seqs, logits_rows: &[p - 1] };
    let first = model.forward(&batch, &mut kv)?.to_host_f32()?;
    let mut out = vec![argmax(&first)];
    while out.len() < n {
        let pos = p + out.len() - 1;
        let seqs = [SeqAttn { q_start: 0, q_len: 1, ctx_len: pos + 1, block_table: &table }];
        let tok = [*out.last().unwrap_or(&0)];
        let batch = ForwardBatch {
            tokens: &tok,
            positions: &[pos as i32],
            slots: &[pos as u32],
            seqs: &seqs,
            logits_rows: &[0],
        };
        let l = model.forward(&batch, &mut kv)?.to_host_f32()?;
        out.push(argmax(&l));
    }
    Ok((first, out))
}

/// `max |a - b| / max(max |b|, 1e-3)` and whether the argmaxes agree.
pub fn compare_logits(got: &[f32], want: &[f32]) -> (f64, bool) {
    let mut err = 0f64;
    let mut scale = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        err = err.max((g as f64 - w as f64).abs());
        scale = scale.max((w as f64).abs());
    }
    let am = |v: &[f32]| {
        v.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
    };
    (if err.is_finite() { err / scale.max(1e-3) } else { f64::INFINITY }, am(got) == am(want))
}

/// How many leading tokens two continuations share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The token ids of every prompt of a fixture file (`{"prompts": [{"ids": [...]}, ...]}`, the
/// layout of tests/fixtures/reference.json).
pub fn fixture_prompts(path: &Path) -> Result<Vec<Vec<u32>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let list = v["prompts"].as_array().ok_or_else(|| format!("{}: no prompts", path.display()))?;
    Ok(list
        .iter()
        .filter_map(|p| p["ids"].as_array().map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect()))
        .collect())
}
