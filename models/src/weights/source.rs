//! [`WeightSource`]: a checkpoint's tensors, memory-mapped, handed out one at a time in the
//! form they are stored — the lazy source every model loads from.
//!
//! A source is opened over an HF safetensors directory (one file or shards) or a GGUF file.
//! Tensors are keyed by their HF names: a GGUF's llama.cpp names are mapped through the
//! architecture's [`GgufNaming`] when the source is opened, and a tensor with no mapping is
//! an error then, never dropped. Nothing is read or converted until a tensor is asked for, so
//! loading holds about one tensor in host memory beyond the model itself.
//!
//! Invariants:
//! - [`StoredTensor::bytes`] are the tensor's bytes exactly as stored (little-endian, row-major
//!   over the HF shape, GGML blocks along the innermost dimension), for the whole tensor or one
//!   [`Shard`] of it; a shard never cuts a quantization block (that is an error naming the
//!   tensor);
//! - Q/K rows that llama.cpp stored permuted for its RoPE layout are marked
//!   ([`StoredTensor::permuted_heads`]) and put back in HF order by [`WeightSource::f32`] and
//!   the uploads; a row shard of such a tensor holds whole heads;
//! - every tensor read is recorded, so [`WeightSource::check_all_used`] can name any tensor of
//!   the checkpoint that the architecture did not consume (a silently dropped tensor — a bias,
//!   a norm — would change the output unnoticed).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_runtime::comm::Communicator;
use kiln_runtime::device::linear::Weight;
use kiln_runtime::device::quant::act_quant::w8a8_act;
use kiln_runtime::device::quant::int4::Int4Matrix;
use kiln_runtime::device::quant::int4_cuda::Int4Cuda;
use kiln_runtime::device::quant::w8::W8Matrix;
use kiln_runtime::device::quant::w8_cuda::{self, W8Cuda, W8Policy};
use kiln_runtime::device::quant::{QuantMatrix, SharedBytes};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use super::packed::{PackedConfig, PackedKind};
use super::scaled::{ScaledConfig, ScaledElem};
use super::{HostTensor, WeightsError};
use crate::gguf::{dequantize_into, unpermute_qk_rows, GgmlType, GgufFile};
use crate::safetensors_io::{INDEX_FILE, SINGLE_FILE};

mod gpu_blocks;

/// How a tensor is stored in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredFormat {
    /// A GGML element or block type: F32 / F16 / BF16 (from either kind of file) or a GGUF
    /// quantized block type (Q4_0, Q8_0, Q4_K, ...); I8 / I32 / I64 integers (packed words,
    /// zero points, shapes and the int8 weights of scaled checkpoints).
    Ggml(GgmlType),
    /// OCP FP8 E4M3 ("e4m3fn": no infinities; safetensors `F8_E4M3`), one byte per value: the
    /// weights of FP8 checkpoints, whose scales are separate tensors (see [`super::scaled`]).
    Fp8E4M3,
}

impl StoredFormat {
    /// `(elements, bytes)` of one block (`(1, 4)` for F32).
    fn block(self) -> (usize, usize) {
        match self {
            StoredFormat::Ggml(t) => {
                let (len, bytes) = t.block_layout();
                (len as usize, bytes as usize)
            }
            StoredFormat::Fp8E4M3 => (1, 1),
        }
    }

    /// The storage dtype whose bytes these are unchanged, for dense formats.
    fn dense_dtype(self) -> Option<DType> {
        match self {
            StoredFormat::Ggml(GgmlType::F32) => Some(DType::F32),
            StoredFormat::Ggml(GgmlType::F16) => Some(DType::F16),
            StoredFormat::Ggml(GgmlType::Bf16) => Some(DType::BF16),
            StoredFormat::Ggml(_) | StoredFormat::Fp8E4M3 => None,
        }
    }
}

impl std::fmt::Display for StoredFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredFormat::Ggml(t) => f.write_str(t.name()),
            StoredFormat::Fp8E4M3 => f.write_str("f8_e4m3"),
        }
    }
}

/// One rank's part of a tensor split `world` ways along `dim` (0: rows / output features,
/// 1: columns / input features).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
    pub dim: usize,
}

/// The part of a stored matrix a reader takes: a tensor-parallel rank's rows (a column-parallel
/// projection, a vocabulary shard, one of the q/k/v parts of a fused projection) or columns (a
/// row-parallel projection). A vector's rows are its elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Part {
    #[default]
    Whole,
    Rows(std::ops::Range<usize>),
    /// Whole quantization blocks of every row.
    Cols(std::ops::Range<usize>),
}

impl Part {
    /// `shard`'s part of a dimension of `len`: an even split or an error saying why not.
    fn of_shard(shard: Shard, len: usize) -> Result<Part, String> {
        if shard.world == 0 || shard.rank >= shard.world {
            return Err(format!("shard {} of {} does not exist", shard.rank, shard.world));
        }
        if !len.is_multiple_of(shard.world) {
            let what = if shard.dim == 0 { "rows" } else { "columns" };
            return Err(format!("{len} {what} do not split evenly {} ways", shard.world));
        }
        let n = len / shard.world;
        let r = shard.rank * n..(shard.rank + 1) * n;
        Ok(if shard.dim == 0 { Part::Rows(r) } else { Part::Cols(r) })
    }
}

/// One part of a stacked weight: `(name, expected whole HF shape, the part read)`.
pub type StackPart<'a> = (&'a str, &'a [usize], Part);

/// A scaled projection's scales (f32), their stored shape, and its zero points.
type ScalesOf = (Vec<f32>, Vec<usize>, Option<Vec<f32>>);

/// A tensor (or a shard of it) as stored.
#[derive(Debug)]
pub struct StoredTensor<'a> {
    /// The HF name.
    pub name: String,
    /// Row-major HF shape (`[out, in]` for a projection), of the shard when sharded.
    pub shape: Vec<usize>,
    pub format: StoredFormat,
    pub bytes: Cow<'a, [u8]>,
    /// For Q/K projections stored in llama.cpp's RoPE row order: the head count the rows were
    /// permuted with (of this shard). `None`: rows are in HF order.
    pub permuted_heads: Option<usize>,
    /// The mapped file `bytes` borrows from, when it does: a quantized matrix then keeps
    /// borrowing it instead of copying its blocks.
    pub owner: Option<Arc<dyn SharedBytes>>,
}

