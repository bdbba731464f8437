//! A synthetic Llama-shaped GGUF in F16: one of [`kiln_models::synth::PRESETS`]' shapes with
//! seeded random weights and the tokenizer of another GGUF (its `tokenizer.*` metadata copied
//! whole, the vocabulary size taken from it), for CPU speed work on models larger than the
//! default one, whose weights no longer fit the caches. `kiln quantize --type q4_k_m` (or any
//! type) then makes the quantized files, which kiln and llama.cpp both read; the text they
//! generate is noise, the time a step takes is not.
//!
//! `cargo run --release -p kiln-models --example synth_gguf -- TOKENIZER.gguf PRESET OUT.gguf [SEED]`
//!
//! Weights: projections uniform in `±sqrt(3 / fan_in)`, norms 1, embedding `±0.05` (as
//! `kiln_models::synth`), tied output (as Llama 3.2 1B). The preset's RoPE scaling is left out:
//! llama.cpp takes Llama 3 scaling as a `rope_freqs` tensor, and scaling does not change speed.

use half::f16;
use half::slice::HalfFloatSliceExt;
use kiln_models::gguf::{GgmlType, GgufBuilder, GgufFile, MetadataArray, MetadataValue};
use kiln_models::synth::preset;
use std::path::PathBuf;

/// splitmix64: a fixed generator, so a seed names the same file on every machine.
struct Rng(u64);

impl Rng {
    fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 24 bits as a float in [-1, 1).
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn uniform_f16(rng: &mut Rng, n: usize, bound: f32) -> Vec<u8> {
    let values: Vec<f32> = (0..n).map(|_| rng.next_unit() * bound).collect();
    let mut halves = vec![f16::ZERO; n];
    halves.convert_from_f32_slice(&values);
    bytemuck::cast_slice(&halves).to_vec()
}

fn ones_f32(n: usize) -> Vec<u8> {
    bytemuck::cast_slice(&vec![1f32; n]).to_vec()
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

    let mut rng = Rng(seed);
    let mut matrix = |b: &mut GgufBuilder, name: String, rows: usize, cols: usize, bound: f32| {
        let bytes = uniform_f16(&mut rng, rows * cols, bound);
        b.tensor(&name, &[cols as u64, rows as u64], GgmlType::F16, bytes).map(|_| ())
    };
    let proj = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    matrix(&mut b, "token_embd.weight".into(), vocab, h, 0.05)?;
    for l in 0..cfg.num_hidden_layers {
        let p = |t: &str| format!("blk.{l}.{t}.weight");
        b.tensor(&p("attn_norm"), &[h as u64], GgmlType::F32, ones_f32(h))?;
        matrix(&mut b, p("attn_q"), q, h, proj(h))?;
        matrix(&mut b, p("attn_k"), kv, h, proj(h))?;
        matrix(&mut b, p("attn_v"), kv, h, proj(h))?;
        matrix(&mut b, p("attn_output"), h, q, proj(q))?;
        b.tensor(&p("ffn_norm"), &[h as u64], GgmlType::F32, ones_f32(h))?;
        matrix(&mut b, p("ffn_gate"), ffn, h, proj(h))?;
        matrix(&mut b, p("ffn_up"), ffn, h, proj(h))?;
        matrix(&mut b, p("ffn_down"), h, ffn, proj(ffn))?;
    }
    b.tensor("output_norm.weight", &[h as u64], GgmlType::F32, ones_f32(h))?;
    b.write_to(&out)?;
    eprintln!("wrote {} ({} layers, hidden {h}, vocab {vocab})", out.display(), cfg.num_hidden_layers);
    Ok(())
}
