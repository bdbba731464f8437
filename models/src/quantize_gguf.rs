//! `kiln quantize`: a GGUF file rewritten with its weight matrices in another block format,
//! tensor by tensor (each one dequantized to f32 alone, then quantized by ggml's reference
//! rules, `kiln_runtime::device::quant::quantize`), metadata copied.
//!
//! Which tensors change and to what ([`Recipe`]): llama.cpp's `llama_tensor_get_type` for these
//! file types, without an importance matrix, for the tensors kiln's architectures have:
//! - Quantized are the tensors llama.cpp quantizes: `*weight` tensors of two or three dimensions
//!   (stacked experts) counted as ggml does (a trailing dimension of 1 does not count, so a
//!   one-row matrix is 1-D), except norms (`*_norm.weight`) and MoE routers
//!   (`ffn_gate_inp.weight`). Blocks run along rows, so a stack of experts is quantized as one
//!   matrix of all their rows.
//! - The output projection (`output.weight`, or `token_embd.weight` when the embedding is tied)
//!   takes Q6_K, or Q8_0 for Q8_0 files, Falcon, and rows that are not whole super-blocks.
//! - The mixes: Q4_K_M and Q5_K_M give `attn_v` (`attn_qkv`) and `ffn_down` Q6_K on a third of
//!   the layers (the first and last eighth and every third between, `use_more_bits`); Q3_K_M
//!   gives `attn_v` Q5_K on the first two layers and Q4_K after, `ffn_down` Q5_K on the first
//!   sixteenth and Q4_K after, `attn_output` Q4_K; Q2_K gives `attn_v` Q4_K with four or more
//!   heads per kv head (Q3_K with fewer), `ffn_down` and `attn_output` Q3_K. Falcon keeps its
//!   `attn_output` in the base type and has its own `ffn_down` rules; 70B-class models
//!   (llama.cpp's `LLM_TYPE_70B`: Llama with 80 layers and GQA, Qwen2 with 80 layers) lift a
//!   Q3_K / Q4_K `attn_v` to Q5_K; models of exactly 8 experts take `attn_v` and `attn_k` in
//!   Q8_0 and `attn_output` in Q5_K for the 2- to 4-bit mixes.
//! - A k-quant whose rows are not multiples of 256 falls back as llama.cpp's does (Q2_K / Q3_K →
//!   Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0); a tensor whose rows still do not fit is copied
//!   as it is (llama.cpp writes F16 there).
//! - "The first layers" count `attn_v` / `ffn_down` tensors in llama.cpp's order (by layer, then
//!   name), as its counters do; MoE models (`expert_count` > 1) take the layer from the name.
//!
//! Everything else (norms, biases, 1-D tensors) is copied as it is. The choice is checked against
//! llama.cpp's on synthetic models of every architecture kind (tests/fixtures/quant-recipes.json,
//! models/tests/quantize_gguf.rs) and byte for byte on a real model
//! (tests/tests/llama_cpp_quantized.rs).
//!
//! Invariants: the input is never written (the output may not be the input, by canonical
//! path); the output appears whole or not at all (written to a temporary file beside it, then
//! renamed); an existing output is replaced only when asked. Peak memory is one tensor in f32
//! (and its quantized bytes) plus the output being built, streamed to the file at the end
//! without a second copy. A tensor's rows are quantized on all threads; the bytes are those of
//! one pass (blocks never span rows).

use crate::gguf::{GgmlType, GgufBuilder, GgufError, GgufFile, GgufTensorInfo, GgufWriteError, MetadataValue};
use kiln_runtime::device::quant::quantize::{has_quantizer, quantize};
use kiln_runtime::device::quant::{QuantError, QuantFormat};
use std::collections::HashMap;
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

/// A file type `kiln quantize` writes: llama.cpp's file type (`llama_ftype`) of that name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Every weight matrix in this format but the output projection (Q6_K unless Q8_0): llama.cpp's
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q3_K_S (Q3_K), Q5_K_S (Q5_K) and Q6_K files, which mix
    /// nothing else except for 8-expert models. Q2_K and Q4_K have no such llama.cpp file type
    /// (its Q2_K and Q4_K_S mix): kiln writes them uniform, labelled with those file types.
    Uniform(QuantFormat),
    /// Q2_K with Q3_K (`ffn_down`, `attn_output`) and Q3_K / Q4_K (`attn_v`).
    Q2K,
    /// Q3_K with Q4_K / Q5_K for `attn_v`, `ffn_down` and `attn_output`.
    Q3KM,
    /// Q4_K, with Q6_K for `attn_v` / `ffn_down` on a third of the layers.
    Q4KM,
    /// Q5_K, with Q6_K for `attn_v` / `ffn_down` on a third of the layers.
    Q5KM,
}