impl StoredTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// `(rows, cols)` of the tensor seen as a matrix (a vector is one row).
    pub fn matrix(&self) -> Result<(usize, usize), WeightsError> {
        match self.shape.as_slice() {
            [n] => Ok((1, *n)),
            [r, c] => Ok((*r, *c)),
            s => Err(WeightsError::Layout {
                tensor: self.name.clone(),
                reason: format!("shape {s:?} is not 1-D or 2-D"),
            }),
        }
    }

    /// The values as f32 in HF order (dequantized, Q/K rows un-permuted).
    pub fn to_f32(&self) -> Result<Vec<f32>, WeightsError> {
        let mut data = vec![0f32; self.numel()];
        match self.format {
            StoredFormat::Ggml(ty) => dequantize_into(ty, &self.bytes, &mut data)
                .map_err(|e| WeightsError::Layout { tensor: self.name.clone(), reason: e.to_string() })?,
            StoredFormat::Fp8E4M3 => {
                if self.bytes.len() != data.len() {
                    let reason = format!("{} bytes for {} f8_e4m3 values", self.bytes.len(), data.len());
                    return Err(WeightsError::Layout { tensor: self.name.clone(), reason });
                }
                data.iter_mut().zip(self.bytes.iter()).for_each(|(d, &b)| *d = super::scaled::e4m3_to_f32(b));
            }
        }
        if let Some(heads) = self.permuted_heads {
            let (rows, cols) = self.matrix()?;
            data = unpermute_qk_rows(&data, rows, cols, heads).map_err(|err| WeightsError::Permute {
                source_name: String::new(),
                tensor: self.name.clone(),
                err,
            })?;
        }
        Ok(data)
    }

    /// The tensor as quantized blocks in HF row order (Q/K rows moved whole), when it is a 2-D
    /// tensor of a format kiln multiplies without dequantizing; `None` otherwise.
    pub fn quant_matrix(&self) -> Result<Option<QuantMatrix>, WeightsError> {
        let StoredFormat::Ggml(ty) = self.format else { return Ok(None) };
        let Some(format) = ty.quant_format() else { return Ok(None) };
        let [rows, cols] = self.shape[..] else { return Ok(None) };
        let layout = |reason: String| WeightsError::Layout { tensor: self.name.clone(), reason };
        if let (None, Cow::Borrowed(b), Some(owner)) = (self.permuted_heads, &self.bytes, &self.owner) {
            // Where the blocks lie in the owner's bytes (`b` is a sub-slice of them).
            let start = (b.as_ptr() as usize).wrapping_sub(owner.shared_bytes().as_ptr() as usize);
            return QuantMatrix::shared(format, rows, cols, owner.clone(), start, b.len())
                .map(Some)
                .map_err(|e| layout(e.to_string()));
        }
        let bytes = match self.permuted_heads {
            None => self.bytes.to_vec(),
            Some(heads) => unpermute_qk_rows(&self.bytes, rows, format.row_bytes(cols), heads)
                .map_err(|err| WeightsError::Permute { source_name: String::new(), tensor: self.name.clone(), err })?,
        };
        QuantMatrix::new(format, rows, cols, bytes).map(Some).map_err(|e| layout(e.to_string()))
    }

    /// The bytes of this tensor in storage dtype `dtype`: borrowed as stored when it already is
    /// that dtype in HF order, converted (through f32, one tensor at a time) otherwise.
    pub fn bytes_as(&self, dtype: DType) -> Result<Cow<'_, [u8]>, WeightsError> {
        if self.permuted_heads.is_none() && self.format.dense_dtype() == Some(dtype) {
            return Ok(Cow::Borrowed(&self.bytes));
        }
        let data = self.to_f32()?;
        Ok(Cow::Owned(match dtype {
            DType::F32 => bytemuck::cast_slice(&data).to_vec(),
            DType::F16 => data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
            DType::BF16 => data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
            d => {
                return Err(WeightsError::Layout {
                    tensor: self.name.clone(),
                    reason: format!("weights are stored as f32, f16 or bf16 on a device, not {d}"),
                })
            }
        }))
    }
}

/// How an architecture's llama.cpp tensor names map to its HF names.
#[derive(Clone, Copy, Debug)]
pub struct GgufNaming {
    /// `(llama.cpp stem, HF stem)` of the per-block tensors, in groups an architecture
    /// composes (Llama's projections, its norms, q/k norms, a router, ...):
    /// `blk.N.{gguf}.weight|bias` is `{layers}.N.{hf}.weight|bias`.
    pub blocks: &'static [&'static [(&'static str, &'static str)]],
    /// The HF blocks' prefix (`model.layers`; Falcon: `transformer.h`).
    pub layers: &'static str,
    /// `(llama.cpp stem, HF stem)` of the tensors outside the blocks (embedding, final norm,
    /// head), `.weight|bias` alike.
    pub globals: &'static [(&'static str, &'static str)],
    /// Mixture-of-experts projections llama.cpp stores stacked (`blk.N.ffn_gate_exps.weight`,
    /// `[experts, rows, cols]`): `(llama.cpp stem, HF stem with `{e}` for the expert)`; each
    /// expert becomes its own tensor, `{layers}.N.{hf stem}.weight`, borrowing its slice.
    pub experts: &'static [(&'static str, &'static str)],
    /// For architectures whose converter permutes Q/K rows for llama.cpp's RoPE (Llama):
    /// `(query heads, key/value heads)`. `None` (Qwen2, ...): rows are stored in HF order.
    pub permuted_qk: Option<(usize, usize)>,
}

/// llama.cpp's names of the embedding, final norm and head, and Llama's HF names for them.
pub const LLAMA_GLOBALS: [(&str, &str); 3] =
    [("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")];

