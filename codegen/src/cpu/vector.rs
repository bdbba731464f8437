//! Column loops: one op over a whole row. Each op gets its own monomorphised loop (the op is
//! matched once per row, outside the loop) so LLVM can vectorise the simple ones; operands
//! are either a row slice or a per-row scalar broadcast over the row.
//!
//! Reductions keep 8 independent partial results so the loop vectorises (floating-point adds
//! are not reassociated by the compiler); the summation order is therefore unspecified, like
//! the GPU's tree reduction, and results match to rounding, not bit for bit.

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
        UnaryOp::Exp => map1(dst, a, f32::exp),
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

/// Widen a row of any float storage dtype to f32 (exact).
pub(crate) fn widen_f16(dst: &mut [f32], src: &[f16]) {
    src.convert_to_f32_slice(dst);
}
pub(crate) fn widen_bf16(dst: &mut [f32], src: &[bf16]) {
    src.convert_to_f32_slice(dst);
}

/// Round a row to f16 (nearest-even) in place, through `scratch` (the half crate's slice
/// conversions use the CPU's conversion instructions where it has them).
pub(crate) fn round_f16_in_place(row: &mut [f32], scratch: &mut Vec<f16>) {
    scratch.resize(row.len(), f16::ZERO);
    scratch.convert_from_f32_slice(row);
    scratch.convert_to_f32_slice(row);
}

/// Round a row to bf16 (nearest-even) in place.
pub(crate) fn round_bf16_in_place(row: &mut [f32], scratch: &mut Vec<bf16>) {
    scratch.resize(row.len(), bf16::ZERO);
    scratch.convert_from_f32_slice(row);
    scratch.convert_to_f32_slice(row);
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

/// A row reduction. `Mean` is `sum / width` in f32.
pub(crate) fn reduce(r: ReduceOp, a: Src<'_, f32>, width: usize) -> f32 {
    match (r, a) {
        (ReduceOp::Sum, Src::V(x)) => sum(x),
        (ReduceOp::Mean, Src::V(x)) => sum(x) / width as f32,
        (ReduceOp::Max, Src::V(x)) => max(x),
        // Reductions always read a row (typeck); a scalar would be a value repeated `width` times.
        (ReduceOp::Sum, Src::S(s)) => s * width as f32,
        (ReduceOp::Mean | ReduceOp::Max, Src::S(s)) => s,
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