impl Recipe {
    /// llama.cpp's `general.file_type` (`llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            Recipe::Q2K => 10,
            Recipe::Q3KM => 12,
            Recipe::Q4KM => 15,
            Recipe::Q5KM => 17,
            Recipe::Uniform(f) => match f {
                QuantFormat::Q4_0 => 2,
                QuantFormat::Q4_1 => 3,
                QuantFormat::Q8_0 => 7,
                QuantFormat::Q5_0 => 8,
                QuantFormat::Q5_1 => 9,
                QuantFormat::Q2_K => 10,
                QuantFormat::Q3_K => 11,
                QuantFormat::Q4_K => 14,
                QuantFormat::Q5_K => 16,
                QuantFormat::Q6_K => 18,
            },
        }
    }

    /// The type of the tensors no rule touches (llama.cpp's `llama_ftype_get_default_type`).
    fn base(self) -> QuantFormat {
        match self {
            Recipe::Uniform(f) => f,
            Recipe::Q2K => QuantFormat::Q2_K,
            Recipe::Q3KM => QuantFormat::Q3_K,
            Recipe::Q4KM => QuantFormat::Q4_K,
            Recipe::Q5KM => QuantFormat::Q5_K,
        }
    }

    /// The format of a quantized tensor of `category` with rows of `cols` values, at position
    /// `index` among its kind (see [`Counters`]), in `model`.
    fn target(self, category: Category, cols: usize, index: usize, model: &ModelFacts) -> QuantFormat {
        use QuantFormat::*;
        let base = self.base();
        // llama.cpp's `use_more_bits` (`i - n / 8` is only reached when it cannot underflow).
        let more_bits = |i: usize, n: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
        let wanted = match category {
            Category::Output if model.falcon || !cols.is_multiple_of(base.block_len()) || base == Q8_0 => Q8_0,
            Category::Output => Q6_K,
            Category::AttnV => {
                let n = model.attn_v_count;
                let mut t = match self {
                    Recipe::Q2K if model.gqa >= 4 => Q4_K,
                    Recipe::Q2K => Q3_K,
                    Recipe::Q3KM if index < 2 => Q5_K,
                    Recipe::Q3KM => Q4_K,
                    Recipe::Q4KM | Recipe::Q5KM if more_bits(index, n) => Q6_K,
                    _ => base,
                };
                if model.is_70b && matches!(t, Q3_K | Q4_K) {
                    // attn_v is eight times smaller than attn_q there: more bits cost little.
                    t = Q5_K;
                }
                if model.experts == 8 {
                    t = Q8_0;
                }
                t
            }
            Category::AttnK if model.experts == 8 => Q8_0,
            Category::FfnDown => {
                let (i, n) = (index, model.layers);
                match self {
                    Recipe::Q2K => Q3_K,
                    Recipe::Q3KM if i < n / 16 => Q5_K,
                    Recipe::Q3KM if !model.falcon || more_bits(i, n) => Q4_K,
                    Recipe::Q3KM => Q3_K,
                    Recipe::Q4KM if model.falcon && i < n / 16 => Q6_K,
                    Recipe::Q4KM if model.falcon && more_bits(i, n) => Q5_K,
                    Recipe::Q4KM if !model.falcon && more_bits(i, n) => Q6_K,
                    Recipe::Q5KM if more_bits(i, n) => Q6_K,
                    _ => base,
                }
            }
            Category::AttnOutput if model.falcon => base,
            Category::AttnOutput if model.experts == 8 => {
                let low_bits = matches!(self, Recipe::Q2K | Recipe::Q3KM | Recipe::Q4KM | Recipe::Uniform(Q3_K));
                if low_bits {
                    Q5_K
                } else {
                    base
                }
            }
            Category::AttnOutput => match self {
                Recipe::Q2K => Q3_K,
                Recipe::Q3KM => Q4_K,
                _ => base,
            },
            _ => base,
        };
        if cols.is_multiple_of(wanted.block_len()) {
            return wanted;
        }
        // llama.cpp's fallbacks for rows that are not whole super-blocks.
        match wanted {
            Q2_K | Q3_K => Q4_0,
            Q4_K => Q5_0,
            Q5_K => Q5_1,
            Q6_K => Q8_0,
            f => f,
        }
    }
}

