//! The exact arithmetic building blocks of the sampling spec, public so that the GPU sampler
//! and the reference tests compute bit-for-bit the same values.
//!
//! - [`exp_nonpos`]: `e^x` for `x <= 0`, a fixed polynomial rather than the platform `expf`, so
//!   every implementation (glibc, CUDA, a test) gets identical weights, and so the hot loop over
//!   the vocabulary vectorises. Only IEEE-754 single-precision `+ - *` with round-to-nearest
//!   are used, in the order written (a port must not contract them into FMAs).
//! - [`quantize`]: a weight in `[0, 1]` as an integer number of `2^-40` units. All probability
//!   mass sums (top-p, the draw) are sums of these integers, which are exact in any order, so a
//!   parallel reduction, a bucketed search and a sequential walk agree exactly.
//! - [`rank_key`]: the rank order (logit descending, lower id first on ties, `-0.0 == 0.0`) as
//!   one `u64` where larger means earlier, so selections compare integers, not indirections.

/// Mass units per unit of weight: `2^40`. Weights below `2^-40` of the top token's quantize to
/// zero and can never be drawn (a probability below ~1e-12 of the most likely token's).
pub const WEIGHT_SCALE: f32 = (1u64 << 40) as f32;

/// Largest supported vocabulary: with each weight at most `2^40` units, the sum over
/// `MAX_VOCAB` tokens still fits in a `u64` with room to spare.
pub const MAX_VOCAB: usize = 1 << 23;

/// Below this input [`exp_nonpos`] returns 0; `e^-87` is ~1.6e-38, near the f32 normal limit.
pub const EXP_FLUSH_BELOW: f32 = -87.0;

pub const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n * LN2_HI` is exact for `|n| < 2^8` (Cody–Waite reduction).
pub const LN2_HI: f32 = 0.693_145_75;
pub const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding `1.5 * 2^23` rounds an f32 in `(-2^22, 2^22)` to the nearest integer (ties to even).
pub const ROUND_MAGIC: f32 = 12_582_912.0;
/// The Taylor coefficients `1/j!` of [`exp_nonpos`]'s polynomial, `j = 0..=7`, each an f32
/// division rounded once (the CUDA port embeds these very bits).
pub const EXP_COEFFS: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];

/// `e^x` for `x <= 0` (including `-inf`), within about 2 ulp of the true value, with
/// `exp_nonpos(0.0) == 1.0` exactly and `0.0` for `x < EXP_FLUSH_BELOW`.
///
/// Steps: `x = n ln2 + r` with `n = round(x log2 e)` and `|r| <= ln2 / 2`, `e^r` by the
/// degree-7 Taylor polynomial in Horner form, times `2^n` built from the exponent bits.
#[inline]
pub fn exp_nonpos(x: f32) -> f32 {
    // Clamp first so the arithmetic below stays in range; the flush is applied at the end as a
    // select, which keeps the loop that calls this branch-free and vectorisable.
    let xc = if x < EXP_FLUSH_BELOW { EXP_FLUSH_BELOW } else { x };
    let t = xc * LOG2_E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC; // integer-valued, in [-126, 0]
                             // Wrapping ops cannot wrap here (n is in [-126, 0]); they keep overflow checks in debug
                             // builds from blocking vectorisation.
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Horner from the highest coefficient: p = c6 + r c7, then c5 + r p, ..., c0 + r p.
    let c = EXP_COEFFS;
    let mut p = c[7];
    for j in (0..7).rev() {
        p = c[j] + r * p;
    }
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    let y = p * scale;
    if x < EXP_FLUSH_BELOW {
        0.0
    } else {
        y
    }
}

/// A weight in `[0, 1]` as `floor(w * 2^40)` (the scaling is exact; the cast truncates).
#[inline]
pub fn quantize(w: f32) -> u64 {
    (w * WEIGHT_SCALE) as u64
}

/// Exact sum of quantized weights. It cannot overflow (at most `MAX_VOCAB` terms of at most
/// `2^40`, below `2^63`); wrapping adds tell the compiler so, which lets it vectorise the loop
/// even in builds with overflow checks.
#[inline]
pub fn total_mass(weights: impl IntoIterator<Item = f32>) -> u64 {
    weights.into_iter().fold(0u64, |acc, w| acc.wrapping_add(quantize(w)))
}

/// Rank key: larger keys rank earlier. Logit descending, then id ascending; `-0.0` and `0.0`
/// are the same logit. Defined for finite logits and `-inf`.
#[inline]
pub fn rank_key(logit: f32, id: u32) -> u64 {
    // `+ 0.0` turns -0.0 into +0.0 (IEEE round-to-nearest), so the two compare equal as keys.
    let bits = (logit + 0.0).to_bits();
    // Map float order onto unsigned order: flip all bits of negatives, set the sign of others.
    let ordered = if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 };
    (u64::from(ordered) << 32) | u64::from(!id)
}

/// Token id stored in a [`rank_key`].
#[inline]
pub fn key_id(key: u64) -> u32 {
    !(key as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_exact_at_zero() {
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-0.0), 1.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(-87.5), 0.0);
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > EXP_FLUSH_BELOW {
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpos(x));
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_731;
        }
        // 2.5 ulp of f32 relative error, measured on ~119k points across the whole range.
        assert!(worst < 1.5e-7, "worst relative error {worst}");
    }

    /// The coefficient table is the nested literal polynomial of the spec's first version,
    /// bit for bit (a port embeds `EXP_COEFFS`, so they must be the spec's numbers).
    #[test]
    fn coefficient_table_is_the_literal_polynomial() {
        let nested = |r: f32| {
            1.0 + r
                * (1.0
                    + r * (0.5
                        + r * (1.0 / 6.0
                            + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))))
        };
        let table = |r: f32| {
            let mut p = EXP_COEFFS[7];
            for j in (0..7).rev() {
                p = EXP_COEFFS[j] + r * p;
            }
            p
        };
        let mut r = -0.35f32;
        while r < 0.35 {
            assert_eq!(nested(r).to_bits(), table(r).to_bits(), "r {r}");
            r += 0.000_37;
        }
    }

    #[test]
    fn exp_is_monotone() {
        let mut prev = exp_nonpos(0.0);
        let mut x = 0.0f32;
        for _ in 0..200_000 {
            x -= 0.000_43;
            let y = exp_nonpos(x);
            assert!(y <= prev, "not monotone at {x}");
            prev = y;
        }
    }

    #[test]
    fn quantize_is_floor_of_scaled_weight() {
        assert_eq!(quantize(1.0), 1 << 40);
        assert_eq!(quantize(0.5), 1 << 39);
        assert_eq!(quantize(0.0), 0);
        assert_eq!(quantize(2f32.powi(-40)), 1);
        assert_eq!(quantize(2f32.powi(-41)), 0);
    }

    #[test]
    fn rank_key_orders_like_the_spec() {
        let mut toks = [(1.0f32, 5u32), (2.0, 9), (2.0, 3), (-0.0, 4), (0.0, 2), (f32::NEG_INFINITY, 0), (-3.0, 1)];
        toks.sort_by_key(|&(l, i)| std::cmp::Reverse(rank_key(l, i)));
        let ids: Vec<u32> = toks.iter().map(|t| t.1).collect();
        assert_eq!(ids, vec![3, 9, 5, 2, 4, 1, 0]);
        assert_eq!(key_id(rank_key(-1.5, 77)), 77);
        assert!(rank_key(f32::MIN, 0) > rank_key(f32::NEG_INFINITY, 0));
        assert!(rank_key(f32::MAX, u32::MAX) > rank_key(1e30, 0));
    }
}
