//! Column loops: one op over a whole row. Each op gets its own monomorphised loop (the op is
//! matched once per row, outside the loop) so LLVM can vectorise the simple ones; operands
//! are either a row slice or a per-row scalar broadcast over the row.
//!
//! Reductions keep 8 independent partial results so the loop vectorises (floating-point adds
//! are not reassociated by the compiler); the summation order is therefore unspecified, like
//! the GPU's tree reduction, and results match to rounding, not bit for bit.

use super::args::CpuScalar;
use super::math;
use crate::ir::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// An operand of a column loop: a row of values, or one value for the whole row.
#[derive(Copy, Clone)]
pub(crate) enum Src<'a, T> {
    V(&'a [T]),
    S(T),
}

#[inline(always)]
fn map1<T: Copy, U: Copy>(dst: &mut [U], a: Src<'_, T>, f: impl Fn(T) -> U) {
    match a {
        Src::V(a) => {
            for (d, &x) in dst.iter_mut().zip(a) {
                *d = f(x);
            }
        }
        Src::S(x) => dst.fill(f(x)),
    }
}

#[inline(always)]
fn map2<T: Copy, U: Copy>(dst: &mut [U], a: Src<'_, T>, b: Src<'_, T>, f: impl Fn(T, T) -> U) {
    match (a, b) {
        (Src::V(a), Src::V(b)) => {
            for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
                *d = f(x, y);
            }
        }
        (Src::V(a), Src::S(y)) => {
            for (d, &x) in dst.iter_mut().zip(a) {
                *d = f(x, y);
            }
        }
        (Src::S(x), Src::V(b)) => {
            for (d, &y) in dst.iter_mut().zip(b) {
                *d = f(x, y);
            }
        }
        (Src::S(x), Src::S(y)) => dst.fill(f(x, y)),
    }
}

pub(crate) fn unary_f32(u: UnaryOp, dst: &mut [f32], a: Src<'_, f32>) {
    match u {
        UnaryOp::Neg => map1(dst, a, |x| -x),
        UnaryOp::Abs => map1(dst, a, f32::abs),
        UnaryOp::Exp => map1(dst, a, math::exp),
        UnaryOp::Log => map1(dst, a, f32::ln),
        UnaryOp::Sqrt => map1(dst, a, f32::sqrt),
        UnaryOp::Rsqrt => map1(dst, a, math::rsqrt),
        UnaryOp::Tanh => map1(dst, a, f32::tanh),
        UnaryOp::Sigmoid => map1(dst, a, math::sigmoid),
        UnaryOp::Erf => map1(dst, a, math::erf),
        UnaryOp::Sin => map1(dst, a, f32::sin),
        UnaryOp::Cos => map1(dst, a, f32::cos),
        UnaryOp::Not => map1(dst, a, |x| math::unary_f32(UnaryOp::Not, x)),
    }
}

/// `Neg` / `Abs` on i32 (wrapping); other ops are not defined on i32 (typeck) and give 0.
pub(crate) fn unary_i32(u: UnaryOp, dst: &mut [i32], a: Src<'_, i32>) {
    match u {
        UnaryOp::Neg => map1(dst, a, i32::wrapping_neg),
        UnaryOp::Abs => map1(dst, a, i32::wrapping_abs),
        _ => dst.fill(0),
    }
}

pub(crate) fn not(dst: &mut [bool], a: Src<'_, bool>) {
    map1(dst, a, |x| !x)
}

pub(crate) fn binary_f32(b: BinaryOp, dst: &mut [f32], x: Src<'_, f32>, y: Src<'_, f32>) {
    match b {
        BinaryOp::Add => map2(dst, x, y, |a, b| a + b),
        BinaryOp::Sub => map2(dst, x, y, |a, b| a - b),
        BinaryOp::Mul => map2(dst, x, y, |a, b| a * b),
        BinaryOp::Div => map2(dst, x, y, |a, b| a / b),
        BinaryOp::Min => map2(dst, x, y, f32::min),
        BinaryOp::Max => map2(dst, x, y, f32::max),
        BinaryOp::Pow => map2(dst, x, y, f32::powf),
        BinaryOp::And | BinaryOp::Or => dst.fill(f32::NAN),
    }
}

pub(crate) fn binary_i32(b: BinaryOp, dst: &mut [i32], x: Src<'_, i32>, y: Src<'_, i32>) {
    match b {
        BinaryOp::Add => map2(dst, x, y, i32::wrapping_add),
        BinaryOp::Sub => map2(dst, x, y, i32::wrapping_sub),
        BinaryOp::Mul => map2(dst, x, y, i32::wrapping_mul),
        BinaryOp::Div => map2(dst, x, y, math::div_i32),
        BinaryOp::Min => map2(dst, x, y, i32::min),
        BinaryOp::Max => map2(dst, x, y, i32::max),
        BinaryOp::Pow | BinaryOp::And | BinaryOp::Or => dst.fill(0),
    }
}

