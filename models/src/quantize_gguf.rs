//! `kiln quantize`: a GGUF file rewritten with its weight matrices in another block format,
//! tensor by tensor (each one dequantized to f32 alone, then quantized by ggml's reference
//! rules, `kiln_runtime::device::quant::quantize`), metadata copied.
//!
//! Which tensors change (llama.cpp's recipe for the 32-value types, without an importance
//! matrix): every 2-D `*.weight` matrix whose rows are whole blocks takes the asked type,
//! except the output projection (`output.weight`, or `token_embd.weight` when the embedding
//! is tied), which takes Q8_0 (llama.cpp gives it Q6_K where its rows are multiples of 256 and
//! falls back to Q8_0 otherwise; kiln has no Q6_K quantizer yet, so on such models the file
//! differs from llama.cpp's there). Norms, biases and everything 1-D are copied as they are.
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

/// llama.cpp's `general.file_type` for a file mostly of `format` (`llama_ftype`).
fn file_type(format: QuantFormat) -> u32 {
    match format {
        QuantFormat::Q4_0 => 2,
        QuantFormat::Q4_1 => 3,
        QuantFormat::Q8_0 => 7,
        QuantFormat::Q5_0 => 8,
        QuantFormat::Q5_1 => 9,
        QuantFormat::Q2_K => 10,
        QuantFormat::Q3_K => 12,
        QuantFormat::Q4_K => 15,
        QuantFormat::Q5_K => 17,
        QuantFormat::Q6_K => 18,
    }
}

fn ggml_type(format: QuantFormat) -> GgmlType {
    match format {
        QuantFormat::Q4_0 => GgmlType::Q4_0,
        QuantFormat::Q4_1 => GgmlType::Q4_1,
        QuantFormat::Q5_0 => GgmlType::Q5_0,
        QuantFormat::Q5_1 => GgmlType::Q5_1,
        QuantFormat::Q8_0 => GgmlType::Q8_0,
        QuantFormat::Q2_K => GgmlType::Q2K,
        QuantFormat::Q3_K => GgmlType::Q3K,
        QuantFormat::Q4_K => GgmlType::Q4K,
        QuantFormat::Q5_K => GgmlType::Q5K,
        QuantFormat::Q6_K => GgmlType::Q6K,
    }
}

/// Writes `input` with its weight matrices in `format` to `output` (see the module header).
pub fn quantize_gguf(
    input: &Path,
    output: &Path,
    format: QuantFormat,
    force: bool,
) -> Result<QuantizeSummary, QuantizeError> {
    if !has_quantizer(format) {
        return Err(QuantizeError::Format(QuantError::NoQuantizer(format)));
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
            "general.file_type" => MetadataValue::U32(file_type(format)),
            "general.quantization_version" => MetadataValue::U32(2),
            _ => v.clone(),
        };
        b.metadata(k, v).map_err(write_err)?;
    }
    for (k, v) in [("general.file_type", file_type(format)), ("general.quantization_version", 2)] {
        if f.get(k).is_none() {
            b.metadata(k, MetadataValue::U32(v)).map_err(write_err)?;
        }
    }
    let tied = !f.has_tensor("output.weight");
    let mut changes = Vec::new();
    for t in f.tensors() {
        let is_output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
        let target = if is_output { QuantFormat::Q8_0 } else { format };
        let cols = t.dims.first().copied().unwrap_or(0) as usize;
        let matrix = t.dims.len() == 2 && t.name.ends_with(".weight") && t.ggml_type.can_dequantize();
        let to = ggml_type(target);
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
