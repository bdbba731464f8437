//! `kiln quantize IN_DIR OUT_DIR --method fp8-dynamic|fp8|w4a16|int8|int8-sq`: a Hugging Face
//! safetensors checkpoint to a compressed-tensors directory (the format LLM Compressor writes
//! and vLLM, SGLang and kiln read), by round-to-nearest:
//!
//! | method | weights | activations (as declared for engines that quantize them) | format |
//! |---|---|---|---|
//! | `fp8-dynamic` | e4m3, one scale per output channel | e4m3 per token, dynamic | `float-quantized` |
//! | `fp8` | e4m3, one scale per tensor | e4m3 per tensor, static (`input_scale` = the largest \|x\| over the calibration text / 448) | `float-quantized` |
//! | `w4a16` | int4 symmetric, one scale per `group` inputs (128) | unquantized | `pack-quantized` |
//! | `int8` | int8 symmetric per output channel | int8 per token, dynamic | `int-quantized` |
//! | `int8-sq` | `int8` after SmoothQuant's smoothing ([`crate::smoothquant`]) | as `int8` | `int-quantized` |
//!
//! The arithmetic is compressed-tensors 0.20's own (`calculate_qparams`, `_quantize`), so its
//! files and kiln's agree byte for byte (`bench/quant/check_kiln_ct.py` checks that with the
//! library): for a unit sharing a scale, `max_abs = max(|min(w, 0)|, max(w, 0))`, the scale is
//! `max_abs / 448` (fp8) or `max_abs / ((2^bits − 1) / 2)` (int), computed in f32 and rounded
//! to the weight's dtype (a zero scale becomes that dtype's epsilon); each value is
//! `w / scale` rounded to the weight's dtype, clamped to the type's range and rounded to it
//! (nearest, ties to even).
//!
//! Which tensors: every 2-D `*.weight` inside the decoder blocks (`.layers.N.` / `.h.N.`) that
//! is not a norm or an MoE router; a projection whose inputs do not split into whole groups
//! stays as it is and is listed in `ignore`, with `lm_head`. Everything else is copied
//! unchanged, with the tokenizer and generation files — except, for `int8-sq`, the norms before
//! smoothed projections, divided by the factors their projections' columns were multiplied by
//! (a calibration pass on the CPU decides them, [`crate::calibration`]; it also gives `fp8`'s
//! activation scales: the largest |x| each projection saw, not LLM Compressor's moving average,
//! so a scale is never below a value of the calibration text).
//!
//! Invariants: the input is never written; the output appears whole or not at all (written to
//! a temporary directory beside it, then renamed); an existing output is replaced only when
//! asked.

use crate::gguf::GgmlType;
use crate::weights::{Part, StoredFormat, WeightSource, WeightsError};
use kiln_runtime::device::element::{E4m3, Element};
use safetensors::tensor::{Dtype, View};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// What `kiln quantize --method` writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CtMethod {
    Fp8Dynamic,
    /// e4m3 weights with one scale per tensor and a static activation scale per projection
    /// (`input_scale`, from a calibration pass on the CPU): LLM Compressor's `FP8` scheme.
    Fp8Static,
    /// Int4 weights in groups of this many inputs.
    W4A16 {
        group: usize,
    },
    Int8,
    /// INT8 as [`CtMethod::Int8`] after SmoothQuant's smoothing with this alpha
    /// ([`crate::smoothquant`]: a calibration pass on the CPU first).
    Int8Sq {
        alpha: f32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeCtError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {err}", .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: {why}", .path.display())]
    Refused { why: String, path: PathBuf },
}

/// What was written.
#[derive(Debug, Default)]
pub struct CtSummary {
    pub quantized: usize,
    /// Projections left as they are (listed in `ignore`).
    pub kept: Vec<String>,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// An owned or borrowed tensor to write.
struct Out<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Cow<'a, [u8]>,
}

impl View for &Out<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The float dtype a tensor is stored in, for scales and intermediate rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDtype {
    F32,
    F16,
    Bf16,
}