pub(crate) fn binary_bool(b: BinaryOp, dst: &mut [bool], x: Src<'_, bool>, y: Src<'_, bool>) {
    match b {
        BinaryOp::And => map2(dst, x, y, |a, b| a & b),
        BinaryOp::Or => map2(dst, x, y, |a, b| a | b),
        _ => dst.fill(false),
    }
}

pub(crate) fn cmp<T: Copy + PartialOrd>(c: CmpOp, dst: &mut [bool], x: Src<'_, T>, y: Src<'_, T>) {
    match c {
        CmpOp::Lt => map2(dst, x, y, |a, b| a < b),
        CmpOp::Le => map2(dst, x, y, |a, b| a <= b),
        CmpOp::Gt => map2(dst, x, y, |a, b| a > b),
        CmpOp::Ge => map2(dst, x, y, |a, b| a >= b),
        CmpOp::Eq => map2(dst, x, y, |a, b| a == b),
        CmpOp::Ne => map2(dst, x, y, |a, b| a != b),
    }
}

pub(crate) fn select<T: Copy>(dst: &mut [T], c: Src<'_, bool>, a: Src<'_, T>, b: Src<'_, T>) {
    let c = match c {
        Src::S(c) => return map1(dst, if c { a } else { b }, |x| x),
        Src::V(c) => c,
    };
    match (a, b) {
        (Src::V(a), Src::V(b)) => {
            for (((d, &c), &x), &y) in dst.iter_mut().zip(c).zip(a).zip(b) {
                *d = if c { x } else { y };
            }
        }
        (Src::V(a), Src::S(y)) => {
            for ((d, &c), &x) in dst.iter_mut().zip(c).zip(a) {
                *d = if c { x } else { y };
            }
        }
        (Src::S(x), Src::V(b)) => {
            for ((d, &c), &y) in dst.iter_mut().zip(c).zip(b) {
                *d = if c { x } else { y };
            }
        }
        (Src::S(x), Src::S(y)) => {
            for (d, &c) in dst.iter_mut().zip(c) {
                *d = if c { x } else { y };
            }
        }
    }
}

/// Widen an f16 row to f32 (exact; the half crate uses the CPU's conversion instructions
/// where it has them).
pub(crate) fn widen_f16(dst: &mut [f32], src: &[f16]) {
    src.convert_to_f32_slice(dst);
}

/// Widen a bf16 row to f32: a bf16 is the top half of an f32 (exact).
pub(crate) fn widen_bf16(dst: &mut [f32], src: &[bf16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s.to_bits() as u32) << 16);
    }
}

/// The bits of the bf16 nearest to `x` (ties to even), as a 32-bit pattern with the low half
/// zero. NaN stays NaN (quiet). Same results as `half::bf16::from_f32`, written with plain
/// integer ops so a loop over it vectorises.
#[inline(always)]
fn bf16_rne_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    if x.is_nan() {
        (b | 0x0040_0000) & 0xFFFF_0000
    } else {
        rounded
    }
}

/// Narrow an f32 row to bf16 (nearest-even).
pub(crate) fn narrow_bf16(dst: &mut [bf16], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits((bf16_rne_bits(s) >> 16) as u16);
    }
}

/// Widen e4m3 bytes to f32 (exact).
pub(crate) fn widen_e4m3(dst: &mut [f32], src: &[u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = super::math::e4m3_to_f32(s);
    }
}

/// Narrow an f32 row to e4m3 bytes (nearest-even, saturating at ±448).
pub(crate) fn narrow_e4m3(dst: &mut [u8], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = super::math::f32_to_e4m3(s);
    }
}

/// Widen int8 codes to f32 (exact).
pub(crate) fn widen_i8(dst: &mut [f32], src: &[i8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as f32;
    }
}

/// Narrow an f32 row to int8 codes (nearest-even, saturating at ±127).
pub(crate) fn narrow_i8(dst: &mut [i8], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = super::math::f32_to_i8(s);
    }
}

/// Narrow an f32 row to f16 (nearest-even).
pub(crate) fn narrow_f16(dst: &mut [f16], src: &[f32]) {
    dst.convert_from_f32_slice(src);
}

