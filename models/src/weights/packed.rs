//! Pre-quantized INT4 checkpoints in Hugging Face form (AutoAWQ "GEMM", GPTQ and
//! compressed-tensors `pack-quantized`), read as the projections they stand for.
//!
//! `quantization_config` in `config.json` names the method ([`PackedConfig::from_hf`]; anything
//! kiln does not read is refused naming the field). For each `X.qweight` the source then offers
//! `X.weight` (`[out, in]`, f32), dequantized from `X.qweight`, `X.qzeros`, `X.scales` (and GPTQ's
//! `X.g_idx`) when it is read; those four are consumed with it.
//!
//! Layouts (AutoAWQ's `packing_utils`, AutoGPTQ's / vLLM's `gptq` loaders):
//! - AWQ: `qweight` i32 `[in, out/8]`, packed **along the output**: nibble `k` (bits `4k`) of
//!   column `c` holds output `8c + AWQ_ORDER[k]`, `AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`; `qzeros`
//!   i32 `[in/G, out/8]` packed the same way; `scales` f16 `[in/G, out]`; `w = (q - z) · s`.
//! - GPTQ: `qweight` i32 `[in/8, out]`, packed **along the input**: nibble `k` of row `r` holds
//!   input `8r + k`; `qzeros` i32 `[groups, out/8]`, nibble `k` of column `c` is output `8c + k`;
//!   `scales` f16 `[groups, out]`; `g_idx` i32 `[in]` the group of each input (act-order makes it
//!   non-monotonic; without it, `i / G`); `w = (q - z') · s[g_idx[i]]`, where `z' = z + 1` for
//!   the original ("v1") format, which stores zeros minus one, and `z' = z` for `gptq_v2`.
//! - compressed-tensors `pack-quantized` (4 bits): `weight_packed` i32 `[out, in/8]`, packed
//!   along the input, nibble `k` of word `j` holding input `8j + k` as the signed value plus 8;
//!   `weight_scale` (the model's float dtype) `[out, groups]`; asymmetric checkpoints add
//!   `weight_zero_point` i32 `[ceil(out/8), groups]` packed along the **output** (nibble `k` of
//!   row `r` is output `8r + k`, plus 8); older ones may carry `weight_g_idx` i32 `[in]`;
//!   `weight_shape` `[out, in]`. `w = (q − 8 − zp) · s`, i.e. zero = the stored zero nibble
//!   (8 when symmetric).
//!
//! Invariant: the values are exactly those formulas in f32 (the scale widened from f16, the
//! difference of small integers exact), so a dequantize-then-f32 reference is bit-identical;
//! the layouts are read in one place ([`to_int4`]), the dense form is that matrix's rows.
//! On the CPU the weight stays packed ([`to_int4`]: kiln's `Int4Matrix`, the same values, one
//! row of words per output); elsewhere, or with `--weights dense`, it is dequantized
//! ([`dequantize`]) into the compute dtype: GPU kernels for the packed form are still to come.

use kiln_runtime::device::quant::int4::{Grouping, Int4Matrix};
use serde_json::Value;

/// AutoAWQ's interleave: nibble `k` of a packed word holds column `AWQ_ORDER[k]` of its eight.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedKind {
    Awq,
    /// `zero_plus_one`: zeros are stored minus one (GPTQ "v1", the usual checkpoint).
    Gptq {
        zero_plus_one: bool,
    },
    /// compressed-tensors `pack-quantized`; `zero_point`: asymmetric (zero points stored).
    Compressed {
        zero_point: bool,
    },
}

/// The tensor suffixes of one packed projection `X` of a kind.
pub struct PackedNames {
    pub words: &'static str,
    pub zeros: &'static str,
    pub scales: &'static str,
    pub g_idx: &'static str,
}

impl PackedKind {
    pub fn names(self) -> PackedNames {
        match self {
            PackedKind::Awq | PackedKind::Gptq { .. } => {
                PackedNames { words: "qweight", zeros: "qzeros", scales: "scales", g_idx: "g_idx" }
            }
            PackedKind::Compressed { .. } => PackedNames {
                words: "weight_packed",
                zeros: "weight_zero_point",
                scales: "weight_scale",
                g_idx: "weight_g_idx",
            },
        }
    }

    /// Whether the zero points are a stored tensor.
    pub fn has_zeros(self) -> bool {
        !matches!(self, PackedKind::Compressed { zero_point: false })
    }
}

