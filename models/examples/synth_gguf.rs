//! A synthetic Llama-shaped GGUF in F16: one of [`kiln_models::synth::PRESETS`]' shapes with
//! seeded random weights and the tokenizer of another GGUF (its `tokenizer.*` metadata copied
//! whole, the vocabulary size taken from it), for CPU speed work on models larger than the
//! default one, whose weights no longer fit the caches. `kiln quantize --type q4_k_m` (or any
//! type) then makes the quantized files, which kiln and llama.cpp both read; the text they
//! generate is noise, the time a step takes is not.
//!
//! `cargo run --release -p kiln-models --example synth_gguf -- TOKENIZER.gguf PRESET OUT.gguf [SEED]`
//!
//! Weights: `kiln_models::synth`'s initialisation ([`Init`] ranges, tensor `n` of the file,
//! counted from 1 in the order written, filled as `fill_uniform` fills it with
//! `tensor_seed(seed, n)`), tied output (as Llama 3.2 1B). The preset's RoPE scaling is left
//! out: llama.cpp takes Llama 3 scaling as a `rope_freqs` tensor, and scaling does not change
//! speed.

use half::f16;
use half::slice::HalfFloatSliceExt;
use kiln_models::gguf::{GgmlType, GgufBuilder, GgufFile, MetadataArray, MetadataValue};
use kiln_models::synth::{preset, tensor_seed, Init};
use kiln_runtime::device::device_kernels::uniform_value;
use std::path::PathBuf;

/// The `rows × cols` values of the file's tensor `n`, as `fill_uniform` computes them.
fn values(seed: u64, n: u64, rows: usize, cols: usize, init: Init) -> Vec<f32> {
    let (lo, hi) = init.range();
    let seed = tensor_seed(seed, n);
    (0..(rows * cols) as u64).map(|i| uniform_value(seed, i, lo, hi)).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(3..=4).contains(&args.len()) {
        return Err("usage: synth_gguf TOKENIZER.gguf PRESET OUT.gguf [SEED]".into());
    }
    let source = GgufFile::open(&args[0])?;
    let mut cfg = preset(&args[1]).ok_or_else(|| format!("unknown preset '{}'", args[1]))?;
    let out = PathBuf::from(&args[2]);
    let seed: u64 = args.get(3).map_or(Ok(0), |s| s.parse())?;

    let mut b = GgufBuilder::new();
    let vocab = match source.get("tokenizer.ggml.tokens") {
        Some(MetadataValue::Array(MetadataArray::String(tokens))) => tokens.len(),
        _ => return Err(format!("{}: no tokenizer.ggml.tokens", args[0]).into()),
    };
    cfg.vocab_size = vocab;
    let (h, ffn, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let u32v = |x: usize| MetadataValue::U32(x as u32);
    b.metadata("general.architecture", MetadataValue::String("llama".into()))?;
    b.metadata("general.name", MetadataValue::String(format!("synthetic {} (seed {seed})", args[1])))?;
    b.metadata("general.file_type", MetadataValue::U32(1))?; // mostly F16
    b.metadata("llama.vocab_size", u32v(vocab))?;
    b.metadata("llama.context_length", u32v(cfg.max_position_embeddings.min(8192)))?;
    b.metadata("llama.embedding_length", u32v(h))?;
    b.metadata("llama.feed_forward_length", u32v(ffn))?;
    b.metadata("llama.block_count", u32v(cfg.num_hidden_layers))?;
    b.metadata("llama.attention.head_count", u32v(cfg.num_attention_heads))?;
    b.metadata("llama.attention.head_count_kv", u32v(cfg.num_key_value_heads))?;
    b.metadata("llama.attention.key_length", u32v(cfg.head_dim))?;
    b.metadata("llama.attention.value_length", u32v(cfg.head_dim))?;
    b.metadata("llama.rope.dimension_count", u32v(cfg.head_dim))?;
    b.metadata("llama.rope.freq_base", MetadataValue::F32(cfg.rope_theta))?;
    b.metadata("llama.attention.layer_norm_rms_epsilon", MetadataValue::F32(cfg.rms_norm_eps))?;
    for (k, v) in source.metadata() {
        if k.starts_with("tokenizer.") {
            b.metadata(k, v.clone())?;
        }
    }

    let mut n = 0u64;
    let mut add = |b: &mut GgufBuilder, name: String, rows: usize, cols: usize, init: Init| {
        n += 1;
        let x = values(seed, n, rows, cols, init);
        // Norms are F32 vectors, as llama.cpp's converter writes them; matrices F16.
        if let Init::Norm = init {
            return b.tensor(&name, &[cols as u64], GgmlType::F32, bytemuck::cast_slice(&x).to_vec()).map(|_| ());
        }
        let mut halves = vec![f16::ZERO; x.len()];
        halves.convert_from_f32_slice(&x);
        b.tensor(&name, &[cols as u64, rows as u64], GgmlType::F16, bytemuck::cast_slice(&halves).to_vec()).map(|_| ())
    };
    let linear = |fan_in: usize| Init::Linear { fan_in };
    add(&mut b, "token_embd.weight".into(), vocab, h, Init::Embedding)?;
    for l in 0..cfg.num_hidden_layers {
        let p = |t: &str| format!("blk.{l}.{t}.weight");
        add(&mut b, p("attn_norm"), 1, h, Init::Norm)?;
        add(&mut b, p("attn_q"), q, h, linear(h))?;
        add(&mut b, p("attn_k"), kv, h, linear(h))?;
        add(&mut b, p("attn_v"), kv, h, linear(h))?;
        add(&mut b, p("attn_output"), h, q, linear(q))?;
        add(&mut b, p("ffn_norm"), 1, h, Init::Norm)?;
        add(&mut b, p("ffn_gate"), ffn, h, linear(h))?;
        add(&mut b, p("ffn_up"), ffn, h, linear(h))?;
        add(&mut b, p("ffn_down"), h, ffn, linear(ffn))?;
    }
    add(&mut b, "output_norm.weight".into(), 1, h, Init::Norm)?;
    b.write_to(&out)?;
    eprintln!("wrote {} ({} layers, hidden {h}, vocab {vocab})", out.display(), cfg.num_hidden_layers);
    Ok(())
}
