//! `kiln quantize`: a GGUF file rewritten with its weight matrices in another block format,
//! tensor by tensor (each one dequantized to f32 alone, then quantized by ggml's reference
//! rules, `kiln_runtime::device::quant::quantize`), metadata copied.
//!
//! Which tensors change ([`Recipe`]: llama.cpp's `llama_tensor_get_type` for these file types,
//! without an importance matrix): every 2-D `*.weight` matrix takes the recipe's type; the
//! output projection (`output.weight`, or `token_embd.weight` when the embedding is tied)
//! takes Q6_K unless the type is Q8_0; Q4_K_M gives `attn_v` and `ffn_down` Q6_K on a third of
//! the layers (the first and last eighth and every third between, llama.cpp's
//! `use_more_bits`). A k-quant whose rows are not multiples of 256 falls back as llama.cpp's
//! does (Q4_K → Q5_0, Q6_K → Q8_0). Norms, biases and everything 1-D are copied as they are.
//!
//! Invariants: the input is never written (the output may not be the input, by canonical
//! path); the output appears whole or not at all (written to a temporary file beside it, then
//! renamed); an existing output is replaced only when asked. Peak memory is one tensor in f32
//! plus the output being built.

use crate::gguf::{GgmlType, GgufBuilder, GgufError, GgufFile, GgufWriteError, MetadataValue};
use kiln_runtime::device::quant::quantize::{has_quantizer, quantize};
use kiln_runtime::device::quant::{QuantError, QuantFormat};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Format(QuantError),
    #[error("{0}: the output would overwrite the input")]
    SameFile(PathBuf),
    #[error("{0} exists (pass --force to replace it)")]
    Exists(PathBuf),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: tensor {tensor}: {err}")]
    Tensor { path: PathBuf, tensor: String, err: QuantError },
    #[error("{path}: {err}")]
    Write { path: PathBuf, err: GgufWriteError },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// What happened to one tensor.
#[derive(Debug, Clone)]
pub struct TensorChange {
    pub name: String,
    pub from: GgmlType,
    pub to: GgmlType,
}

#[derive(Debug, Clone)]
pub struct QuantizeSummary {
    pub tensors: Vec<TensorChange>,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// A file type `kiln quantize` writes: one block format for the weights, or llama.cpp's
/// Q4_K_M mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Every weight matrix in this format (the output projection in Q6_K unless Q8_0).
    Uniform(QuantFormat),
    /// Q4_K, with Q6_K for the output and for `attn_v` / `ffn_down` on a third of the layers.
    Q4KM,
}

impl Recipe {
    /// llama.cpp's `general.file_type` (`llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            Recipe::Q4KM => 15,
            Recipe::Uniform(f) => match f {
                QuantFormat::Q4_0 => 2,
                QuantFormat::Q4_1 => 3,
                QuantFormat::Q8_0 => 7,
                QuantFormat::Q5_0 => 8,
                QuantFormat::Q5_1 => 9,
                QuantFormat::Q2_K => 10,
                QuantFormat::Q3_K => 12,
                QuantFormat::Q4_K => 14,
                QuantFormat::Q5_K => 16,
                QuantFormat::Q6_K => 18,
            },
        }
    }

    /// The formats this recipe may write (each needs a quantizer).
    fn formats(self) -> Vec<QuantFormat> {
        match self {
            Recipe::Q4KM => vec![QuantFormat::Q4_K, QuantFormat::Q6_K],
            Recipe::Uniform(f) => vec![f, QuantFormat::Q6_K],
        }
    }

    /// The format of tensor `name` (`cols` wide), in a model of `layers` blocks whose output
    /// projection is `is_output`.
    fn target(self, name: &str, cols: usize, layers: usize, is_output: bool) -> QuantFormat {
        let layer = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok());
        // llama.cpp's `use_more_bits` (`i - layers / 8` is only reached when it cannot underflow).
        let more_bits = |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
        let wanted = match self {
            Recipe::Uniform(QuantFormat::Q8_0) => QuantFormat::Q8_0,
            _ if is_output => QuantFormat::Q6_K,
            Recipe::Uniform(f) => f,
            Recipe::Q4KM => {
                let mixed = name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight");
                if mixed && layer.is_some_and(more_bits) {
                    QuantFormat::Q6_K
                } else {
                    QuantFormat::Q4_K
                }
            }
        };
        if cols.is_multiple_of(wanted.block_len()) {
            return wanted;
        }
        // llama.cpp's fallbacks for rows that are not whole super-blocks.
        match wanted {
            QuantFormat::Q2_K | QuantFormat::Q3_K => QuantFormat::Q4_0,
            QuantFormat::Q4_K => QuantFormat::Q5_0,
            QuantFormat::Q5_K => QuantFormat::Q5_1,
            QuantFormat::Q6_K => QuantFormat::Q8_0,
            f => f,
        }
    }
}