impl GgufNaming {
    /// Blocks named `blocks` under `model.layers`, Llama's globals, Q/K rows in HF order.
    pub const fn hf_order(blocks: &'static [&'static [(&'static str, &'static str)]]) -> GgufNaming {
        GgufNaming { blocks, layers: "model.layers", globals: &LLAMA_GLOBALS, experts: &[], permuted_qk: None }
    }

    /// The HF name of a llama.cpp tensor name (`blk.3.attn_q.weight` ->
    /// `model.layers.3.self_attn.q_proj.weight`), or `None` without a mapping.
    pub fn hf_name(&self, name: &str) -> Option<String> {
        if let Some((stem, kind)) = name.rsplit_once('.') {
            if let Some((_, hf)) = self.globals.iter().find(|(g, _)| *g == stem) {
                return Some(format!("{hf}.{kind}"));
            }
        }
        let rest = name.strip_prefix("blk.")?;
        let (layer, rest) = rest.split_once('.')?;
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (stem, kind) = rest.rsplit_once('.')?;
        if kind != "weight" && kind != "bias" {
            return None;
        }
        let (_, hf) = self.blocks.iter().flat_map(|g| g.iter()).find(|(g, _)| *g == stem)?;
        Some(format!("{}.{layer}.{hf}.{kind}", self.layers))
    }

    /// For a stacked-experts tensor of `n` experts: the HF name of each expert's slice.
    pub fn expert_names(&self, name: &str, n: usize) -> Option<Vec<String>> {
        let rest = name.strip_prefix("blk.")?;
        let (layer, rest) = rest.split_once('.')?;
        let stem = rest.strip_suffix(".weight")?;
        let (_, hf) = self.experts.iter().find(|(g, _)| *g == stem)?;
        Some((0..n).map(|e| format!("{}.{layer}.{}.weight", self.layers, hf.replace("{e}", &e.to_string()))).collect())
    }

    /// The head count a llama.cpp tensor's rows were permuted with, if they were.
    pub fn permuted_heads(&self, name: &str) -> Option<usize> {
        let (q, kv) = self.permuted_qk?;
        let rest = name.strip_prefix("blk.")?;
        match rest.split('.').nth(1)? {
            "attn_q" if rest.ends_with(".weight") => Some(q),
            "attn_k" if rest.ends_with(".weight") => Some(kv),
            _ => None,
        }
    }
}

enum Backing {
    Safetensors(Vec<Mmap>),
    Gguf(Arc<GgufFile>),
}

struct Entry {
    /// Index of the mapped file (safetensors shards; 0 for GGUF).
    file: usize,
    /// The byte range within that file's mapping (safetensors; unused for GGUF, which reads by name).
    range: std::ops::Range<usize>,
    gguf_name: Option<String>,
    shape: Vec<usize>,
    format: StoredFormat,
    permuted_heads: Option<usize>,
    /// `(e, n)`: expert `e`'s slice of a GGUF tensor stacking `n` experts (their bytes are
    /// back to back: blocks run along the innermost dimension).
    expert: Option<(usize, usize)>,
    /// A projection stored packed (AWQ / GPTQ `qweight`, `qzeros`, `scales`): this entry is its
    /// `.weight`, dequantized when read (see [`super::packed`]).
    packed: Option<PackedConfig>,
    /// A projection stored as 8-bit values beside scales (FP8, INT8): read as its values
    /// times its scales (see [`super::scaled`]).
    scaled: Option<ScaledConfig>,
}

/// A checkpoint's tensors, memory-mapped; see the module header.
pub struct WeightSource {
    source_name: String,
    backing: Backing,
    entries: BTreeMap<String, Entry>,
    used: Mutex<BTreeSet<String>>,
    keep_quantized: bool,
    /// The tensor-parallel rank that reads this source: the model built from it loads only that
    /// rank's parts and joins the rank's group (see `decoder::tp`).
    tp: Option<Arc<dyn Communicator>>,
}