impl FloatDtype {
    fn round(self, x: f32) -> f32 {
        match self {
            FloatDtype::F32 => x,
            FloatDtype::F16 => half::f16::from_f32(x).to_f32(),
            FloatDtype::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }
    /// torch.finfo(dtype).eps: what a zero scale becomes.
    fn eps(self) -> f32 {
        match self {
            FloatDtype::F32 => f32::EPSILON,
            FloatDtype::F16 => 2f32.powi(-10),
            FloatDtype::Bf16 => 2f32.powi(-7),
        }
    }
    fn bytes(self, v: &[f32]) -> Vec<u8> {
        match self {
            FloatDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            FloatDtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            FloatDtype::Bf16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        }
    }
    fn safetensors(self) -> Dtype {
        match self {
            FloatDtype::F32 => Dtype::F32,
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::Bf16 => Dtype::BF16,
        }
    }
}

/// The e4m3 byte nearest to `x` (ties to even), `x` first clamped to ±448 (as compressed-tensors
/// clamps before casting, so nothing becomes NaN); NaN stays NaN. The runtime's host encoder
/// (the code generator's arithmetic, NaN kept as the NaN byte).
pub fn f32_to_e4m3(x: f32) -> u8 {
    <E4m3 as Element>::from_f32(x).0
}

/// Scales (rounded to `dt`) of units of `group` consecutive inputs (`group` divides a row) for
/// a symmetric range of `half_range`: `max(|min(w, 0)|, max(w, 0)) / half_range`.
fn scales(w: &[f32], group: usize, half_range: f32, dt: FloatDtype) -> Vec<f32> {
    w.chunks(group)
        .map(|g| g.iter().fold(0f32, |m, &x| m.max(x.abs())))
        .map(|m| {
            let s = dt.round(m / half_range);
            if s == 0.0 {
                dt.eps()
            } else {
                s
            }
        })
        .collect()
}

/// `w / s` rounded as compressed-tensors rounds it (in the weight's dtype).
fn scaled(w: f32, s: f32, dt: FloatDtype) -> f32 {
    dt.round(w / s)
}

/// FP8 per output channel: e4m3 bytes and `[rows]` scales.
pub fn fp8_channel(w: &[f32], cols: usize, dt: FloatDtype) -> (Vec<u8>, Vec<f32>) {
    let s = scales(w, cols, 448.0, dt);
    let q = w.iter().enumerate().map(|(i, &x)| f32_to_e4m3(scaled(x, s[i / cols], dt).clamp(-448.0, 448.0))).collect();
    (q, s)
}

/// FP8 per tensor: e4m3 bytes and the one scale.
pub fn fp8_tensor(w: &[f32], dt: FloatDtype) -> (Vec<u8>, f32) {
    let s = scales(w, w.len().max(1), 448.0, dt)[0];
    (w.iter().map(|&x| f32_to_e4m3(scaled(x, s, dt).clamp(-448.0, 448.0))).collect(), s)
}

/// Symmetric integers of `bits` (int8: -128..=127, int4: -8..=7), one scale per `group` inputs.
pub fn int_groups(w: &[f32], cols: usize, group: usize, bits: u32, dt: FloatDtype) -> (Vec<i8>, Vec<f32>) {
    let (lo, hi) = (-(1i32 << (bits - 1)) as f32, ((1i32 << (bits - 1)) - 1) as f32);
    let s = scales(w, group, (hi - lo) / 2.0, dt);
    let per_row = cols / group;
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            scaled(x, s[(i / cols) * per_row + (i % cols) / group], dt).clamp(lo, hi).round_ties_even() as i8
        })
        .collect();
    (q, s)
}

/// Int4 values (-8..=7) packed as compressed-tensors packs them: plus 8, eight per i32 along
/// each row, value `k` of a word in bits `4k`.
pub fn pack_int4(q: &[i8]) -> Vec<u8> {
    q.chunks(8)
        .flat_map(|c| {
            c.iter().enumerate().fold(0u32, |w, (k, &v)| w | (((v as i32 + 8) as u32 & 0xF) << (4 * k))).to_le_bytes()
        })
        .collect()
}

/// Whether `name` (shape `shape`) is a projection `--method` quantizes.
fn is_projection(name: &str, shape: &[usize]) -> bool {
    let in_blocks = name.contains(".layers.") || name.contains(".h.");
    let router =
        name.ends_with(".mlp.gate.weight") || name.ends_with("block_sparse_moe.gate.weight") || name.contains("router");
    shape.len() == 2 && in_blocks && name.ends_with(".weight") && !name.contains("norm") && !router
}