/// A checkpoint's `quantization_config`, as far as kiln reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedConfig {
    pub kind: PackedKind,
    /// Inputs per group; `None`: one group per output channel (`group_size: -1`).
    pub group: Option<usize>,
}

impl PackedConfig {
    /// The packed-INT4 method a `config.json` declares, `None` for an unquantized checkpoint;
    /// `Err(field, why)` for one kiln does not read.
    pub fn from_hf(config: &Value) -> Result<Option<PackedConfig>, (String, String)> {
        let Some(q) = config.get("quantization_config") else { return Ok(None) };
        let field = |k: &str| format!("quantization_config.{k}");
        let refuse = |k: &str, why: String| Err((field(k), why));
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
        let bits = q.get("bits").or_else(|| q.get("w_bit")).and_then(Value::as_i64);
        if bits != Some(4) {
            return refuse("bits", format!("{bits:?}: kiln reads 4-bit AWQ and GPTQ checkpoints"));
        }
        let group = match q.get("group_size").or_else(|| q.get("q_group_size")).and_then(Value::as_i64) {
            Some(-1) => None,
            Some(g) if g > 0 && g % 8 == 0 => Some(g as usize),
            g => return refuse("group_size", format!("{g:?}: a positive multiple of 8, or -1")),
        };
        let kind = match method {
            "awq" => {
                let version = q.get("version").and_then(Value::as_str).unwrap_or("gemm");
                if !version.eq_ignore_ascii_case("gemm") {
                    return refuse("version", format!("'{version}': kiln reads AutoAWQ's GEMM layout"));
                }
                if q.get("zero_point").and_then(Value::as_bool) == Some(false) {
                    return refuse("zero_point", "false: kiln reads asymmetric AWQ (zero points)".into());
                }
                PackedKind::Awq
            }
            "gptq" => {
                let format = q.get("checkpoint_format").and_then(Value::as_str).unwrap_or("gptq");
                let zero_plus_one = match format {
                    "gptq" => true,
                    "gptq_v2" => false,
                    f => return refuse("checkpoint_format", format!("'{f}': 'gptq' or 'gptq_v2'")),
                };
                PackedKind::Gptq { zero_plus_one }
            }
            m => {
                return refuse(
                    "quant_method",
                    format!("'{m}' is not a packed INT4 method ('awq' or 'gptq'; see `weights::quantization`)"),
                )
            }
        };
        Ok(Some(PackedConfig { kind, group }))
    }
}

