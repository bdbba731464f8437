//! The final random choice (step 7 of the pipeline in [`super`]): inverse CDF over the kept
//! set's quantized weights, walking tokens in ascending id order.
//!
//! With `Q` the kept set's total quantized weight and `r = rng::below(seed, n, Q)` (so
//! `0 <= r < Q`), the token is the first kept one, by id, whose running quantized sum exceeds
//! `r`. Everything is integer arithmetic, so any implementation that agrees on the weights
//! agrees on the token. Tokens whose weight quantizes to 0 (masked, or below `2^-40` of the
//! top) can never be chosen: their running sum equals the previous one, which was `<= r`.
//!
//! Invariant on input: the kept set holds the top token, whose quantized weight is `2^40`, so
//! `Q > 0` and the walk always ends on a kept token. The walk first skips whole blocks by their
//! (exact, vectorisable) sums, then scans one block token by token.

use super::math::quantize;
use super::rng;
use super::truncate::{Kept, Selection};

/// Tokens per block of the walk: large enough that block sums vectorise, small enough that the
/// final token-by-token scan is short.
const BLOCK: usize = 256;

/// The token for draw `n` of the sequence seeded with `seed`. `fallback` (the argmax) is
/// returned only if the invariant were broken, instead of panicking.
pub(crate) fn draw(logits: &[f32], weights: &[f32], sel: Selection, seed: u64, n: u64, fallback: u32) -> u32 {
    let r = rng::below(seed, n, sel.total);
    walk(logits, weights, sel.kept, r).unwrap_or(fallback)
}

/// First kept token, by id, whose running quantized weight exceeds `r`.
fn walk(logits: &[f32], weights: &[f32], kept: Kept, r: u64) -> Option<u32> {
    let mut cum = 0u64;
    for (b, (lb, wb)) in logits.chunks(BLOCK).zip(weights.chunks(BLOCK)).enumerate() {
        let base = (b * BLOCK) as u32;
        let kept_q = |j: usize| {
            if kept.contains(lb[j], base + j as u32) {
                quantize(wb[j])
            } else {
                0
            }
        };
        // Bounded like `math::total_mass`, so wrapping adds cannot wrap.
        let block = (0..lb.len()).map(kept_q).fold(0u64, u64::wrapping_add);
        if cum + block <= r {
            cum += block;
            continue;
        }
        for j in 0..lb.len() {
            cum += kept_q(j);
            if cum > r {
                return Some(base + j as u32);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: u64 = 1 << 38; // quantized weight 1/4

    #[test]
    fn inverse_cdf_in_id_order() {
        // Quantized weights 1/4, 1, 1/2, 1/4 (in units of U: 1, 4, 2, 1; total 8U).
        let l = [0.0, 2.0, 1.0, 0.0];
        let w = [0.25, 1.0, 0.5, 0.25];
        let at = |r: u64| walk(&l, &w, Kept::All, r);
        assert_eq!(at(0), Some(0));
        assert_eq!(at(U - 1), Some(0));
        assert_eq!(at(U), Some(1)); // the running sum must strictly exceed r
        assert_eq!(at(5 * U - 1), Some(1));
        assert_eq!(at(5 * U), Some(2));
        assert_eq!(at(7 * U), Some(3));
        assert_eq!(at(8 * U - 1), Some(3));
        assert_eq!(at(8 * U), None); // r is always below the total
    }

    #[test]
    fn only_kept_positive_weight_tokens() {
        let l = [0.0, 2.0, 1.0, f32::NEG_INFINITY, 1.0];
        let w = [0.25, 1.0, 0.5, 0.0, 0.5];
        // Keep tokens 1 and 2 (logit >= 1, and id <= 2 among logit 1).
        let kept = Kept::UpTo { logit: 1.0, id: 2 };
        assert_eq!(walk(&l, &w, kept, 0), Some(1));
        assert_eq!(walk(&l, &w, kept, 4 * U - 1), Some(1));
        assert_eq!(walk(&l, &w, kept, 4 * U), Some(2));
        assert_eq!(walk(&l, &w, kept, 6 * U - 1), Some(2));
        // The masked token 3 is never chosen even at the very end of the range.
        assert_eq!(walk(&l, &w, Kept::All, 9 * U - 1), Some(4));
        let sel = Selection { kept, total: 6 * U };
        for n in 0..200 {
            let t = draw(&l, &w, sel, 5, n, 1);
            assert!(t == 1 || t == 2);
        }
    }

    #[test]
    fn block_skipping_equals_a_plain_walk() {
        // 1000 tokens over four blocks; weights vary, some masked, some not kept.
        let l: Vec<f32> = (0..1000).map(|i| ((i * 37) % 11) as f32).collect();
        let w: Vec<f32> = (0..1000).map(|i| if i % 13 == 0 { 0.0 } else { ((i % 7) + 1) as f32 / 8.0 }).collect();
        let kept = Kept::UpTo { logit: 4.0, id: 500 };
        let plain = |r: u64| {
            let mut cum = 0u64;
            (0..1000u32).find(|&i| {
                if kept.contains(l[i as usize], i) {
                    cum += quantize(w[i as usize]);
                }
                cum > r
            })
        };
        let total: u64 =
            (0..1000u32).filter(|&i| kept.contains(l[i as usize], i)).map(|i| quantize(w[i as usize])).sum();
        for step in 0..2000u64 {
            let r = step * (total / 2000) + step % 7;
            assert_eq!(walk(&l, &w, kept, r), plain(r), "r {r}");
        }
        assert_eq!(walk(&l, &w, kept, total - 1), plain(total - 1));
        assert_eq!(walk(&l, &w, kept, total), None);
    }
}