/// The `quantization_config` of `method`, ignoring `ignore`.
fn config(method: CtMethod, ignore: &[String]) -> Value {
    let (weights, acts, format) = match method {
        CtMethod::Fp8Dynamic => (
            json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "channel", "dynamic": false, "group_size": null}),
            json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "token", "dynamic": true, "group_size": null}),
            "float-quantized",
        ),
        CtMethod::Fp8Static => (
            json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "tensor", "dynamic": false, "group_size": null}),
            json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "tensor", "dynamic": false, "group_size": null}),
            "float-quantized",
        ),
        CtMethod::W4A16 { group } => (
            json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "dynamic": false, "group_size": group}),
            Value::Null,
            "pack-quantized",
        ),
        CtMethod::Int8 | CtMethod::Int8Sq { .. } => (
            json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel", "dynamic": false, "group_size": null}),
            json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token", "dynamic": true, "group_size": null}),
            "int-quantized",
        ),
    };
    json!({
        "quant_method": "compressed-tensors",
        "format": format,
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts,
            "output_activations": null, "format": format}},
        "ignore": ignore,
        "kv_cache_scheme": null,
        "sparsity_config": {},
        "transform_config": {},
        "quantization_status": "compressed",
        "global_compression_ratio": null,
        "version": "0.20.0",
    })
}