/// Round a row to f16 (nearest-even) in place, through `scratch`.
pub(crate) fn round_f16_in_place(row: &mut [f32], scratch: &mut Vec<f16>) {
    scratch.resize(row.len(), f16::ZERO);
    scratch.convert_from_f32_slice(row);
    scratch.convert_to_f32_slice(row);
}

/// Round a row to bf16 (nearest-even) in place.
pub(crate) fn round_bf16_in_place(row: &mut [f32]) {
    for v in row.iter_mut() {
        *v = f32::from_bits(bf16_rne_bits(*v));
    }
}

pub(crate) fn cast_into_f32<T: Copy>(dst: &mut [f32], a: Src<'_, T>, f: impl Fn(T) -> f32) {
    map1(dst, a, f)
}
pub(crate) fn cast_into_i32<T: Copy>(dst: &mut [i32], a: Src<'_, T>, f: impl Fn(T) -> i32) {
    map1(dst, a, f)
}

const LANES: usize = 8;

fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] += v;
    }
    // pairwise combine of the lanes
    let a = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (a[0] + a[2]) + (a[1] + a[3])
}

/// `fmaxf` semantics from `-inf`: NaNs are skipped; a row of NaNs gives `-inf`.
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] = acc[l].max(v);
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The lowest column holding the largest value, a NaN counting as `-inf` (a row of NaNs or
/// `-inf`s gives 0): the order the GPU's block reduction also follows, so both pick the same
/// column.
fn argmax(x: &[f32]) -> i32 {
    let mut best = (f32::NEG_INFINITY, 0usize);
    for (c, &v) in x.iter().enumerate() {
        if v > best.0 {
            best = (v, c);
        }
    }
    best.1 as i32
}

/// A row reduction. `Mean` is `sum / width` in f32; `ArgMax` is an i32 column.
pub(crate) fn reduce(r: ReduceOp, a: Src<'_, f32>, width: usize) -> CpuScalar {
    match (r, a) {
        (ReduceOp::Sum, Src::V(x)) => CpuScalar::F32(sum(x)),
        (ReduceOp::Mean, Src::V(x)) => CpuScalar::F32(sum(x) / width as f32),
        (ReduceOp::Max, Src::V(x)) => CpuScalar::F32(max(x)),
        (ReduceOp::ArgMax, Src::V(x)) => CpuScalar::I32(argmax(x)),
        // Reductions always read a row (typeck); a scalar would be a value repeated `width` times.
        (ReduceOp::Sum, Src::S(s)) => CpuScalar::F32(s * width as f32),
        (ReduceOp::Mean | ReduceOp::Max, Src::S(s)) => CpuScalar::F32(s),
        (ReduceOp::ArgMax, Src::S(_)) => CpuScalar::I32(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_and_max_cover_every_length() {
        for n in 0..40 {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() + 0.1).collect();
            let want: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((sum(&x) as f64 - want).abs() < 1e-5, "sum n={n}");
            let want = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want, "max n={n}");
        }
        assert_eq!(max(&[f32::NAN, 1.0, f32::NAN]), 1.0);
    }

    #[test]
    fn bf16_conversions_match_the_half_crate() {
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-45,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            3.389e38,
            -3.4e38,
        ];
        // a spread of bit patterns over the whole f32 range (NaNs included)
        xs.extend((0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9))));
        let mut got = vec![bf16::ZERO; xs.len()];
        narrow_bf16(&mut got, &xs);
        let mut wide = vec![0.0f32; xs.len()];
        widen_bf16(&mut wide, &got);
        let mut rounded = xs.clone();
        round_bf16_in_place(&mut rounded);
        for (i, &x) in xs.iter().enumerate() {
            let want = bf16::from_f32(x);
            if x.is_nan() {
                assert!(got[i].is_nan() && wide[i].is_nan() && rounded[i].is_nan(), "{x}");
            } else {
                assert_eq!(got[i].to_bits(), want.to_bits(), "narrow {x:e}");
                assert_eq!(wide[i].to_bits(), want.to_f32().to_bits(), "widen {x:e}");
                assert_eq!(rounded[i].to_bits(), want.to_f32().to_bits(), "round {x:e}");
            }
        }
    }

    #[test]
    fn select_mixes_rows_and_scalars() {
        let c = [true, false, true];
        let a = [1.0f32, 2.0, 3.0];
        let mut d = [0.0f32; 3];
        select(&mut d, Src::V(&c), Src::V(&a), Src::S(-1.0));
        assert_eq!(d, [1.0, -1.0, 3.0]);
        select(&mut d, Src::S(false), Src::V(&a), Src::S(9.0));
        assert_eq!(d, [9.0; 3]);
    }
}
