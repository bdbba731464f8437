//! The scalar meaning of every op: one function per op, used by the CPU backend's column
//! loops (through the `#[inline]` per-element functions), its per-row scalar path, and by the
//! `const_fold` pass, so a folded constant is exactly what the backend would have computed.
//! The rules are listed in `cpu/mod.rs`; the CUDA emitter follows the same list.
//!
//! Values of dtype `F16`/`BF16`/`F8E4M3`/`I8` are carried as the `f32` they widen to exactly; a
//! cast to one rounds to nearest-even (e4m3 also saturating at ±448, i8 at ±127) and widens
//! back, so every value of a narrow dtype is representable in it.

use super::CpuScalar;
use crate::ir::{BinaryOp, CmpOp, DType, UnaryOp};
use half::{bf16, f16};

// ---- per-element float functions (all f32) -------------------------------------------------

/// `e^x` within 1.03 ulp, vectorisable (see `cpu/exp.rs`).
pub use super::exp::exp;

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline]
pub fn rsqrt(x: f32) -> f32 {
    1.0 / x.sqrt()
}

/// Round an f32 to the nearest f16 (ties to even) and widen it back.
#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Round an f32 to the nearest bf16 (ties to even) and widen it back.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// f32 → OCP FP8 e4m3 byte: round to nearest even, |x| saturated to 448 (NaN too, as the GPU's
/// `fminf` drops it). The bits of the prelude's `kiln_f32_to_e4m3_bits`.
pub fn f32_to_e4m3(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(448.0);
    let bits = if a < 0.015625 {
        // Below 2^-6: subnormal steps of 2^-9 (8 of them is 2^-6, byte 0x08).
        (a * 512.0).round_ties_even() as u8
    } else {
        // 2^e <= a < 2^(e+1): 8..16 steps of 2^(e-3); 16 carries into exponent e + 1.
        let e = ((a.to_bits() >> 23) & 0xFF) as i32 - 127;
        let q = (a * 2f32.powi(3 - e)).round_ties_even() as i32;
        (((e + 7) << 3) + q - 8) as u8
    };
    sign | bits
}

/// The exact value of an e4m3 byte (0x7f / 0xff, the NaNs, read as NaN).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let (sign, exp, man) = (if b & 0x80 != 0 { -1.0f32 } else { 1.0 }, ((b >> 3) & 0xF) as i32, (b & 7) as f32);
    if b & 0x7f == 0x7f {
        return f32::NAN;
    }
    sign * if exp == 0 { man * 2f32.powi(-9) } else { (1.0 + man / 8.0) * 2f32.powi(exp - 7) }
}

/// Round an f32 to the nearest e4m3 value (ties to even, saturating) and widen it back.
#[inline]
pub fn round_e4m3(x: f32) -> f32 {
    e4m3_to_f32(f32_to_e4m3(x))
}

/// f32 → int8 code: round to nearest even, saturate at ±127 (the symmetric range), NaN → 0
/// (the prelude's `kiln_f32_to_i8`: `cvt.rni.s32.f32`, then the clamp).
#[inline]
pub fn f32_to_i8(x: f32) -> i8 {
    (x.round_ties_even() as i32).clamp(-127, 127) as i8
}

/// Round an f32 to the nearest int8 code (ties to even, saturating at ±127) as an f32.
#[inline]
pub fn round_i8(x: f32) -> f32 {
    f32_to_i8(x) as f32
}

/// f32 → i32: truncate toward zero, saturate out of range, NaN → 0 (Rust `as`; the GPU's
/// `cvt.rzi.s32.f32` does the same).
#[inline]
pub fn f32_to_i32(x: f32) -> i32 {
    x as i32
}

/// i32 division truncating toward zero. Division by zero is undefined on the GPU; here it
/// gives 0, and `i32::MIN / -1` wraps, so the CPU never traps.
#[inline]
pub fn div_i32(a: i32, b: i32) -> i32 {
    if b == 0 {
        0
    } else {
        a.wrapping_div(b)
    }
}