/// The parts of one packed projection, as stored (i32 words little-endian; the scales widened
/// to f32, exactly, from the checkpoint's f16 / bf16); `qzeros` absent for symmetric
/// compressed-tensors weights.
pub struct PackedParts<'a> {
    pub qweight: (&'a [u8], [usize; 2]),
    pub qzeros: Option<(&'a [u8], [usize; 2])>,
    pub scales: (Vec<f32>, [usize; 2]),
    pub g_idx: Option<&'a [u8]>,
}

/// `[out, in]` of a packed projection from its `qweight` shape.
pub fn unpacked_shape(kind: PackedKind, qweight: [usize; 2]) -> [usize; 2] {
    match kind {
        PackedKind::Awq => [qweight[1] * 8, qweight[0]],
        PackedKind::Gptq { .. } => [qweight[1], qweight[0] * 8],
        PackedKind::Compressed { .. } => [qweight[0], qweight[1] * 8],
    }
}

fn word(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

fn nibble(w: u32, k: usize) -> i32 {
    ((w >> (4 * k)) & 0xF) as i32
}

/// `(out, in, group, groups)` of a packed projection whose parts fit together.
fn check(cfg: &PackedConfig, p: &PackedParts<'_>) -> Result<(usize, usize, usize, usize), String> {
    let [out, inp] = unpacked_shape(cfg.kind, p.qweight.1);
    let group = cfg.group.unwrap_or(inp);
    // AWQ and GPTQ pack outputs (words or zeros) by eight; compressed-tensors only inputs.
    let outs_by_8 = !matches!(cfg.kind, PackedKind::Compressed { .. });
    if group == 0 || inp % group != 0 || (outs_by_8 && out % 8 != 0) {
        return Err(format!("{out}×{inp} is not whole words of 8 outputs and groups of {group} inputs"));
    }
    let groups = inp / group;
    let want = |what: &str, got: [usize; 2], shape: [usize; 2], bytes: usize, len: usize| {
        if got != shape || len != bytes {
            Err(format!("{what} is {got:?} ({len} bytes), expected {shape:?} ({bytes} bytes)"))
        } else {
            Ok(())
        }
    };
    let names = cfg.kind.names();
    want(names.words, p.qweight.1, p.qweight.1, p.qweight.1[0] * p.qweight.1[1] * 4, p.qweight.0.len())?;
    let (zeros_shape, scales_shape) = match cfg.kind {
        PackedKind::Compressed { .. } => ([out.div_ceil(8), groups], [out, groups]),
        _ => ([groups, out / 8], [groups, out]),
    };
    match (&p.qzeros, cfg.kind.has_zeros()) {
        (Some((z, shape)), true) => {
            want(names.zeros, *shape, zeros_shape, zeros_shape[0] * zeros_shape[1] * 4, z.len())?
        }
        (None, false) => {}
        (Some(_), false) => return Err(format!("{} of a symmetric checkpoint", names.zeros)),
        (None, true) => return Err(format!("no {}", names.zeros)),
    }
    want(names.scales, p.scales.1, scales_shape, groups * out * 4, p.scales.0.len() * 4)?;
    Ok((out, inp, group, groups))
}

/// The projection as kiln's packed 4-bit matrix (see `kiln_runtime::device::quant::int4`): the
/// same values as [`dequantize`], repacked one row of words per output.
pub fn to_int4(cfg: &PackedConfig, p: &PackedParts<'_>) -> Result<Int4Matrix, String> {
    let (out, inp, group, groups) = check(cfg, p)?;
    let scale = |g: usize, o: usize| p.scales.0[g * out + o];
    let zword = |i: usize| p.qzeros.as_ref().map_or(0, |(z, _)| word(z, i));
    let mut scales = vec![0f32; out * groups];
    let mut zeros = vec![0u8; out * groups];
    let mut words = vec![0u32; out * inp / 8];
    let mut grouping = Grouping::Contiguous(group);
    match cfg.kind {
        PackedKind::Awq => {
            for g in 0..groups {
                for o in 0..out {
                    scales[o * groups + g] = scale(g, o);
                    zeros[o * groups + g] = nibble(zword(g * (out / 8) + o / 8), slot(o % 8)) as u8;
                }
            }
            for i in 0..inp {
                for c in 0..out / 8 {
                    let wd = word(p.qweight.0, i * (out / 8) + c);
                    for (k, &col) in AWQ_ORDER.iter().enumerate() {
                        let o = 8 * c + col;
                        words[o * inp / 8 + i / 8] |= (nibble(wd, k) as u32) << (4 * (i % 8));
                    }
                }
            }
        }
        PackedKind::Gptq { zero_plus_one } => {
            for g in 0..groups {
                for o in 0..out {
                    scales[o * groups + g] = scale(g, o);
                    let z = nibble(zword(g * (out / 8) + o / 8), o % 8) + i32::from(zero_plus_one);
                    zeros[o * groups + g] = z as u8;
                }
            }
            for r in 0..inp / 8 {
                for o in 0..out {
                    words[o * inp / 8 + r] = word(p.qweight.0, r * out + o);
                }
            }
        }
        PackedKind::Compressed { zero_point } => {
            for o in 0..out {
                for g in 0..groups {
                    // [out, groups] scales; zero points packed along the output, plus 8.
                    scales[o * groups + g] = p.scales.0[o * groups + g];
                    zeros[o * groups + g] =
                        if zero_point { nibble(zword((o / 8) * groups + g), o % 8) as u8 } else { 8 };
                }
            }
            words.copy_from_slice(&(0..out * inp / 8).map(|i| word(p.qweight.0, i)).collect::<Vec<_>>());
        }
    }
    if let Some(g) = gptq_groups(p, inp, groups)? {
        if g.iter().enumerate().any(|(i, &x)| x != i / group) {
            grouping = Grouping::Indexed { groups, g_idx: g.iter().map(|&x| x as u32).collect() };
        }
    }
    Int4Matrix::new((out, inp), grouping, words, scales, zeros).map_err(|e| e.to_string())
}

/// GPTQ's `g_idx`, checked, when the checkpoint has one.
fn gptq_groups(p: &PackedParts<'_>, inp: usize, groups: usize) -> Result<Option<Vec<usize>>, String> {
    let Some(b) = p.g_idx else { return Ok(None) };
    if b.len() != inp * 4 {
        return Err(format!("g_idx has {} bytes for {inp} inputs", b.len()));
    }
    let g: Vec<usize> = (0..inp).map(|i| word(b, i) as usize).collect();
    if let Some(bad) = g.iter().find(|&&x| x >= groups) {
        return Err(format!("g_idx names group {bad} of {groups}"));
    }
    Ok(Some(g))
}

/// The `[out, in]` f32 weight of a packed projection (see the module header), or why the parts
/// do not fit together: [`to_int4`]'s matrix, row by row (the one reading of the layouts).
pub fn dequantize(cfg: &PackedConfig, p: &PackedParts<'_>) -> Result<Vec<f32>, String> {
    let m = to_int4(cfg, p)?;
    let cols = m.cols();
    let mut w = vec![0f32; m.rows() * cols];
    for (r, row) in w.chunks_exact_mut(cols.max(1)).enumerate() {
        m.dequantize_row(r, row);
    }
    Ok(w)
}

/// The nibble of a packed AWQ word that holds column `col` of its eight.
fn slot(col: usize) -> usize {
    AWQ_ORDER.iter().position(|&c| c == col).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(vals: &[i32], order: &[usize; 8]) -> u32 {
        order.iter().enumerate().fold(0u32, |w, (k, &c)| w | ((vals[c] as u32 & 0xF) << (4 * k)))
    }

    fn bytes(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Scales as a checkpoint's f16 values widened.
    fn f16s(v: &[f32]) -> Vec<f32> {
        v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
    }

    /// Eight input rows of 8 outputs, one group: each output's value lands where AWQ's order says.
    #[test]
    fn awq_nibbles_follow_the_interleave() {
        let q: Vec<i32> = (0..8).map(|o| o + 3).collect(); // q for outputs 0..8
        let z = [1i32; 8];
        let qweight = bytes(&[pack(&q, &AWQ_ORDER); 8]);
        let qzeros = bytes(&[pack(&z, &AWQ_ORDER)]);
        let scales = f16s(&[0.5; 8]);
        let cfg = PackedConfig { kind: PackedKind::Awq, group: None };
        let parts = PackedParts {
            qweight: (&qweight, [8, 1]),
            qzeros: Some((&qzeros, [1, 1])),
            scales: (scales, [1, 8]),
            g_idx: None,
        };
        let w = dequantize(&cfg, &parts).unwrap();
        let want: Vec<f32> = (0..8).flat_map(|o| [(o + 3 - 1) as f32 * 0.5; 8]).collect();
        assert_eq!(w, want);
        assert_eq!(kept(&cfg, &parts), w, "the packed matrix holds the same values");
    }

    /// Every value of the packed form kiln keeps ([`to_int4`]), row by row.
    fn kept(cfg: &PackedConfig, parts: &PackedParts<'_>) -> Vec<f32> {
        let m = to_int4(cfg, parts).unwrap();
        let mut all = vec![0f32; m.rows() * m.cols()];
        for r in 0..m.rows() {
            m.dequantize_row(r, &mut all[r * m.cols()..(r + 1) * m.cols()]);
        }
        all
    }

    /// GPTQ v1: 8 inputs of one output packed along the input, zeros stored minus one, act-order
    /// groups from g_idx.
    #[test]
    fn gptq_reads_inputs_in_order_zero_plus_one_and_g_idx() {
        let (out, inp) = (8, 16);
        let q: Vec<i32> = (0..inp).map(|i| (i % 16) as i32).collect();
        // qweight [in/8, out]: the same inputs for every output.
        let words: Vec<u32> = (0..inp / 8)
            .flat_map(|r| {
                let w = (0..8).fold(0u32, |w, k| w | ((q[8 * r + k] as u32) << (4 * k)));
                vec![w; out]
            })
            .collect();
        // Two groups; group 0 zero 7 (stored 6), group 1 zero 2 (stored 1); act-order g_idx.
        let zeros = [bytes(&[0x6666_6666]), bytes(&[0x1111_1111])].concat();
        let scales = f16s(&[[0.25f32; 8], [2.0f32; 8]].concat());
        let g_idx: Vec<u32> = (0..inp as u32).map(|i| i % 2).collect();
        let cfg = PackedConfig { kind: PackedKind::Gptq { zero_plus_one: true }, group: Some(8) };
        let qweight = bytes(&words);
        let g = bytes(&g_idx);
        let parts = PackedParts {
            qweight: (&qweight, [inp / 8, out]),
            qzeros: Some((&zeros, [2, 1])),
            scales: (scales, [2, out]),
            g_idx: Some(&g),
        };
        let w = dequantize(&cfg, &parts).unwrap();
        assert_eq!(kept(&cfg, &parts), w, "the packed matrix holds the same values");
        for o in 0..out {
            for i in 0..inp {
                let (z, s) = if i % 2 == 0 { (7, 0.25) } else { (2, 2.0) };
                assert_eq!(w[o * inp + i], (q[i] - z) as f32 * s, "output {o} input {i}");
            }
        }
    }

    /// compressed-tensors: words as stored (one row per output), zero points packed along the
    /// output with +8, or 8 when symmetric; an optional act-order `weight_g_idx`.
    #[test]
    fn compressed_tensors_rows_zero_points_and_g_idx() {
        let (out, inp) = (9, 16); // 9 outputs: zero points in two words of the output axis
        let words: Vec<u32> = (0..out * inp / 8).map(|i| (i as u32).wrapping_mul(0x9E37_79B9)).collect();
        let qweight = bytes(&words);
        let scales: Vec<f32> = (0..out * 2).map(|i| (i + 1) as f32 / 64.0).collect();
        // Zero nibble of output o, group g: (o + 3g) % 16.
        let zp: Vec<u32> = (0..2)
            .flat_map(|r| {
                (0..2).map(move |g| (0..8).fold(0u32, |w, k| w | ((((8 * r + k) + 3 * g) % 16) as u32) << (4 * k)))
            })
            .collect();
        let zp = bytes(&zp);
        let q = |o: usize, i: usize| ((words[o * inp / 8 + i / 8] >> (4 * (i % 8))) & 0xF) as f32;
        for asym in [false, true] {
            let cfg = PackedConfig { kind: PackedKind::Compressed { zero_point: asym }, group: Some(8) };
            let parts = PackedParts {
                qweight: (&qweight, [out, inp / 8]),
                qzeros: asym.then_some((&zp[..], [2, 2])),
                scales: (scales.clone(), [out, 2]),
                g_idx: None,
            };
            let w = dequantize(&cfg, &parts).unwrap();
            for o in 0..out {
                for i in 0..inp {
                    let z = if asym { ((o + 3 * (i / 8)) % 16) as f32 } else { 8.0 };
                    assert_eq!(w[o * inp + i], (q(o, i) - z) * scales[o * 2 + i / 8], "({o}, {i}) asym {asym}");
                }
            }
            let missing = PackedParts { qzeros: (!asym).then_some((&zp[..], [2, 2])), ..parts };
            assert!(dequantize(&cfg, &missing).is_err(), "zero points must be present exactly when asymmetric");
        }
        let g_idx = bytes(&(0..inp as u32).map(|i| (i + 1) % 2).collect::<Vec<_>>());
        let cfg = PackedConfig { kind: PackedKind::Compressed { zero_point: false }, group: Some(8) };
        let parts = PackedParts {
            qweight: (&qweight, [out, inp / 8]),
            qzeros: None,
            scales: (scales.clone(), [out, 2]),
            g_idx: Some(&g_idx),
        };
        let w = dequantize(&cfg, &parts).unwrap();
        assert_eq!(w[1], (q(0, 1) - 8.0) * scales[0], "input 1 is in group 0 by g_idx");
    }

    #[test]
    fn unsupported_configs_name_the_field() {
        let refuse = |q: Value| PackedConfig::from_hf(&serde_json::json!({ "quantization_config": q })).unwrap_err();
        assert_eq!(
            refuse(serde_json::json!({"quant_method": "fp8", "bits": 4, "group_size": 128})).0,
            "quantization_config.quant_method"
        );
        assert_eq!(
            refuse(serde_json::json!({"quant_method": "gptq", "bits": 8, "group_size": 128})).0,
            "quantization_config.bits"
        );
        let gemv = serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"});
        assert_eq!(refuse(gemv).0, "quantization_config.version");
        let ok = serde_json::json!({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}});
        assert_eq!(PackedConfig::from_hf(&ok).unwrap(), Some(PackedConfig { kind: PackedKind::Awq, group: Some(128) }));
        assert_eq!(PackedConfig::from_hf(&serde_json::json!({})).unwrap(), None);
    }
}
