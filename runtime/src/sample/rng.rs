//! The per-sequence random source: a counter-based generator built on SplitMix64's mixing
//! function (Steele, Lea, Flood 2014; the constants are the published ones).
//!
//! Definition (all arithmetic wrapping on `u64`, `γ = 0x9E3779B97F4A7C15`):
//!
//! ```text
//! mix(z)        = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)
//! key(seed)     = mix(seed + γ)                  // the first SplitMix64 output of `seed`
//! bits(seed, n) = mix(key(seed) + (n + 1) * γ)   // output n+1 of the SplitMix64 stream at `key`
//! below(s, n, m) = ((bits(s, n) >> 11) * m) >> 53  // in [0, m) for m >= 1; 128-bit product
//! ```
//!
//! `below` scales a 53-bit uniform integer onto `[0, m)` with integer arithmetic only (no
//! float rounding to agree on); the sampler uses it to pick a point in the kept set's total
//! quantized mass.
//!
//! Why counter-based rather than a stateful generator such as `rand::rngs::StdRng`: draw `n` of
//! a sequence is a pure function of `(seed, n)`, so (a) results cannot depend on batch
//! composition or on the order in which sequences are sampled, (b) a GPU kernel can compute the
//! very same number from two integers with a handful of 64-bit multiplies, and (c) a preempted
//! sequence can resume from its step count with no generator state to save. `StdRng` is
//! documented as not portable across rand versions, which would break replay. Hashing the seed
//! into `key` first keeps seeds that differ by a multiple of `γ` from giving shifted copies of
//! one stream.

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mixer.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for draw `n` of the sequence seeded with `seed`.
#[inline]
pub fn bits(seed: u64, n: u64) -> u64 {
    let key = mix(seed.wrapping_add(GAMMA));
    mix(key.wrapping_add(n.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// An integer in `[0, bound)` for draw `n` of the sequence seeded with `seed` (`0` when
/// `bound` is 0). Each value has probability within `2^-53` relative of `1 / bound`.
#[inline]
pub fn below(seed: u64, n: u64, bound: u64) -> u64 {
    let u53 = u128::from(bits(seed, n) >> 11);
    ((u53 * u128::from(bound)) >> 53) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first three outputs of reference SplitMix64 seeded with 1234567 (values published
    /// with the algorithm's reference implementation and widely reproduced).
    #[test]
    fn matches_reference_splitmix64_stream() {
        let seed = 1_234_567u64;
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(GAMMA);
            mix(state)
        };
        assert_eq!(next(), 6_457_827_717_110_365_317);
        assert_eq!(next(), 3_203_168_211_198_807_973);
        assert_eq!(next(), 9_817_491_932_198_370_423);
        // bits() is that stream re-keyed: output n+1 of the stream whose seed is key(seed).
        let key = mix(seed.wrapping_add(GAMMA));
        assert_eq!(bits(seed, 0), mix(key.wrapping_add(GAMMA)));
        assert_eq!(bits(seed, 1), mix(key.wrapping_add(GAMMA.wrapping_mul(2))));
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let n = 100_000u64;
        let mut buckets = [0u32; 10];
        for i in 0..n {
            let r = below(42, i, 10);
            buckets[r as usize] += 1;
        }
        for b in buckets {
            assert!((f64::from(b) - 10_000.0).abs() < 500.0, "bucket {b}");
        }
        for bound in [1u64, 2, 3, 1 << 40, u64::MAX] {
            for i in 0..1000 {
                assert!(below(9, i, bound) < bound);
            }
        }
        assert_eq!(below(9, 0, 0), 0);
    }

    #[test]
    fn pure_function_of_seed_and_counter() {
        assert_eq!(below(7, 3, 1000), below(7, 3, 1000));
        assert_ne!(bits(7, 3), bits(7, 4));
        assert_ne!(bits(7, 3), bits(8, 3));
        // Seeds one γ apart must not give a shifted copy of the same stream.
        assert_ne!(bits(0, 1), bits(GAMMA, 0));
    }
}