/// The error function, for any f32, with an error well under one f32 ulp.
///
/// Computed in f64 from two polynomial fits made for this crate (Chebyshev fits, degree 8
/// and 13, made with mpmath at 40 digits; absolute error below 1e-12 and 4e-10):
/// - `|x| < 1`: `erf(x) = x * P(x^2)`;
/// - `1 <= |x| < 4`: `erf(x) = 1 - exp(-x^2) * Q(s)`, `s = (|x| - 2.5) / 1.5` in `[-1, 1]`;
/// - `|x| >= 4`: `±1` (erfc(4) ≈ 1.5e-8 is below half an ulp of 1.0f).
// The fit's coefficients are printed with 17 significant digits so they round-trip exactly.
#[allow(clippy::excessive_precision)]
pub fn erf(x: f32) -> f32 {
    const P: [f64; 9] = [
        1.0589380641075019e-6,
        -1.3909340021874599e-5,
        1.195656256820733e-4,
        -8.5426379970872296e-4,
        5.2237834771892481e-3,
        -2.6866133235095592e-2,
        1.1283791308604581e-1,
        -3.7612638889635307e-1,
        1.1283791670946767,
    ];
    const Q: [f64; 14] = [
        -4.8989285903810882e-6,
        1.3805364559225202e-5,
        -2.1006044202482387e-5,
        5.4988324971411191e-5,
        -0.00016385368138163448,
        0.00041446201865060014,
        -0.0010051734595985596,
        0.0024017255032474034,
        -0.0055708171257031926,
        0.012489698116966155,
        -0.027005289689862065,
        0.056110473057510684,
        -0.11152102025594358,
        0.21080636426942343,
    ];
    let horner = |c: &[f64], t: f64| c.iter().fold(0.0f64, |acc, &k| acc * t + k);
    if x.is_nan() {
        return x;
    }
    let xd = x as f64;
    let a = xd.abs();
    let r = if a < 1.0 {
        xd * horner(&P, xd * xd)
    } else if a < 4.0 {
        let s = (a - 2.5) / 1.5;
        (1.0 - (-a * a).exp() * horner(&Q, s)).copysign(xd)
    } else {
        1.0f64.copysign(xd)
    };
    r as f32
}

#[inline]
pub fn unary_f32(u: UnaryOp, x: f32) -> f32 {
    match u {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => exp(x),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => rsqrt(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Erf => erf(x),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        // Not is bool-only (typeck); NaN keeps a mistake visible instead of panicking.
        UnaryOp::Not => f32::NAN,
    }
}

/// Float binary ops; `None` for the bool-only ops.
#[inline]
pub fn binary_f32(b: BinaryOp, x: f32, y: f32) -> Option<f32> {
    Some(match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        // fminf / fmaxf: a NaN operand is ignored.
        BinaryOp::Min => x.min(y),
        BinaryOp::Max => x.max(y),
        BinaryOp::Pow => x.powf(y),
        BinaryOp::And | BinaryOp::Or => return None,
    })
}

/// i32 binary ops: wrapping add / sub / mul, see [`div_i32`]; `None` for pow and bool ops.
#[inline]
pub fn binary_i32(b: BinaryOp, x: i32, y: i32) -> Option<i32> {
    Some(match b {
        BinaryOp::Add => x.wrapping_add(y),
        BinaryOp::Sub => x.wrapping_sub(y),
        BinaryOp::Mul => x.wrapping_mul(y),
        BinaryOp::Div => div_i32(x, y),
        BinaryOp::Min => x.min(y),
        BinaryOp::Max => x.max(y),
        BinaryOp::Pow | BinaryOp::And | BinaryOp::Or => return None,
    })
}

#[inline]
pub fn cmp_ord<T: PartialOrd>(c: CmpOp, x: T, y: T) -> bool {
    match c {
        CmpOp::Lt => x < y,
        CmpOp::Le => x <= y,
        CmpOp::Gt => x > y,
        CmpOp::Ge => x >= y,
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
    }
}

// ---- scalar (Uniform) evaluation ----------------------------------------------------------

/// A unary op on a scalar; `None` when the dtype does not fit the op (typeck rejects those).
pub fn unary(u: UnaryOp, a: CpuScalar) -> Option<CpuScalar> {
    Some(match (u, a) {
        (UnaryOp::Not, CpuScalar::Bool(b)) => CpuScalar::Bool(!b),
        (UnaryOp::Neg, CpuScalar::I32(x)) => CpuScalar::I32(x.wrapping_neg()),
        (UnaryOp::Abs, CpuScalar::I32(x)) => CpuScalar::I32(x.wrapping_abs()),
        (UnaryOp::Not, _) | (_, CpuScalar::Bool(_)) | (_, CpuScalar::I32(_)) => return None,
        (u, CpuScalar::F32(x)) => CpuScalar::F32(unary_f32(u, x)),
    })
}

pub fn binary(b: BinaryOp, x: CpuScalar, y: CpuScalar) -> Option<CpuScalar> {
    Some(match (x, y) {
        (CpuScalar::F32(x), CpuScalar::F32(y)) => CpuScalar::F32(binary_f32(b, x, y)?),
        (CpuScalar::I32(x), CpuScalar::I32(y)) => CpuScalar::I32(binary_i32(b, x, y)?),
        (CpuScalar::Bool(x), CpuScalar::Bool(y)) => match b {
            BinaryOp::And => CpuScalar::Bool(x && y),
            BinaryOp::Or => CpuScalar::Bool(x || y),
            _ => return None,
        },
        _ => return None,
    })
}

pub fn cmp(c: CmpOp, x: CpuScalar, y: CpuScalar) -> Option<bool> {
    Some(match (x, y) {
        (CpuScalar::F32(x), CpuScalar::F32(y)) => cmp_ord(c, x, y),
        (CpuScalar::I32(x), CpuScalar::I32(y)) => cmp_ord(c, x, y),
        (CpuScalar::Bool(x), CpuScalar::Bool(y)) => cmp_ord(c, x, y),
        _ => return None,
    })
}