impl std::fmt::Debug for WeightSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightSource").field("source", &self.source_name).field("tensors", &self.entries.len()).finish()
    }
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl WeightSource {
    /// The HF checkpoint in `dir`: `model.safetensors`, or the shards its index lists.
    pub fn open_safetensors_dir(dir: &Path) -> Result<WeightSource, WeightsError> {
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let bad = |path: &Path, reason: String| WeightsError::Safetensors { path: path.to_path_buf(), reason };
        let files: Vec<PathBuf> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|err| WeightsError::Io { path: index_path.clone(), err })?;
            let index: Index =
                serde_json::from_str(&text).map_err(|e| bad(&index_path, format!("invalid index: {e}")))?;
            let shards: BTreeSet<&String> = index.weight_map.values().collect();
            for shard in &shards {
                if shard.is_empty() || shard.contains(['/', '\\']) || *shard == ".." || *shard == "." {
                    return Err(bad(&index_path, format!("shard name '{shard}' is not a plain file name")));
                }
            }
            let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            let src = Self::open_safetensors_files(dir, &files)?;
            for (tensor, shard) in &index.weight_map {
                let stored_in = src.entries.get(tensor).map(|e| &files[e.file]);
                if stored_in != Some(&dir.join(shard)) {
                    return Err(bad(
                        &index_path,
                        format!("tensor '{tensor}' is listed in shard '{shard}' but not stored there"),
                    ));
                }
            }
            return Ok(src);
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(bad(dir, format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory")));
        };
        Self::open_safetensors_files(dir, &files)
    }

    fn open_safetensors_files(dir: &Path, files: &[PathBuf]) -> Result<WeightSource, WeightsError> {
        let mut maps = Vec::with_capacity(files.len());
        let mut entries = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let io = |err| WeightsError::Io { path: path.clone(), err };
            let file = File::open(path).map_err(io)?;
            // Safety: read-only mapping; we assume the checkpoint is not modified while loading.
            let map = unsafe { Mmap::map(&file) }.map_err(io)?;
            let st = SafeTensors::deserialize(&map).map_err(|e| WeightsError::Safetensors {
                path: path.clone(),
                reason: format!("invalid safetensors file: {e}"),
            })?;
            for (name, view) in st.iter() {
                let format = match view.dtype() {
                    Dtype::F32 => StoredFormat::Ggml(GgmlType::F32),
                    Dtype::F16 => StoredFormat::Ggml(GgmlType::F16),
                    Dtype::BF16 => StoredFormat::Ggml(GgmlType::Bf16),
                    Dtype::F8_E4M3 => StoredFormat::Fp8E4M3,
                    // Packed INT4 words and group indices (AWQ / GPTQ, compressed-tensors),
                    // int8 weights and zero points, compressed-tensors' `weight_shape`.
                    Dtype::I32 => StoredFormat::Ggml(GgmlType::I32),
                    Dtype::I8 => StoredFormat::Ggml(GgmlType::I8),
                    Dtype::I64 => StoredFormat::Ggml(GgmlType::I64),
                    other => {
                        return Err(WeightsError::UnsupportedDtype {
                            path: path.clone(),
                            tensor: name.to_owned(),
                            dtype: other.to_string(),
                        })
                    }
                };
                let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                let entry = Entry {
                    file: i,
                    range: start..start + view.data().len(),
                    gguf_name: None,
                    shape: view.shape().to_vec(),
                    format,
                    permuted_heads: None,
                    expert: None,
                    packed: None,
                    scaled: None,
                };
                if entries.insert(name.to_owned(), entry).is_some() {
                    return Err(WeightsError::Duplicate {
                        source_name: dir.display().to_string(),
                        tensor: name.into(),
                    });
                }
            }
            drop(st);
            maps.push(map);
        }
        Ok(WeightSource {
            source_name: dir.display().to_string(),
            backing: Backing::Safetensors(maps),
            entries,
            used: Mutex::new(BTreeSet::new()),
            keep_quantized: false,
            tp: None,
        })
    }

    /// The tensors of a GGUF file under the HF names `naming` gives them; a tensor without a
    /// name is an error.
    pub fn open_gguf(file: impl Into<Arc<GgufFile>>, naming: &GgufNaming) -> Result<WeightSource, WeightsError> {
        let file = file.into();
        let source_name = file.path().display().to_string();
        let mut entries = BTreeMap::new();
        for info in file.tensors() {
            let shape = info.hf_shape();
            if let (Some(names), [n, rest @ ..]) =
                (naming.expert_names(&info.name, shape.first().copied().unwrap_or(0)), shape.as_slice())
            {
                for (e, hf) in names.into_iter().enumerate() {
                    let entry = Entry {
                        file: 0,
                        range: 0..0,
                        gguf_name: Some(info.name.clone()),
                        shape: rest.to_vec(),
                        format: StoredFormat::Ggml(info.ggml_type),
                        permuted_heads: None,
                        expert: Some((e, *n)),
                        packed: None,
                        scaled: None,
                    };
                    if entries.insert(hf.clone(), entry).is_some() {
                        return Err(WeightsError::Duplicate { source_name, tensor: hf });
                    }
                }
                continue;
            }
            let Some(hf) = naming.hf_name(&info.name) else {
                return Err(WeightsError::UnknownTensor { source_name, tensor: info.name.clone() });
            };
            let entry = Entry {
                file: 0,
                range: 0..0,
                gguf_name: Some(info.name.clone()),
                shape,
                format: StoredFormat::Ggml(info.ggml_type),
                permuted_heads: naming.permuted_heads(&info.name),
                expert: None,
                packed: None,
                scaled: None,
            };
            if entries.insert(hf.clone(), entry).is_some() {
                return Err(WeightsError::Duplicate { source_name, tensor: hf });
            }
        }
        Ok(WeightSource {
            source_name,
            backing: Backing::Gguf(file),
            entries,
            used: Mutex::new(BTreeSet::new()),
            keep_quantized: false,
            tp: None,
        })
    }

    /// Keep GGML-block projection weights quantized on the CPU ([`WeightSource::weight`]);
    /// off when a source is opened (the loader sets it from its `WeightMode`).
    pub fn set_keep_quantized(&mut self, keep: bool) {
        self.keep_quantized = keep;
    }

    /// Offer `X.weight` for every packed projection of the source (`X.qweight` of AWQ / GPTQ,
    /// `X.weight_packed` of compressed-tensors, as `cfg` says), dequantized when read; its parts
    /// are consumed with it.
    pub fn set_packed(&mut self, cfg: PackedConfig) -> Result<(), WeightsError> {
        let names = cfg.kind.names();
        let suffix = format!(".{}", names.words);
        let bases: Vec<String> =
            self.entries.keys().filter_map(|n| n.strip_suffix(&suffix)).map(String::from).collect();
        for base in bases {
            let layout = |reason: String| WeightsError::Layout { tensor: format!("{base}{suffix}"), reason };
            self.entry(&format!("{base}.{}", names.scales))?;
            if cfg.kind.has_zeros() {
                self.entry(&format!("{base}.{}", names.zeros))?;
            }
            let q = self.entry(&format!("{base}{suffix}"))?;
            let [r, c] = q.shape[..] else { return Err(layout(format!("shape {:?} is not 2-D", q.shape))) };
            let shape = super::packed::unpacked_shape(cfg.kind, [r, c]).to_vec();
            // compressed-tensors records the unpacked shape: the inputs must be whole words.
            let shape_name = format!("{base}.weight_shape");
            if self.contains(&shape_name) {
                let stored = self.read_part(&shape_name, None, &Part::Whole)?;
                let dims: Vec<usize> = match stored.format {
                    StoredFormat::Ggml(GgmlType::I64) => stored
                        .bytes
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
                        .collect(),
                    StoredFormat::Ggml(GgmlType::I32) => stored
                        .bytes
                        .chunks_exact(4)
                        .map(|b| i32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as usize)
                        .collect(),
                    f => return Err(layout(format!("weight_shape is {f}, expected integers"))),
                };
                if dims != shape {
                    return Err(layout(format!(
                        "weight_shape {dims:?}: kiln reads {shape:?} (inputs in whole words of 8)"
                    )));
                }
            }
            let entry = Entry {
                file: 0,
                range: 0..0,
                gguf_name: None,
                shape,
                format: StoredFormat::Ggml(GgmlType::F32),
                permuted_heads: None,
                expert: None,
                packed: Some(cfg),
                scaled: None,
            };
            let name = format!("{base}.weight");
            if self.entries.insert(name.clone(), entry).is_some() {
                return Err(WeightsError::Duplicate { source_name: self.source_name.clone(), tensor: name });
            }
        }
        Ok(())
    }

    /// Read every `X.weight` stored as 8-bit values beside an `X.{scale}` (FP8 / INT8, as
    /// `cfg` says) as those values times their scales; the scale, zero point and activation
    /// scale tensors are consumed with it.
    pub fn set_scaled(&mut self, cfg: ScaledConfig) -> Result<(), WeightsError> {
        let suffix = format!(".{}", cfg.scale_name);
        let bases: Vec<String> =
            self.entries.keys().filter_map(|n| n.strip_suffix(&suffix)).map(String::from).collect();
        for base in bases {
            let name = format!("{base}.weight");
            let e = self
                .entries
                .get_mut(&name)
                .ok_or_else(|| WeightsError::Missing { source_name: self.source_name.clone(), tensor: name.clone() })?;
            let want = match cfg.elem {
                ScaledElem::Fp8E4M3 => StoredFormat::Fp8E4M3,
                ScaledElem::Int8 => StoredFormat::Ggml(GgmlType::I8),
            };
            if e.format != want || e.shape.len() != 2 {
                let reason =
                    format!("is {} of shape {:?}, expected a 2-D {want} weight beside its scales", e.format, e.shape);
                return Err(WeightsError::Layout { tensor: name, reason });
            }
            e.scaled = Some(cfg);
        }
        Ok(())
    }

    /// The scales of the scaled projection `name` as f32, their shape, and its zero points
    /// (when `cfg` has them); the scale, zero point and activation scale tensors are consumed.
    fn scales_of(&self, name: &str, cfg: &ScaledConfig) -> Result<ScalesOf, WeightsError> {
        let base = name.strip_suffix(".weight").unwrap_or(name);
        let whole = |n: String| self.read_part(&n, None, &Part::Whole);
        let scale = whole(format!("{base}.{}", cfg.scale_name))?;
        // int8 zero points (the stored type), or floats.
        let zero = match cfg.zero_point {
            false => None,
            true => Some(match whole(format!("{base}.weight_zero_point"))? {
                z if z.format == StoredFormat::Ggml(GgmlType::I8) => super::scaled::values(ScaledElem::Int8, &z.bytes),
                z => z.to_f32()?,
            }),
        };
        let input_scale = format!("{base}.input_scale");
        if self.contains(&input_scale) {
            self.mark_used(&input_scale); // activations run unquantized (see `super::scaled`)
        }
        Ok((scale.to_f32()?, scale.shape, zero))
    }

    /// The scaled projection `name` (its stored 8-bit tensor `stored`) as f32 values.
    fn unscale(
        &self,
        name: &str,
        cfg: &ScaledConfig,
        stored: StoredTensor<'_>,
    ) -> Result<StoredTensor<'static>, WeightsError> {
        let layout = |reason: String| WeightsError::Layout { tensor: name.to_owned(), reason };
        let [out, inp] = stored.shape[..] else { return Err(layout(format!("shape {:?} is not 2-D", stored.shape))) };
        let q = super::scaled::values(cfg.elem, &stored.bytes);
        let (scale, scale_shape, zero) = self.scales_of(name, cfg)?;
        let w =
            super::scaled::dequantize(cfg, &q, [out, inp], &scale, &scale_shape, zero.as_deref()).map_err(layout)?;
        Ok(StoredTensor {
            name: name.to_owned(),
            shape: vec![out, inp],
            format: StoredFormat::Ggml(GgmlType::F32),
            bytes: Cow::Owned(bytemuck::cast_slice(&w).to_vec()),
            permuted_heads: None,
            owner: None,
        })
    }

    /// `part` of the scaled projection `name` kept in 8 bits, when it is one (symmetric: the
    /// GPU kernels take no zero points), the source keeps quantized weights, and the part does
    /// not split a block of scales; `None` otherwise (the caller reads it dense).
    fn w8(&self, name: &str, expected: &[usize], part: &Part) -> Result<Option<W8Matrix>, WeightsError> {
        let e = self.entry(name)?;
        let Some(cfg) = e.scaled.filter(|c| self.keep_quantized && !c.zero_point) else { return Ok(None) };
        self.check_shape(name, e, expected)?;
        let layout = |reason: String| WeightsError::Layout { tensor: name.to_owned(), reason };
        let [out, inp] = e.shape[..] else { return Err(layout(format!("shape {:?} is not 2-D", e.shape))) };
        let (scale, scale_shape, _) = self.scales_of(name, &cfg)?;
        let block = super::scaled::scale_block(cfg.layout, [out, inp], &scale_shape).map_err(layout)?;
        let bytes = self.stored(name, e)?.bytes.into_owned();
        let whole = W8Matrix::new((out, inp), cfg.elem.w8(), bytes, scale, block).map_err(|e| layout(e.to_string()))?;
        Ok(match part {
            Part::Whole => Some(whole),
            Part::Rows(r) => whole.row_part(r.clone()).ok(),
            Part::Cols(c) => whole.col_part(c.clone()).ok(),
        })
    }

    /// Scaled 8-bit parts (stacked along rows) as one weight, when `KILN_W8` asks for it
    /// (`w8_cuda::policy`, with why not by default) and every part is kept 8-bit: on a GPU in
    /// GPU memory for activations of `dtype` (when the parts fit the kernels), on the CPU as
    /// W8A8's twin (`w8a8`, when the parts take it: FP8, or INT8 per channel with per-token int8
    /// activations, as on the GPU). `None` otherwise: the caller reads the weight another way.
    fn w8_on(&self, parts: &[StackPart<'_>], dev: &Device, dtype: DType) -> Result<Option<Weight>, WeightsError> {
        let w8a8 = match w8_cuda::policy() {
            W8Policy::Dense => return Ok(None),
            W8Policy::Kernels => false,
            W8Policy::W8a8 => true,
        };
        if dev.is_cpu() && !w8a8 {
            return Ok(None);
        }
        let mut ws = Vec::with_capacity(parts.len());
        for (name, expected, part) in parts {
            match self.w8(name, expected, part)? {
                Some(w) => ws.push(w),
                None => return Ok(None),
            }
        }
        let layout = |reason: String| WeightsError::Layout { tensor: parts[0].0.to_owned(), reason };
        if dev.is_cpu() {
            let Some(act) = w8a8_act(&ws) else { return Ok(None) };
            let values: Vec<f32> = ws.iter().flat_map(W8Matrix::dequantize).collect();
            let rows = ws.iter().map(W8Matrix::rows).sum();
            let dense = Tensor::from_f32_as(dev, dtype, &values, rows, ws[0].cols())
                .map_err(|e| layout(format!("{}: {e}", self.source_name)))?;
            return Ok(Some(Weight::W8a8Cpu(dense, act)));
        }
        let on_gpu = W8Cuda::upload(dev, dtype, &ws, w8a8).map_err(|e| layout(format!("{}: {e}", self.source_name)))?;
        Ok(on_gpu.map(Weight::W8Cuda))
    }

    /// `f` of the parts of the packed projection `name` (`X.weight` of `X.qweight`, `X.qzeros`,
    /// `X.scales`, `X.g_idx`, or compressed-tensors' `X.weight_packed`, `X.weight_scale`,
    /// `X.weight_zero_point`, `X.weight_g_idx`, `X.weight_shape`), which are consumed.
    fn with_packed<R>(
        &self,
        name: &str,
        cfg: &PackedConfig,
        f: impl FnOnce(&super::packed::PackedParts<'_>) -> Result<R, String>,
    ) -> Result<R, WeightsError> {
        let base = name.strip_suffix(".weight").unwrap_or(name);
        let names = cfg.kind.names();
        let read = |part: &str| self.read_part(&format!("{base}.{part}"), None, &Part::Whole);
        let optional = |part: &str| -> Result<Option<StoredTensor<'_>>, WeightsError> {
            if self.contains(&format!("{base}.{part}")) {
                read(part).map(Some)
            } else {
                Ok(None)
            }
        };
        let qweight = read(names.words)?;
        let qzeros = if cfg.kind.has_zeros() { Some(read(names.zeros)?) } else { optional(names.zeros)? };
        let scales = read(names.scales)?;
        let g_idx = optional(names.g_idx)?;
        if self.contains(&format!("{base}.weight_shape")) {
            self.mark_used(&format!("{base}.weight_shape")); // checked by `set_packed`
        }
        let format_of = |t: &StoredTensor<'_>, want: &[GgmlType]| {
            if want.iter().any(|w| t.format == StoredFormat::Ggml(*w)) {
                return Ok(());
            }
            let want: Vec<&str> = want.iter().map(|w| w.name()).collect();
            let reason = format!("is {}, expected {}", t.format, want.join(" or "));
            Err(WeightsError::Layout { tensor: t.name.clone(), reason })
        };
        format_of(&qweight, &[GgmlType::I32])?;
        if let Some(z) = &qzeros {
            format_of(z, &[GgmlType::I32])?;
        }
        match cfg.kind {
            // AWQ and GPTQ store f16 scales; compressed-tensors the model's float dtype.
            PackedKind::Awq | PackedKind::Gptq { .. } => format_of(&scales, &[GgmlType::F16])?,
            PackedKind::Compressed { .. } => format_of(&scales, &[GgmlType::F16, GgmlType::Bf16, GgmlType::F32])?,
        }
        if let Some(g) = &g_idx {
            format_of(g, &[GgmlType::I32])?;
        }
        let [qw, sc] = [&qweight, &scales].map(|t| t.matrix().map(|(r, c)| [r, c]));
        let qz = qzeros.as_ref().map(|z| z.matrix().map(|(r, c)| (&z.bytes[..], [r, c]))).transpose()?;
        let parts = super::packed::PackedParts {
            qweight: (&qweight.bytes, qw?),
            qzeros: qz,
            scales: (scales.to_f32()?, sc?),
            g_idx: g_idx.as_ref().map(|g| &g.bytes[..]),
        };
        self.mark_used(name);
        f(&parts).map_err(|reason| WeightsError::Layout { tensor: format!("{base}.{}", names.words), reason })
    }

    /// The packed projection `name` as f32 values.
    fn unpack(&self, name: &str, cfg: &PackedConfig) -> Result<StoredTensor<'_>, WeightsError> {
        let (data, shape) = self.with_packed(name, cfg, |p| {
            Ok((super::packed::dequantize(cfg, p)?, super::packed::unpacked_shape(cfg.kind, p.qweight.1).to_vec()))
        })?;
        Ok(StoredTensor {
            name: name.to_owned(),
            shape,
            format: StoredFormat::Ggml(GgmlType::F32),
            bytes: Cow::Owned(bytemuck::cast_slice(&data).to_vec()),
            permuted_heads: None,
            owner: None,
        })
    }

    /// `part` of the packed projection `name` kept packed, when it is one and the source keeps
    /// quantized weights; `None` otherwise.
    fn int4(&self, name: &str, expected: &[usize], part: &Part) -> Result<Option<Int4Matrix>, WeightsError> {
        let e = self.entry(name)?;
        let Some(cfg) = e.packed.filter(|_| self.keep_quantized) else { return Ok(None) };
        self.check_shape(name, e, expected)?;
        let whole = self.with_packed(name, &cfg, |p| super::packed::to_int4(&cfg, p))?;
        let layout = |e: kiln_runtime::device::quant::int4::Int4Error| WeightsError::Layout {
            tensor: name.to_owned(),
            reason: e.to_string(),
        };
        Ok(Some(match part {
            Part::Whole => whole,
            Part::Rows(r) => whole.row_part(r.clone()).map_err(layout)?,
            Part::Cols(c) => whole.col_part(c.clone()).map_err(layout)?,
        }))
    }

    /// Packed 4-bit parts (stacked along rows) as a weight on `dev`: host-resident on the CPU;
    /// in GPU memory for activations of `dtype` on a GPU when the int4 kernels are enabled
    /// (the default; `KILN_INT4_GPU=dense` turns them off), or `None` when they are not or the
    /// groups do not fit them (the caller then uploads the weight dense).
    fn int4_on(
        &self,
        name: &str,
        parts: Vec<Int4Matrix>,
        dev: &Device,
        dtype: DType,
    ) -> Result<Option<Weight>, WeightsError> {
        if dev.is_cpu() {
            // Act-order groups sorted once here, after any tensor-parallel slicing of the inputs.
            return Ok(Some(Weight::Int4(parts.into_iter().map(Int4Matrix::sorted_by_group).collect())));
        }
        if !kiln_runtime::device::quant::int4_cuda::kernels_enabled() {
            return Ok(None);
        }
        let on_gpu = Int4Cuda::upload(dev, dtype, &parts).map_err(|e| WeightsError::Layout {
            tensor: name.to_owned(),
            reason: format!("{}: {e}", self.source_name),
        })?;
        Ok(on_gpu.map(Weight::Int4Cuda))
    }

    /// Build the model of this source as one rank of `comm`'s tensor-parallel group.
    pub fn set_tp(&mut self, comm: Option<Arc<dyn Communicator>>) {
        self.tp = comm;
    }

    /// The rank this source is read for, when tensor-parallel.
    pub fn tp(&self) -> Option<&Arc<dyn Communicator>> {
        self.tp.as_ref()
    }

    /// A projection's weight: its GGML blocks as they are when the source keeps quantized
    /// weights, `dev` is the CPU and the format has CPU kernels; 4-bit blocks in the int4
    /// kernels' form on a GPU; else dense `dtype` on `dev`.
    pub fn weight(
        &self,
        name: &str,
        expected: &[usize],
        part: &Part,
        dev: &Device,
        dtype: DType,
    ) -> Result<Weight, WeightsError> {
        if let Some(w) = self.int4(name, expected, part)? {
            if let Some(w) = self.int4_on(name, vec![w], dev, dtype)? {
                return Ok(w);
            }
        }
        if let Some(w) = self.w8_on(&[(name, expected, part.clone())], dev, dtype)? {
            return Ok(w);
        }
        if let Some(w) = self.blocks_on_gpu(&[(name, expected, part.clone())], dev, dtype)? {
            return Ok(w);
        }
        self.table(name, expected, part, dev, dtype)
    }

    /// A table read by row gathers (the token embedding), and what a projection falls back to:
    /// its GGML blocks as they are on the CPU when the source keeps quantized weights (a
    /// gathered row is dequantized as it is read), dense `dtype` otherwise — never a GPU
    /// product form, which a gather cannot read.
    pub fn table(
        &self,
        name: &str,
        expected: &[usize],
        part: &Part,
        dev: &Device,
        dtype: DType,
    ) -> Result<Weight, WeightsError> {
        if self.keep_quantized && dev.is_cpu() {
            let q = self.read_part(name, Some(expected), part)?.quant_matrix();
            if let Some(q) = q.map_err(|e| e.in_source(&self.source_name))? {
                return Ok(Weight::Quantized(q));
            }
        }
        Ok(Weight::Dense(self.upload(name, expected, part, dev, dtype)?))
    }

    /// Projections stacked along rows as one weight (fused q/k/v, gate/up): quantized when
    /// every part is of one kept format and width, dense otherwise.
    pub fn weight_stacked(&self, parts: &[StackPart<'_>], dev: &Device, dtype: DType) -> Result<Weight, WeightsError> {
        let packed = parts.iter().all(|(name, ..)| self.entries.get(*name).is_some_and(|e| e.packed.is_some()));
        if packed && self.keep_quantized {
            let mut ws = Vec::with_capacity(parts.len());
            for (name, expected, part) in parts {
                ws.extend(self.int4(name, expected, part)?);
            }
            // One matrix when the parts group their inputs alike; else each part on its own.
            let ws = match Int4Matrix::stack(&ws) {
                Ok(one) => vec![one],
                Err(_) => ws,
            };
            if let Some(w) = self.int4_on(parts[0].0, ws, dev, dtype)? {
                return Ok(w);
            }
        }
        if let Some(w) = self.w8_on(parts, dev, dtype)? {
            return Ok(w);
        }
        if let Some(w) = self.blocks_on_gpu(parts, dev, dtype)? {
            return Ok(w);
        }
        if self.keep_quantized && dev.is_cpu() {
            let mut qs = Vec::with_capacity(parts.len());
            for (name, expected, part) in parts {
                match self
                    .read_part(name, Some(expected), part)?
                    .quant_matrix()
                    .map_err(|e| e.in_source(&self.source_name))?
                {
                    Some(q) => qs.push(q),
                    None => break,
                }
            }
            if qs.len() == parts.len() {
                // One matrix when the parts share a format; else each part in its own.
                return Ok(match QuantMatrix::stack(&qs) {
                    Ok(q) => Weight::Quantized(q),
                    Err(_) => Weight::QuantizedRows(qs),
                });
            }
        }
        Ok(Weight::Dense(self.upload_stacked(parts, dev, dtype)?))
    }

    /// HF names of every tensor, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// An error unless `name` (entry `e`) has the HF shape `expected`.
    fn check_shape(&self, name: &str, e: &Entry, expected: &[usize]) -> Result<(), WeightsError> {
        if e.shape == expected {
            return Ok(());
        }
        Err(WeightsError::Shape {
            source_name: self.source_name.clone(),
            tensor: name.to_owned(),
            expected: expected.to_vec(),
            found: e.shape.clone(),
        })
    }

    fn entry(&self, name: &str) -> Result<&Entry, WeightsError> {
        self.entries
            .get(name)
            .ok_or_else(|| WeightsError::Missing { source_name: self.source_name.clone(), tensor: name.to_owned() })
    }

    /// Records that the model consumed `name` without reading it (e.g. a tied `lm_head`
    /// some checkpoints store as a copy of the embedding).
    pub fn mark_used(&self, name: &str) {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
    }

    /// The tensor `name` (or its `shard`) as stored, checked against `expected` (the whole
    /// tensor's HF shape) when given.
    pub fn read(
        &self,
        name: &str,
        expected: Option<&[usize]>,
        shard: Option<Shard>,
    ) -> Result<StoredTensor<'_>, WeightsError> {
        let part = match shard {
            None => Part::Whole,
            Some(s) => {
                let e = self.entry(name)?;
                let len = e.shape.get(s.dim).copied().unwrap_or(0);
                Part::of_shard(s, len).map_err(|reason| WeightsError::Layout { tensor: name.to_owned(), reason })?
            }
        };
        self.read_part(name, expected, &part)
    }

    /// `part` of the tensor `name` as stored, checked against `expected` (the whole tensor's HF
    /// shape) when given.
    pub fn read_part(
        &self,
        name: &str,
        expected: Option<&[usize]>,
        part: &Part,
    ) -> Result<StoredTensor<'_>, WeightsError> {
        let e = self.entry(name)?;
        if let Some(want) = expected {
            self.check_shape(name, e, want)?;
        }
        if let Some(cfg) = &e.packed {
            let t = self.unpack(name, cfg)?;
            self.mark_used(name);
            return part_of(t, part);
        }
        let whole = self.stored(name, e)?;
        if let Some(cfg) = &e.scaled {
            return part_of(self.unscale(name, cfg, whole)?, part);
        }
        part_of(whole, part)
    }

    /// The whole tensor `name` (entry `e`) as its bytes are stored (marked used).
    fn stored(&self, name: &str, e: &Entry) -> Result<StoredTensor<'_>, WeightsError> {
        let all: &[u8] = match &self.backing {
            Backing::Safetensors(maps) => &maps[e.file][e.range.clone()],
            Backing::Gguf(f) => {
                let gguf_name = e.gguf_name.as_deref().unwrap_or(name);
                let all = f.tensor_bytes(f.tensor_info(gguf_name)?)?;
                match e.expert {
                    None => all,
                    Some((i, n)) => {
                        let len = all.len() / n;
                        &all[i * len..(i + 1) * len]
                    }
                }
            }
        };
        self.mark_used(name);
        Ok(StoredTensor {
            name: name.to_owned(),
            shape: e.shape.clone(),
            format: e.format,
            bytes: Cow::Borrowed(all),
            permuted_heads: e.permuted_heads,
            owner: match &self.backing {
                Backing::Gguf(f) => Some(f.clone() as Arc<dyn SharedBytes>),
                Backing::Safetensors(_) => None,
            },
        })
    }

    /// One tensor as f32 in HF order (the whole tensor).
    pub fn f32(&self, name: &str) -> Result<HostTensor, WeightsError> {
        let t = self.read(name, None, None)?;
        let data = t.to_f32().map_err(|e| e.in_source(&self.source_name))?;
        Ok(HostTensor { shape: t.shape, data })
    }

    /// Uploads `part` of `name` to `dev` as a `dtype` matrix (a vector is one row), checked
    /// against the HF shape `expected`.
    pub fn upload(
        &self,
        name: &str,
        expected: &[usize],
        part: &Part,
        dev: &Device,
        dtype: DType,
    ) -> Result<Tensor, WeightsError> {
        let t = self.read_part(name, Some(expected), part)?;
        let (rows, cols) = t.matrix()?;
        let bytes = t.bytes_as(dtype).map_err(|e| e.in_source(&self.source_name))?;
        Tensor::from_bytes(dev, dtype, &bytes, rows, cols).map_err(|e| self.device_error(name, e))
    }

    /// Uploads 2-D tensors stacked along rows into one `[Σ rows, cols]` matrix (a fused q/k/v
    /// or gate/up projection), each converted and copied in its turn (one part in host memory
    /// at a time).
    pub fn upload_stacked(&self, parts: &[StackPart<'_>], dev: &Device, dtype: DType) -> Result<Tensor, WeightsError> {
        let mut shapes = Vec::with_capacity(parts.len());
        for (name, expected, part) in parts {
            let t = self.read_part(name, Some(expected), part)?;
            shapes.push(t.matrix()?);
        }
        let cols = shapes.first().map_or(0, |s| s.1);
        if let Some(((name, _, _), _)) = parts.iter().zip(&shapes).find(|(_, s)| s.1 != cols) {
            return Err(WeightsError::Layout {
                tensor: (*name).to_owned(),
                reason: format!("cannot stack it with {}: different column counts", parts[0].0),
            });
        }
        let total: usize = shapes.iter().map(|s| s.0).sum();
        let out = Tensor::uninit(dev, dtype, total, cols).map_err(|e| self.device_error(parts[0].0, e))?;
        let mut at = 0;
        for ((name, expected, part), (rows, _)) in parts.iter().zip(&shapes) {
            let t = self.read_part(name, Some(expected), part)?;
            let bytes = t.bytes_as(dtype).map_err(|e| e.in_source(&self.source_name))?;
            let mut view = out.view_rows(at, *rows).map_err(|e| self.device_error(name, e))?;
            view.copy_from_host_bytes(&bytes).map_err(|e| self.device_error(name, e))?;
            at += rows;
        }
        Ok(out)
    }

    /// HF names of the tensors no one read or marked, in order.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        self.entries.keys().filter(|n| !used.contains(*n)).cloned().collect()
    }

    /// An error naming the first tensor the model did not consume, if any.
    pub fn check_all_used(&self) -> Result<(), WeightsError> {
        let unused = self.unused();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(WeightsError::Unused {
                source_name: self.source_name.clone(),
                tensor: first.clone(),
                more: unused.len() - 1,
            }),
        }
    }

    fn device_error(&self, name: &str, e: kiln_runtime::TensorError) -> WeightsError {
        WeightsError::Layout { tensor: name.to_owned(), reason: format!("{}: {e}", self.source_name) }
    }
}