/// Writes `input` with its weight matrices quantized by `recipe` to `output` (see the module
/// header).
pub fn quantize_gguf(
    input: &Path,
    output: &Path,
    recipe: Recipe,
    force: bool,
) -> Result<QuantizeSummary, QuantizeError> {
    if let Some(&f) = recipe.formats().iter().find(|&&f| !has_quantizer(f)) {
        return Err(QuantizeError::Format(QuantError::NoQuantizer(f)));
    }
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if same(input, output) {
        return Err(QuantizeError::SameFile(output.to_owned()));
    }
    if output.exists() && !force {
        return Err(QuantizeError::Exists(output.to_owned()));
    }
    let f = GgufFile::open(input)?;
    let mut b = GgufBuilder::new();
    b.version(f.version());
    let write_err = |err| QuantizeError::Write { path: output.to_owned(), err };
    for (k, v) in f.metadata() {
        let v = match k.as_str() {
            "general.file_type" => MetadataValue::U32(recipe.file_type()),
            "general.quantization_version" => MetadataValue::U32(2),
            _ => v.clone(),
        };
        b.metadata(k, v).map_err(write_err)?;
    }
    for (k, v) in [("general.file_type", recipe.file_type()), ("general.quantization_version", 2)] {
        if f.get(k).is_none() {
            b.metadata(k, MetadataValue::U32(v)).map_err(write_err)?;
        }
    }
    let tied = !f.has_tensor("output.weight");
    let layers = f.tensors().iter().filter(|t| t.name.ends_with("ffn_down.weight")).count();
    let mut changes = Vec::new();
    for t in f.tensors() {
        let is_output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
        let cols = t.dims.first().copied().unwrap_or(0) as usize;
        let target = recipe.target(&t.name, cols, layers, is_output);
        let matrix = t.dims.len() == 2 && t.name.ends_with(".weight") && t.ggml_type.can_dequantize();
        let to = GgmlType::of_quant_format(target);
        if !matrix || !cols.is_multiple_of(target.block_len()) || t.ggml_type == to {
            b.tensor(&t.name, &t.dims, t.ggml_type, f.tensor_bytes(t)?.to_vec()).map_err(write_err)?;
            continue;
        }
        let values = f.dequantize(&t.name)?;
        let mut bytes = Vec::with_capacity(values.len() / target.block_len() * target.block_bytes());
        quantize(target, &values, &mut bytes).map_err(|err| QuantizeError::Tensor {
            path: input.to_owned(),
            tensor: t.name.clone(),
            err,
        })?;
        drop(values);
        b.tensor(&t.name, &t.dims, to, bytes).map_err(write_err)?;
        changes.push(TensorChange { name: t.name.clone(), from: t.ggml_type, to });
    }
    let image = b.to_bytes();
    drop(b);
    let io = |err| QuantizeError::Io { path: output.to_owned(), err };
    let tmp = temporary_beside(output);
    std::fs::write(&tmp, &image).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    std::fs::rename(&tmp, output).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    let input_bytes = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
    Ok(QuantizeSummary { tensors: changes, input_bytes, output_bytes: image.len() as u64 })
}

/// `DIR/.NAME.tmp-PID` for `DIR/NAME`: the same file system, so the rename is atomic.
fn temporary_beside(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    output.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