/// llama.cpp's tensor categories (`tensor_get_category`), as far as the recipes use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    /// `output.weight`, or the token embedding when there is none (tied).
    Output,
    /// `attn_v`, and what llama.cpp treats as it: fused `attn_qkv`, MLA's `attn_kv_b`.
    AttnV,
    AttnK,
    AttnOutput,
    /// Any `ffn_down*` (dense, experts, shared experts).
    FfnDown,
    Other,
}

impl Category {
    /// In llama.cpp's order of tests (a fused `attn_qkv` is not an `attn_q`).
    fn of(name: &str, tied: bool) -> Category {
        if name == "output.weight" || (tied && (name == "token_embd.weight" || name == "per_layer_token_embd.weight")) {
            Category::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Category::Other
        } else if ["attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"].iter().any(|p| name.contains(p)) {
            Category::AttnV
        } else if name.contains("attn_k.weight") {
            Category::AttnK
        } else if name.contains("attn_q.weight") {
            Category::Other
        } else if name.contains("attn_output.weight") {
            Category::AttnOutput
        } else if name.contains("ffn_up") || name.contains("ffn_gate") {
            Category::Other
        } else if name.contains("ffn_down") {
            Category::FfnDown
        } else {
            Category::Other
        }
    }
}

/// What llama.cpp's choice looks at besides the tensor (its `hparams` and `model.type`).
#[derive(Debug)]
struct ModelFacts {
    falcon: bool,
    /// llama.cpp's `LLM_TYPE_70B`.
    is_70b: bool,
    /// Query heads per kv head (0 when unknown).
    gqa: u64,
    experts: u64,
    /// `block_count` (llama.cpp's `n_ffn_down`).
    layers: usize,
    /// How many `attn_v`-like tensors the file has (`n_attention_wv`).
    attn_v_count: usize,
}

impl ModelFacts {
    fn of(f: &GgufFile) -> ModelFacts {
        let arch = f.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("").to_owned();
        // A per-layer array (some models vary heads by layer): llama.cpp reads layer 0's.
        let first = |key: &str| {
            let v = f.get(&format!("{arch}.{key}"))?;
            v.as_u64().or_else(|| v.as_array()?.to_i64s()?.first().and_then(|&x| u64::try_from(x).ok()))
        };
        let heads = first("attention.head_count").unwrap_or(0);
        let kv_heads = first("attention.head_count_kv").unwrap_or(heads);
        let experts = first("expert_count").unwrap_or(0);
        let layers = first("block_count")
            .map(|n| n as usize)
            .unwrap_or_else(|| f.tensors().iter().filter_map(|t| layer_of(&t.name)).max().map_or(0, |l| l + 1));
        let tied = !f.has_tensor("output.weight");
        let attn_v_count = f.tensors().iter().filter(|t| Category::of(&t.name, tied) == Category::AttnV).count();
        let is_70b = layers == 80
            && match arch.as_str() {
                "llama" => experts != 8 && heads != kv_heads,
                "qwen2" => true,
                _ => false,
            };
        ModelFacts {
            falcon: arch == "falcon",
            is_70b,
            gqa: heads.checked_div(kv_heads).unwrap_or(0),
            experts,
            layers,
            attn_v_count,
        }
    }
}

/// The layer of `blk.N.*` (llama.cpp's `sscanf(name, "blk.%d.")`).
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Dimensions as ggml counts them (`ggml_n_dims`): trailing 1s do not count.
fn ggml_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// Whether llama.cpp quantizes the tensor (`tensor_allows_quantization`, for the names kiln's
/// architectures use).
fn quantizable(t: &GgufTensorInfo) -> bool {
    matches!(ggml_dims(&t.dims), 2 | 3)
        && t.name.ends_with("weight")
        && !t.name.contains("_norm.weight")
        && !t.name.contains("ffn_gate_inp.weight")
}