pub fn select(c: CpuScalar, a: CpuScalar, b: CpuScalar) -> Option<CpuScalar> {
    match c {
        CpuScalar::Bool(c) => Some(if c { a } else { b }),
        _ => None,
    }
}

/// A cast between dtypes (`from` is the operand's dtype, needed because halves travel as
/// `F32`). Integers and bools reach half dtypes through f32 (two roundings for |i| > 2^24,
/// the GPU does the same). `None` for a cast to bool (typeck rejects it).
pub fn cast(a: CpuScalar, from: DType, to: DType) -> Option<CpuScalar> {
    let as_f32 = match a {
        CpuScalar::F32(x) => x,
        CpuScalar::I32(x) => x as f32,
        CpuScalar::Bool(x) => x as u8 as f32,
    };
    Some(match to {
        DType::F32 => CpuScalar::F32(as_f32),
        DType::F16 if from == DType::F16 => CpuScalar::F32(as_f32),
        DType::BF16 if from == DType::BF16 => CpuScalar::F32(as_f32),
        DType::F8E4M3 if from == DType::F8E4M3 => CpuScalar::F32(as_f32),
        DType::I8 if from == DType::I8 => CpuScalar::F32(as_f32),
        DType::F16 => CpuScalar::F32(round_f16(as_f32)),
        DType::BF16 => CpuScalar::F32(round_bf16(as_f32)),
        DType::F8E4M3 => CpuScalar::F32(round_e4m3(as_f32)),
        DType::I8 => CpuScalar::F32(round_i8(as_f32)),
        DType::I32 => CpuScalar::I32(match a {
            CpuScalar::F32(x) => f32_to_i32(x),
            CpuScalar::I32(x) => x,
            CpuScalar::Bool(x) => x as i32,
        }),
        DType::Bool => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf from the all-positive series `2/sqrt(pi) e^(-x^2) sum 2^n x^(2n+1) / (2n+1)!!`
    /// in f64: no cancellation, so it is accurate far past where f32 erf reaches 1.
    fn erf_series(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-20 * sum.abs() {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        sum * (-x * x).exp() * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_one_ulp_of_the_series() {
        let mut worst = 0.0f64;
        let mut x = -5.0f32;
        while x <= 5.0 {
            let want = erf_series(x as f64);
            let got = erf(x) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(1e-30));
            x += 0.000723;
        }
        assert!(worst < 1e-7, "worst relative error {worst}");
        for tiny in [1e-20f32, -3e-8, 1e-38, 2e-3] {
            let want = erf_series(tiny as f64);
            assert!(((erf(tiny) as f64) - want).abs() / want.abs() < 1e-7, "erf({tiny})");
        }
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(f32::NAN).is_nan());
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn casts_round_to_nearest_even_and_saturate() {
        // 1 + 2^-11 is a tie between 1 and 1 + 2^-10 in f16: ties go to the even one (1.0)
        let tie = 1.0 + 2f32.powi(-11);
        assert_eq!(cast(CpuScalar::F32(tie), DType::F32, DType::F16), Some(CpuScalar::F32(1.0)));
        // 1 + 2^-8 ties between 1 and 1 + 2^-7 in bf16
        let tie = 1.0 + 2f32.powi(-8);
        assert_eq!(cast(CpuScalar::F32(tie), DType::F32, DType::BF16), Some(CpuScalar::F32(1.0)));
        assert_eq!(cast(CpuScalar::F32(-2.7), DType::F32, DType::I32), Some(CpuScalar::I32(-2)));
        assert_eq!(cast(CpuScalar::F32(1e20), DType::F32, DType::I32), Some(CpuScalar::I32(i32::MAX)));
        assert_eq!(cast(CpuScalar::F32(f32::NAN), DType::F32, DType::I32), Some(CpuScalar::I32(0)));
        assert_eq!(cast(CpuScalar::Bool(true), DType::Bool, DType::F32), Some(CpuScalar::F32(1.0)));
        assert_eq!(cast(CpuScalar::I32(7), DType::I32, DType::Bool), None);
    }

    #[test]
    fn integer_ops_never_trap() {
        assert_eq!(binary_i32(BinaryOp::Div, 7, 0), Some(0));
        assert_eq!(binary_i32(BinaryOp::Div, i32::MIN, -1), Some(i32::MIN));
        assert_eq!(binary_i32(BinaryOp::Div, -7, 2), Some(-3));
        assert_eq!(binary_i32(BinaryOp::Add, i32::MAX, 1), Some(i32::MIN));
        assert_eq!(unary(UnaryOp::Abs, CpuScalar::I32(i32::MIN)), Some(CpuScalar::I32(i32::MIN)));
    }
}
