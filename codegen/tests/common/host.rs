//! Host tensors for the tests: random non-zero data in any storage dtype, row tensors with
//! padded strides (the padding poisoned with NaN so a misindexed read shows), outputs
//! pre-filled with a sentinel (so unwritten or over-written elements show), and tolerances.

use half::{bf16, f16};
use kiln_codegen::cpu::{math, CpuIn, CpuOut};
use kiln_codegen::ir::DType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform in `[lo, hi]`, never within 1e-3 of zero.
pub fn nonzero(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            let v = rng.random_range(lo..=hi);
            if v.abs() > 1e-3 {
                break v;
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
pub enum Host {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
    /// OCP FP8 e4m3 bytes.
    E4M3(Vec<u8>),
    /// int8 codes; -128, which no cast writes (they saturate at ±127), stands for NaN.
    I8(Vec<i8>),
}

impl Host {
    /// Store `v` in dtype `d` (rounding to halves, truncating to i32).
    pub fn from_f32(d: DType, v: &[f32]) -> Host {
        match d {
            DType::F32 => Host::F32(v.to_vec()),
            DType::F16 => Host::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Host::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::I32 => Host::I32(v.iter().map(|&x| x as i32).collect()),
            // NaN to the NaN byte (the encoder saturates it), so padding and sentinels show.
            DType::F8E4M3 => {
                Host::E4M3(v.iter().map(|&x| if x.is_nan() { 0x7f } else { math::f32_to_e4m3(x) }).collect())
            }
            DType::I8 => Host::I8(v.iter().map(|&x| if x.is_nan() { i8::MIN } else { math::f32_to_i8(x) }).collect()),
            DType::Bool => panic!("bool is not a storage dtype"),
        }
    }
    /// An output buffer full of the sentinel (NaN, or `i32::MIN`).
    pub fn sentinel(d: DType, n: usize) -> Host {
        match d {
            DType::I32 => Host::I32(vec![i32::MIN; n]),
            d => Host::from_f32(d, &vec![f32::NAN; n]),
        }
    }
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Host::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Host::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Host::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Host::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Host::E4M3(v) => v.iter().map(|&x| math::e4m3_to_f32(x) as f64).collect(),
            Host::I8(v) => v.iter().map(|&x| if x == i8::MIN { f64::NAN } else { x as f64 }).collect(),
        }
    }
    pub fn as_in(&self) -> CpuIn<'_> {
        match self {
            Host::F32(v) => CpuIn::F32(v),
            Host::F16(v) => CpuIn::F16(v),
            Host::BF16(v) => CpuIn::BF16(v),
            Host::I32(v) => CpuIn::I32(v),
            Host::E4M3(v) => CpuIn::E4M3(v),
            Host::I8(v) => CpuIn::I8(v),
        }
    }
    pub fn as_out(&mut self) -> CpuOut<'_> {
        match self {
            Host::F32(v) => CpuOut::F32(v),
            Host::F16(v) => CpuOut::F16(v),
            Host::BF16(v) => CpuOut::BF16(v),
            Host::I32(v) => CpuOut::I32(v),
            Host::E4M3(v) => CpuOut::E4M3(v),
            Host::I8(v) => CpuOut::I8(v),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Host::F32(v) => v.len(),
            Host::F16(v) => v.len(),
            Host::BF16(v) => v.len(),
            Host::I32(v) => v.len(),
            Host::E4M3(v) => v.len(),
            Host::I8(v) => v.len(),
        }
    }
}

/// A `[rows, width]` tensor with row stride `stride`: random values in `[lo, hi]` in the
/// rows, NaN in the padding (0 for i32). Returns the tensor and its rows as stored (f64).
pub fn row_tensor(
    rng: &mut StdRng,
    d: DType,
    rows: usize,
    width: usize,
    stride: usize,
    lo: f32,
    hi: f32,
) -> (Host, Vec<Vec<f64>>) {
    let mut flat = vec![if d == DType::I32 { 0.0 } else { f32::NAN }; rows * stride];
    for r in 0..rows {
        let vals = nonzero(rng, width, lo, hi);
        flat[r * stride..r * stride + width].copy_from_slice(&vals);
    }
    let h = Host::from_f32(d, &flat);
    let all = h.to_f64();
    let rows_v = (0..rows).map(|r| all[r * stride..r * stride + width].to_vec()).collect();
    (h, rows_v)
}

/// A `[n]` tensor of random values in `[lo, hi]`; returns it and its values as stored.
pub fn vec_tensor(rng: &mut StdRng, d: DType, n: usize, lo: f32, hi: f32) -> (Host, Vec<f64>) {
    let h = Host::from_f32(d, &nonzero(rng, n, lo, hi));
    let v = h.to_f64();
    (h, v)
}

/// Relative tolerance of a stored result: half an ulp of the dtype (its rounding) plus f32
/// arithmetic error.
pub fn rtol(d: DType) -> f64 {
    match d {
        DType::F32 => 2e-5,
        DType::F16 => 2f64.powi(-11) + 2e-5,
        DType::BF16 => 2f64.powi(-8) + 2e-5,
        DType::F8E4M3 => 2f64.powi(-4) + 2e-5,
        // Plus `atol_floor`'s half a code.
        DType::I8 => 2e-5,
        DType::I32 | DType::Bool => 0.0,
    }
}

/// Absolute floor of the tolerance: one step of the dtype's subnormal range (f16's
/// subnormals are coarse: 2^-24).
pub fn atol_floor(d: DType) -> f64 {
    match d {
        DType::F16 => 2f64.powi(-24),
        DType::F8E4M3 => 2f64.powi(-10),
        // An integer code: half a step of rounding.
        DType::I8 => 0.5,
        _ => 1e-30,
    }
}

/// Check a strided `[rows, width]` output against the reference rows: every element within
/// `rtol * |want| + atol_rel * max|want|`, and the padding still holds the sentinel.
pub fn check_rows(what: &str, out: &Host, stride: usize, want: &[Vec<f64>], d: DType, extra_rtol: f64) {
    let got = out.to_f64();
    let scale = want.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
    let rt = rtol(d) + extra_rtol;
    let atol = 2e-6 * scale + atol_floor(d);
    let width = want.first().map_or(0, |r| r.len());
    for (r, wrow) in want.iter().enumerate() {
        for (c, &w) in wrow.iter().enumerate() {
            let g = got[r * stride + c];
            assert!(
                (g - w).abs() <= rt * w.abs() + atol,
                "{what}: row {r} col {c}: got {g}, want {w} (rtol {rt}, atol {atol})"
            );
        }
        let pad_end = if r + 1 == want.len() { got.len().min(r * stride + stride) } else { r * stride + stride };
        for c in r * stride + width..pad_end {
            let ok = match out {
                Host::I32(v) => v[c] == i32::MIN,
                _ => got[c].is_nan(),
            };
            assert!(ok, "{what}: padding element {c} was written");
        }
    }
}

/// Check a `[rows]` output against the reference.
pub fn check_vec(what: &str, out: &Host, want: &[f64], d: DType, extra_rtol: f64) {
    let got = out.to_f64();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let rt = rtol(d) + extra_rtol;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rt * w.abs() + 2e-6 * scale + atol_floor(d), "{what}: row {i}: got {g}, want {w}");
    }
}