/// Quantize the checkpoint in `input` into `output` (see the module header).
pub fn quantize_ct(input: &Path, output: &Path, method: CtMethod, force: bool) -> Result<CtSummary, QuantizeCtError> {
    let refuse = |why: &str, p: &Path| QuantizeCtError::Refused { why: why.to_owned(), path: p.to_path_buf() };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |err| QuantizeCtError::Io { path, err }
    };
    let cfg_path = input.join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?)
        .map_err(|e| refuse(&format!("invalid config.json: {e}"), input))?;
    if cfg.get("quantization_config").is_some() {
        return Err(refuse(
            "the checkpoint is already quantized (quantization_config); quantize a full-precision one",
            input,
        ));
    }
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(refuse("the output is the input", output));
        }
    }
    if output.exists() && !force {
        return Err(refuse("exists (pass --force to replace it)", output));
    }
    let src = WeightSource::open_safetensors_dir(input)?;
    let arch = cfg["architectures"].get(0).and_then(Value::as_str).unwrap_or("(none)").to_owned();
    let smoothing = match method {
        CtMethod::Int8Sq { alpha } => {
            let weights = |name: &str| {
                let t = src.read_part(name, None, &Part::Whole).map_err(|e| e.to_string())?;
                let cols = t.shape.get(1).copied().ok_or_else(|| format!("{name} is not a matrix"))?;
                Ok((t.to_f32().map_err(|e| e.to_string())?, cols))
            };
            crate::smoothquant::calibrate(input, &arch, alpha, weights).map_err(|why| refuse(&why, input))?
        }
        _ => Default::default(),
    };
    let ranges = match method {
        CtMethod::Fp8Static => {
            let layout = crate::calibration::norm_layout(&arch, "fp8").map_err(|why| refuse(&why, input))?;
            crate::calibration::input_ranges(input, layout).map_err(|why| refuse(&why, input))?
        }
        _ => Default::default(),
    };
    let mut tensors: Vec<(String, Out<'_>)> = vec![];
    let mut summary = CtSummary::default();
    for name in src.names().map(str::to_owned).collect::<Vec<_>>() {
        let t = src.read_part(&name, None, &Part::Whole)?;
        summary.input_bytes += t.bytes.len() as u64;
        let dt = match t.format {
            StoredFormat::Ggml(GgmlType::F32) => Some(FloatDtype::F32),
            StoredFormat::Ggml(GgmlType::F16) => Some(FloatDtype::F16),
            StoredFormat::Ggml(GgmlType::Bf16) => Some(FloatDtype::Bf16),
            _ => None,
        };
        let base = name.strip_suffix(".weight").unwrap_or(&name).to_owned();
        let groups_fit = match method {
            CtMethod::W4A16 { group } => t.shape.get(1).is_some_and(|c| c % group == 0 && group % 8 == 0),
            _ => true,
        };
        match dt.filter(|_| is_projection(&name, &t.shape)) {
            Some(dt) if groups_fit => {
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let mut w = t.to_f32()?;
                if let Some(s) = smoothing.weight(&name) {
                    w.chunks_mut(cols).for_each(|row| row.iter_mut().zip(s).for_each(|(v, s)| *v *= s));
                }
                if let Some(d) = smoothing.rows(&name) {
                    if d.len() * cols != w.len() {
                        let why = format!("'{name}' has {} rows where the smoothing has {}", w.len() / cols, d.len());
                        return Err(refuse(&why, input));
                    }
                    w.chunks_mut(cols).zip(d).for_each(|(row, d)| row.iter_mut().for_each(|v| *v /= d));
                }
                let scale_out = |s: Vec<f32>, shape: Vec<usize>| Out {
                    dtype: dt.safetensors(),
                    shape,
                    bytes: Cow::Owned(dt.bytes(&s)),
                };
                match method {
                    CtMethod::Fp8Dynamic => {
                        let (q, s) = fp8_channel(&w, cols, dt);
                        tensors.push((
                            name.clone(),
                            Out { dtype: Dtype::F8_E4M3, shape: vec![rows, cols], bytes: Cow::Owned(q) },
                        ));
                        tensors.push((format!("{base}.weight_scale"), scale_out(s, vec![rows, 1])));
                    }
                    CtMethod::Fp8Static => {
                        let Some(act) = ranges.get(&name) else {
                            return Err(refuse(&format!("the calibration pass did not reach {name}"), input));
                        };
                        let (q, s) = fp8_tensor(&w, dt);
                        let amax = act.iter().fold(0f32, |m, v| m.max(*v));
                        let input_scale = scales(&[amax], 1, 448.0, dt);
                        tensors.push((
                            name.clone(),
                            Out { dtype: Dtype::F8_E4M3, shape: vec![rows, cols], bytes: Cow::Owned(q) },
                        ));
                        tensors.push((format!("{base}.weight_scale"), scale_out(vec![s], vec![1])));
                        tensors.push((format!("{base}.input_scale"), scale_out(input_scale, vec![1])));
                    }
                    CtMethod::Int8 | CtMethod::Int8Sq { .. } => {
                        let (q, s) = int_groups(&w, cols, cols, 8, dt);
                        let bytes = q.iter().map(|&v| v as u8).collect();
                        tensors.push((
                            name.clone(),
                            Out { dtype: Dtype::I8, shape: vec![rows, cols], bytes: Cow::Owned(bytes) },
                        ));
                        tensors.push((format!("{base}.weight_scale"), scale_out(s, vec![rows, 1])));
                    }
                    CtMethod::W4A16 { group } => {
                        let (q, s) = int_groups(&w, cols, group, 4, dt);
                        let packed =
                            Out { dtype: Dtype::I32, shape: vec![rows, cols / 8], bytes: Cow::Owned(pack_int4(&q)) };
                        tensors.push((format!("{base}.weight_packed"), packed));
                        tensors.push((format!("{base}.weight_scale"), scale_out(s, vec![rows, cols / group])));
                        let shape: Vec<u8> = [rows as i64, cols as i64].iter().flat_map(|v| v.to_le_bytes()).collect();
                        tensors.push((
                            format!("{base}.weight_shape"),
                            Out { dtype: Dtype::I64, shape: vec![2], bytes: Cow::Owned(shape) },
                        ));
                    }
                }
                summary.quantized += 1;
            }
            _ => {
                if dt.is_some() && is_projection(&name, &t.shape) {
                    summary.kept.push(base.clone());
                }
                let dtype = match t.format {
                    StoredFormat::Ggml(GgmlType::F32) => Dtype::F32,
                    StoredFormat::Ggml(GgmlType::F16) => Dtype::F16,
                    StoredFormat::Ggml(GgmlType::Bf16) => Dtype::BF16,
                    StoredFormat::Ggml(GgmlType::I32) => Dtype::I32,
                    StoredFormat::Ggml(GgmlType::I64) => Dtype::I64,
                    StoredFormat::Ggml(GgmlType::I8) => Dtype::I8,
                    StoredFormat::Fp8E4M3 => Dtype::F8_E4M3,
                    f => return Err(refuse(&format!("tensor '{name}' is {f}"), input)),
                };
                // A tensor the smoothing changes must be written changed (else the function moves).
                let smoothed = smoothing.weight(&name).is_some() || smoothing.rows(&name).is_some();
                let bytes = match (smoothing.norm(&name), dt) {
                    // A smoothed norm: divided by the factors its projections' columns took.
                    (Some(s), Some(dt)) => Cow::Owned(dt.bytes(&smoothing.divide_norm(&t.to_f32()?, s))),
                    (Some(_), None) => {
                        return Err(refuse(&format!("the smoothed norm '{name}' is {}", t.format), input))
                    }
                    _ if smoothed => {
                        return Err(refuse(&format!("the smoothed projection '{name}' is {}", t.format), input))
                    }
                    _ => t.bytes,
                };
                tensors.push((name.clone(), Out { dtype, shape: t.shape.clone(), bytes }));
            }
        }
    }
    let mut ignore = vec!["lm_head".to_owned()];
    ignore.extend(summary.kept.iter().cloned());
    cfg["quantization_config"] = config(method, &ignore);

    // Everything into a temporary directory beside the output, then renamed into place.
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = output.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = (|| -> Result<(), QuantizeCtError> {
        let file = tmp.join("model.safetensors");
        let meta = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), &file)
            .map_err(|e| refuse(&format!("cannot write: {e}"), &file))?;
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| refuse(&e.to_string(), &cfg_path))?;
        std::fs::write(tmp.join("config.json"), text).map_err(io(&tmp))?;
        for entry in std::fs::read_dir(input).map_err(io(input))? {
            let p = entry.map_err(io(input))?.path();
            let f = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // Tokenizer, chat template and generation files; not weights (nor a GGUF beside them).
            let aux = [".json", ".txt", ".model", ".jinja", ".tiktoken"].iter().any(|x| f.ends_with(x));
            let weights = f == "model.safetensors.index.json" || f == "config.json";
            if p.is_file() && aux && !weights {
                std::fs::copy(&p, tmp.join(&f)).map_err(io(&p))?;
            }
        }
        if output.exists() {
            std::fs::remove_dir_all(output).map_err(io(output))?;
        }
        std::fs::rename(&tmp, output).map_err(io(output))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp); // best effort: the error is what matters
    }
    written?;
    summary.output_bytes = std::fs::metadata(output.join("model.safetensors")).map(|m| m.len()).unwrap_or(0);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::scaled::e4m3_to_f32;

    #[test]
    fn e4m3_encoding_rounds_to_nearest_even_and_saturates() {
        // Every finite code round-trips.
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if v.is_nan() {
                continue;
            }
            let back = f32_to_e4m3(v);
            assert!(back == b || (v == 0.0 && back & 0x7F == 0), "{b:#04x} -> {v} -> {back:#04x}");
        }
        // Midpoints go to the even code; beyond 448 saturates.
        assert_eq!(f32_to_e4m3(1.0625), 0x38, "1 + 1/16 is between 1 and 1.125: to even (1)");
        assert_eq!(f32_to_e4m3(1.1875), 0x3A, "between 1.125 and 1.25: to even (1.25)");
        assert_eq!(f32_to_e4m3(1000.0), 0x7E);
        assert_eq!(f32_to_e4m3(-1000.0), 0xFE);
        assert_eq!(f32_to_e4m3(2f32.powi(-10)), 0x00, "half the smallest subnormal: to even (0)");
        assert_eq!(f32_to_e4m3(3.0 * 2f32.powi(-10)), 0x02);
        assert_eq!(f32_to_e4m3(0.015625 * 0.99), 0x08, "just below 2^-6 rounds up to the smallest normal");
        // Nearest: every value between codes goes to one of its two neighbours, the nearer one.
        for b in 0u8..0x7E {
            let (lo, hi) = (e4m3_to_f32(b), e4m3_to_f32(b + 1));
            let x = lo + (hi - lo) * 0.3;
            assert_eq!(f32_to_e4m3(x), b, "{x}");
        }
    }

    #[test]
    fn integer_groups_use_the_symmetric_range_and_round_half_even() {
        // One row, two groups of 4: max 7.5 → scale 1; max 15 → scale 2.
        let w = [7.5, -7.5, 2.5, 0.5, 15.0, 3.0, -1.0, 0.0];
        let (q, s) = int_groups(&w, 8, 4, 4, FloatDtype::F32);
        assert_eq!(s, vec![1.0, 2.0]);
        assert_eq!(q, vec![7, -8, 2, 0, 7, 2, 0, 0], "7.5 clamps to 7, -7.5 rounds to -8, 2.5 and 0.5 to even");
        let (_, s) = int_groups(&[0.0; 8], 8, 4, 4, FloatDtype::Bf16);
        assert_eq!(s, vec![2f32.powi(-7); 2], "a zero scale becomes bf16's epsilon");
        let packed = pack_int4(&[7, -8, 2, 0, 7, 2, 0, 0]);
        assert_eq!(u32::from_le_bytes(packed[..4].try_into().unwrap()), 0x88AF_8A0F);
    }
}