/// Each quantized `attn_v`-like and `ffn_down` tensor's position among its kind, as llama.cpp's
/// counters (`i_attention_wv`, `i_ffn_down`) see them: tensors in the loader's order (by layer,
/// unlayered first, then by name), counting the quantized ones only. MoE models take the
/// `ffn_down` layer from the name instead.
fn positions(f: &GgufFile, model: &ModelFacts, tied: bool) -> HashMap<String, usize> {
    let mut order: Vec<&GgufTensorInfo> = f.tensors().iter().filter(|t| quantizable(t)).collect();
    order.sort_by(|a, b| (layer_of(&a.name), &a.name).cmp(&(layer_of(&b.name), &b.name)));
    let (mut attn_v, mut ffn_down) = (0, 0);
    let mut out = HashMap::new();
    for t in order {
        let at = match Category::of(&t.name, tied) {
            Category::AttnV => {
                attn_v += 1;
                attn_v - 1
            }
            Category::FfnDown if model.experts > 1 => layer_of(&t.name).unwrap_or(0),
            Category::FfnDown => {
                ffn_down += 1;
                ffn_down - 1
            }
            _ => continue,
        };
        out.insert(t.name.clone(), at);
    }
    out
}

/// Writes `input` with its weight matrices quantized by `recipe` to `output` (see the module
/// header).
pub fn quantize_gguf(
    input: &Path,
    output: &Path,
    recipe: Recipe,
    force: bool,
) -> Result<QuantizeSummary, QuantizeError> {
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
    let model = ModelFacts::of(&f);
    let positions = positions(&f, &model, tied);
    let mut changes = Vec::new();
    for t in f.tensors() {
        let cols = t.dims.first().copied().unwrap_or(0) as usize;
        let category = Category::of(&t.name, tied);
        let index = positions.get(&t.name).copied().unwrap_or(0);
        let target = recipe.target(category, cols, index, &model);
        let to = GgmlType::of_quant_format(target);
        let matrix = quantizable(t) && t.ggml_type.can_dequantize();
        if !matrix || !cols.is_multiple_of(target.block_len()) || t.ggml_type == to {
            b.tensor(&t.name, &t.dims, t.ggml_type, f.tensor_bytes(t)?.to_vec()).map_err(write_err)?;
            continue;
        }
        if !has_quantizer(target) {
            return Err(QuantizeError::Format(QuantError::NoQuantizer(target)));
        }
        let values = f.dequantize(&t.name)?;
        let bytes = quantize_rows(target, &values, cols).map_err(|err| QuantizeError::Tensor {
            path: input.to_owned(),
            tensor: t.name.clone(),
            err,
        })?;
        drop(values);
        b.tensor(&t.name, &t.dims, to, bytes).map_err(write_err)?;
        changes.push(TensorChange { name: t.name.clone(), from: t.ggml_type, to });
    }
    let io = |err| QuantizeError::Io { path: output.to_owned(), err };
    let tmp = temporary_beside(output);
    let written = b.write_to(&tmp).and_then(|n| std::fs::rename(&tmp, output).map(|_| n)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    let input_bytes = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
    Ok(QuantizeSummary { tensors: changes, input_bytes, output_bytes: written })
}

/// `values` (rows of `cols`) quantized to `format`, rows spread over threads: blocks never span
/// rows and each block's bytes depend on its values alone, so the bytes equal one [`quantize`]
/// of the whole tensor.
fn quantize_rows(format: QuantFormat, values: &[f32], cols: usize) -> Result<Vec<u8>, QuantError> {
    use rayon::prelude::*;
    // About 64k values a task: enough to amortise the task, small enough to balance.
    let cols = cols.max(1);
    let rows_per_task = (65_536 / cols).max(1);
    let parts: Vec<Vec<u8>> = values
        .par_chunks(rows_per_task * cols)
        .map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len() / format.block_len() * format.block_bytes());
            quantize(format, chunk, &mut out).map(|_| out)
        })
        .collect::<Result<_, _>>()?;
    Ok(parts.concat())
}

/// `DIR/.NAME.tmp-PID` for `DIR/NAME`: the same file system, so the rename is atomic.
fn temporary_beside(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    output.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
