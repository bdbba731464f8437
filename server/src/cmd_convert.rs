//! `kiln convert GGUF OUT_DIR`.

use anyhow::{Context, Result};
use std::path::Path;

pub fn run(gguf: &Path, out_dir: &Path) -> Result<()> {
    let summary = kiln_models::convert::convert_gguf_to_hf_with_tokenizer(
        gguf,
        out_dir,
        kiln_models::gguf_tokenizer::write_tokenizer_files,
    )
    .with_context(|| format!("converting {}", gguf.display()))?;
    let c = &summary.config;
    println!(
        "converted {} ({} architecture: {} layers, hidden {}, {} heads / {} KV heads, vocab {}) to {}",
        gguf.display(),
        c.architecture,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        out_dir.display()
    );
    println!("{} tensors, {:.1} M parameters, stored as f32", summary.n_tensors, summary.n_params as f64 / 1e6);
    for f in &summary.files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        println!("  {:>10}  {}", human_bytes(size), f.display());
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