/// `part` of `t`: whole rows, or whole blocks of every row.
fn part_of<'a>(t: StoredTensor<'a>, part: &Part) -> Result<StoredTensor<'a>, WeightsError> {
    if matches!(part, Part::Whole) {
        return Ok(t); // any shape, a scalar (`k_scale`) included
    }
    let bad = |reason: String| Err(WeightsError::Layout { tensor: t.name.clone(), reason });
    let (block_len, block_bytes) = t.format.block();
    // Seen as `[rows, cols]`; a vector's rows are its blocks.
    let (rows, cols) = match t.shape.as_slice() {
        [n] if n.is_multiple_of(block_len) => (*n / block_len, block_len),
        [n] => return bad(format!("{n} elements are not whole {block_len}-element blocks")),
        [r, c] => (*r, *c),
        shape => return bad(format!("cannot take a part of shape {shape:?}")),
    };
    let row_bytes = cols / block_len * block_bytes;
    match part {
        Part::Whole => Ok(t),
        Part::Rows(range) => {
            // A vector's range is of elements: whole blocks of them.
            let (range, vector) = match t.shape.len() {
                1 if range.start % block_len != 0 || range.end % block_len != 0 => {
                    return bad(format!("elements {range:?} cut a {block_len}-element block"))
                }
                1 => (range.start / block_len..range.end / block_len, true),
                _ => (range.clone(), false),
            };
            if range.start > range.end || range.end > rows {
                return bad(format!("rows {range:?} of {rows}"));
            }
            let permuted_heads = match t.permuted_heads {
                None => None,
                Some(h) => {
                    let head_rows = rows / h.max(1);
                    if range.start % head_rows != 0 || range.len() % head_rows != 0 {
                        return bad(format!("rows {range:?} do not keep whole heads of the {h} permuted heads"));
                    }
                    Some(range.len() / head_rows)
                }
            };
            let bytes = slice_cow(t.bytes, range.start * row_bytes..range.end * row_bytes);
            let shape = if vector { vec![range.len() * block_len] } else { vec![range.len(), cols] };
            Ok(StoredTensor { name: t.name, shape, format: t.format, bytes, permuted_heads, owner: t.owner })
        }
        Part::Cols(range) => {
            if t.shape.len() != 2 {
                return bad(format!("cannot take columns of shape {:?}", t.shape));
            }
            if range.start > range.end || range.end > cols {
                return bad(format!("columns {range:?} of {cols}"));
            }
            if range.start % block_len != 0 || range.len() % block_len != 0 {
                return bad(format!(
                    "columns {range:?} of {cols} are not whole {block_len}-element blocks of {}",
                    t.format
                ));
            }
            let (at, part_bytes) = (range.start / block_len * block_bytes, range.len() / block_len * block_bytes);
            let mut bytes = Vec::with_capacity(rows * part_bytes);
            for r in 0..rows {
                let start = r * row_bytes + at;
                bytes.extend_from_slice(&t.bytes[start..start + part_bytes]);
            }
            Ok(StoredTensor {
                name: t.name,
                shape: vec![rows, range.len()],
                format: t.format,
                bytes: Cow::Owned(bytes),
                permuted_heads: t.permuted_heads,
                owner: None,
            })
        }
    }
}

fn slice_cow(b: Cow<'_, [u8]>, r: std::ops::Range<usize>) -> Cow<'_, [u8]> {
    match b {
        Cow::Borrowed(s) => Cow::Borrowed(&s[r]),
        Cow::Owned(v) => Cow::Owned(v[r].to_vec()),
    }
}
