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
    eprintln!("wrote {} ({summary:?})", out_dir.display());
    Ok(())
}
