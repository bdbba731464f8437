//! Rank order and the top-k / top-p / min-p truncation (steps 5 and 6 of the pipeline in
//! [`super`]).
//!
//! Invariants:
//! - The rank order is the order of [`rank_key`] (larger first): logit descending, ties by
//!   lower id. Weights are non-increasing along it (`exp_nonpos` and the temperature scaling are
//!   monotone), so each filter keeps a *prefix*, and so does their intersection. A prefix is
//!   described by its last member ([`Kept::UpTo`]) and tested by comparison.
//! - The top token (weight exactly 1) always survives: `k >= 1`, a top-p prefix reaches past
//!   it (the target is positive), and `1 >= min_p`.
//! - [`Selection::total`] is the exact quantized weight of [`Selection::kept`]: each filter
//!   knows the mass of its own prefix, and the narrowest prefix is the intersection.
//! - Probability mass is the integer sum of [`quantize`]d weights, so every partial sum here
//!   equals the spec's rank-order running sum exactly, whatever order it was added in.
//!
//! Cost is O(V) per filter with no sort of the vocabulary: top-k is one `select_nth_unstable`
//! over integer keys; min-p is one pass; top-p histograms the survivors' mass into buckets of
//! tempered log-weight (monotone in rank), finds the bucket where the running mass crosses the
//! target, and sorts only that bucket's members.

use super::math::{key_id, quantize, rank_key, total_mass};

/// Number of top-p buckets.
const BUCKETS: usize = 4096;
/// Tempered log-weight range `(max - l) / T` spread over the buckets; tokens further down all
/// share the last bucket. `e^-32 < 2^-40`, so that bucket holds no quantized mass and the
/// crossing (which needs mass) never lands in it.
const BUCKET_SPAN: f32 = 32.0;

/// The kept set: a prefix of the rank order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kept {
    /// Every token.
    All,
    /// Every token ranked at or before this one (the last kept token).
    UpTo { logit: f32, id: u32 },
}

impl Kept {
    /// Whether token `id` with penalised logit `logit` is in the set. Same answer as comparing
    /// rank keys, but with plain float/int comparisons in the hot loops.
    #[inline]
    pub(crate) fn contains(self, logit: f32, id: u32) -> bool {
        match self {
            Kept::All => true,
            Kept::UpTo { logit: last, id: last_id } => logit > last || (logit == last && id <= last_id),
        }
    }

    fn up_to(logits: &[f32], key: u64) -> Self {
        let id = key_id(key);
        // Keys always come from `logits`; the fallback only avoids a panic path.
        logits.get(id as usize).map_or(Kept::All, |&logit| Kept::UpTo { logit, id })
    }
}

/// The truncation result: the kept prefix and its total quantized weight (which the draw needs,
/// and which each filter knows for free, saving a pass over the vocabulary).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Selection {
    pub kept: Kept,
    pub total: u64,
}

/// A filter's prefix: the key of its last member and the prefix's quantized weight. The
/// intersection of prefixes is the one with the largest last key.
#[derive(Debug, Clone, Copy)]
struct Prefix {
    last: u64,
    total: u64,
}

impl Prefix {
    fn narrower(self, other: Prefix) -> Prefix {
        if other.last > self.last {
            other
        } else {
            self
        }
    }
}

/// Truncation settings, already validated; `top_k == 0` means off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Truncation {
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
}

/// Reusable buffers, so truncation allocates nothing once warmed up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scratch {
    keys: Vec<u64>,
    buckets: Vec<u64>,
    critical: Vec<u64>,
}

/// The candidates top-p works on: all tokens, or the top-k survivors' keys.
#[derive(Clone, Copy)]
enum Survivors<'a> {
    All,
    Top(&'a [u64]),
}

impl Survivors<'_> {
    /// Calls `f(id, logit, weight)` for every survivor.
    fn for_each(self, logits: &[f32], weights: &[f32], mut f: impl FnMut(u32, f32, f32)) {
        match self {
            Survivors::All => {
                for (i, (&l, &w)) in logits.iter().zip(weights).enumerate() {
                    f(i as u32, l, w);
                }
            }
            Survivors::Top(keys) => {
                for &k in keys {
                    let i = key_id(k);
                    f(i, logits[i as usize], weights[i as usize]);
                }
            }
        }
    }
}

/// Applies top-k, then top-p over the renormalised top-k survivors, then min-p, and returns
/// the surviving prefix with its mass. `weights` are the tempered weights for `max` and
/// `temperature`.
pub(crate) fn select(
    logits: &[f32],
    weights: &[f32],
    max: f32,
    temperature: f32,
    t: Truncation,
    scratch: &mut Scratch,
) -> Selection {
    let vocab = logits.len();
    let k_on = t.top_k > 0 && t.top_k < vocab;
    let p_on = t.top_p < 1.0;
    let min_on = t.min_p > 0.0;
    let everything = || Selection { kept: Kept::All, total: total_mass(weights.iter().copied()) };
    if !k_on && !p_on && !min_on {
        return everything();
    }
    let Scratch { keys, buckets, critical } = scratch;
    let mut prefix: Option<Prefix> = None;
    let survivors = if k_on {
        keys.clear();
        keys.extend(logits.iter().enumerate().map(|(i, &l)| rank_key(l, i as u32)));
        // Descending: the k best keys end up in keys[..k], the k-th best at k-1.
        keys.select_nth_unstable_by(t.top_k - 1, |a, b| b.cmp(a));
        let top = &keys[..t.top_k];
        let total = total_mass(top.iter().map(|&k| weights[key_id(k) as usize]));
        prefix = Some(Prefix { last: top[t.top_k - 1], total });
        Survivors::Top(top)
    } else {
        Survivors::All
    };
    if p_on {
        let scale = BUCKETS as f32 / BUCKET_SPAN / temperature;
        let p = top_p_prefix(logits, weights, max, scale, survivors, t.top_p, buckets, critical);
        prefix = Some(prefix.map_or(p, |q| q.narrower(p)));
    }
    if min_on {
        let p = min_p_prefix(logits, weights, t.min_p);
        prefix = Some(prefix.map_or(p, |q| q.narrower(p)));
    }
    match prefix {
        Some(p) => Selection { kept: Kept::up_to(logits, p.last), total: p.total },
        // Unreachable: some filter was on. Keeping everything is the safe answer.
        None => everything(),
    }
}

/// The shortest rank-order prefix of `survivors` whose quantized mass `m` satisfies
/// `m as f64 >= top_p as f64 * total as f64`.
#[allow(clippy::too_many_arguments)] // one call site; bundling would only rename the buffers
fn top_p_prefix(
    logits: &[f32],
    weights: &[f32],
    max: f32,
    scale: f32,
    survivors: Survivors<'_>,
    top_p: f32,
    buckets: &mut Vec<u64>,
    critical: &mut Vec<u64>,
) -> Prefix {
    // Monotone in rank: a lower bucket always holds strictly larger logits.
    let bucket = |l: f32| {
        let x = (max - l) * scale;
        if x < (BUCKETS - 1) as f32 {
            x as usize
        } else {
            BUCKETS - 1
        }
    };
    buckets.clear();
    buckets.resize(BUCKETS, 0);
    let mut total = 0u64;
    survivors.for_each(logits, weights, |_, l, w| {
        let q = quantize(w);
        buckets[bucket(l)] += q;
        total += q;
    });
    let target = f64::from(top_p) * total as f64;
    // The crossing bucket exists: the full sum `total` satisfies the test since top_p <= 1.
    let mut before = 0u64;
    let mut crossing = BUCKETS - 1;
    for (b, &mass) in buckets.iter().enumerate() {
        if (before + mass) as f64 >= target {
            crossing = b;
            break;
        }
        before += mass;
    }
    critical.clear();
    survivors.for_each(logits, weights, |i, l, _| {
        if bucket(l) == crossing {
            critical.push(rank_key(l, i));
        }
    });
    critical.sort_unstable_by(|a, b| b.cmp(a));
    let mut cum = before;
    for &key in critical.iter() {
        cum += quantize(weights[key_id(key) as usize]);
        if cum as f64 >= target {
            return Prefix { last: key, total: cum };
        }
    }
    // Unreachable by the argument above; keeping the whole bucket is the safe answer.
    Prefix { last: critical.last().copied().unwrap_or(0), total: cum }
}

/// The tokens with `weight >= min_p` (the top token always qualifies).
fn min_p_prefix(logits: &[f32], weights: &[f32], min_p: f32) -> Prefix {
    let mut last = u64::MAX;
    let mut total = 0u64;
    for (i, (&l, &w)) in logits.iter().zip(weights).enumerate() {
        if w >= min_p {
            last = last.min(rank_key(l, i as u32));
            total = total.wrapping_add(quantize(w)); // bounded like `total_mass`
        }
    }
    Prefix { last, total }
}

/// Ids of the first `n` tokens of the rank order, best first. Keeps a sorted list of at most
/// `n` keys (`n <= 20` in practice), so most tokens cost one comparison.
pub(crate) fn top_n<'a>(logits: &[f32], n: usize, best: &'a mut Vec<u64>) -> impl Iterator<Item = u32> + 'a {
    best.clear();
    if n > 0 {
        for (i, &l) in logits.iter().enumerate() {
            let key = rank_key(l, i as u32);
            if best.len() < n || key > best[best.len() - 1] {
                // `best` is descending; insert after every larger key.
                let at = best.partition_point(|&b| b > key);
                best.insert(at, key);
                best.truncate(n);
            }
        }
    }
    best.iter().map(|&k| key_id(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::math::exp_nonpos;
    use crate::sample::rng;

    fn set(logits: &[f32], k: Kept) -> Vec<u32> {
        (0..logits.len() as u32).filter(|&i| k.contains(logits[i as usize], i)).collect()
    }

    fn kept_total(logits: &[f32], weights: &[f32], k: Kept) -> u64 {
        set(logits, k).iter().map(|&i| quantize(weights[i as usize])).sum()
    }

    /// Runs truncation on logits whose weights are computed as the sampler would.
    fn run_t(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> Vec<u32> {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f32> = logits.iter().map(|&l| exp_nonpos((l - max) / temperature)).collect();
        let mut s = Scratch::default();
        let sel = select(logits, &w, max, temperature, Truncation { top_k, top_p, min_p }, &mut s);
        assert_eq!(sel.total, kept_total(logits, &w, sel.kept), "total must match the kept set");
        set(logits, sel.kept)
    }

    fn run(logits: &[f32], top_k: usize, top_p: f32, min_p: f32) -> Vec<u32> {
        run_t(logits, 1.0, top_k, top_p, min_p)
    }

    /// Logits whose weights are 1, ~1/2, ~1/4, ~1/4 at T = 1 (probabilities ~1/2, 1/4, 1/8,
    /// 1/8). Not exact, so the tests using them keep away from the cumulative boundaries.
    fn halves() -> [f32; 4] {
        let ln2 = std::f32::consts::LN_2;
        [0.0, -ln2, -2.0 * ln2, -2.0 * ln2]
    }

    #[test]
    fn halves_have_the_intended_masses() {
        let q: Vec<u64> = halves().iter().map(|&l| quantize(exp_nonpos(l))).collect();
        // Within 2^20 units (relative 1e-6) of 2^40 * (1, 1/2, 1/4, 1/4).
        let want = [1u64 << 40, 1 << 39, 1 << 38, 1 << 38];
        for (a, b) in q.iter().zip(want) {
            assert!(a.abs_diff(b) < 1 << 20, "{a} vs {b}");
        }
    }

    #[test]
    fn nothing_on_keeps_all() {
        let l = halves();
        let w = [1.0, 0.5, 0.25, 0.25];
        let mut s = Scratch::default();
        let t = Truncation { top_k: 0, top_p: 1.0, min_p: 0.0 };
        let sel = select(&l, &w, 0.0, 1.0, t, &mut s);
        assert_eq!(sel, Selection { kept: Kept::All, total: (1 << 40) + (1 << 39) + (1 << 39) });
        assert_eq!(run(&l, 4, 1.0, 0.0), vec![0, 1, 2, 3]);
        assert_eq!(run(&l, 0, 1.0, 0.2), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_k_keeps_exactly_k_with_lowest_ids_on_ties() {
        assert_eq!(run(&[1.0, 3.0, 2.0, 0.0], 2, 1.0, 0.0), vec![1, 2]);
        let l = [1.0, 2.0, 2.0, 2.0, 0.0];
        assert_eq!(run(&l, 2, 1.0, 0.0), vec![1, 2]);
        assert_eq!(run(&l, 1, 1.0, 0.0), vec![1]);
        assert_eq!(run(&l, 4, 1.0, 0.0), vec![0, 1, 2, 3]);
        assert_eq!(run(&l, 5, 1.0, 0.0), vec![0, 1, 2, 3, 4]);
        assert_eq!(run(&l, 50, 1.0, 0.0), vec![0, 1, 2, 3, 4]);
        // -0.0 and 0.0 tie: the lower id wins.
        assert_eq!(run(&[-1.0, 0.0, -0.0], 1, 1.0, 0.0), vec![1]);
        assert_eq!(run(&[-1.0, -0.0, 0.0], 1, 1.0, 0.0), vec![1]);
    }

    #[test]
    fn top_p_stops_at_an_exact_cumulative_boundary() {
        // Four equal logits: each has exactly 1/4 of the mass (2^40 units each).
        let l = [0.0; 4];
        assert_eq!(run(&l, 0, 0.5, 0.0), vec![0, 1]);
        assert_eq!(run(&l, 0, 0.75, 0.0), vec![0, 1, 2]);
        assert_eq!(run(&l, 0, 0.25, 0.0), vec![0]);
        assert_eq!(run(&l, 0, 0.500_001, 0.0), vec![0, 1, 2]);
        assert_eq!(run(&l, 0, 0.499_999, 0.0), vec![0, 1]);
        // Masses ~1/2, 1/4, 1/8, 1/8 (ties at the end broken by id).
        let l = halves();
        assert_eq!(run(&l, 0, 0.49, 0.0), vec![0]);
        assert_eq!(run(&l, 0, 0.51, 0.0), vec![0, 1]);
        assert_eq!(run(&l, 0, 0.76, 0.0), vec![0, 1, 2]);
        assert_eq!(run(&l, 0, 0.74, 0.0), vec![0, 1]);
        assert_eq!(run(&l, 0, 0.88, 0.0), vec![0, 1, 2, 3]);
        assert_eq!(run(&l, 0, f32::MIN_POSITIVE, 0.0), vec![0]);
    }

    #[test]
    fn top_p_renormalises_over_top_k_survivors() {
        let l = halves();
        // Without top-k: 0.857 of the whole needs three tokens (0.75 < 0.857 <= 0.875).
        assert_eq!(run(&l, 0, 0.857, 0.0), vec![0, 1, 2]);
        // With k = 3 the mass is 1.75/2: 0.857 * 1.75 = 1.49975 is reached after two (1.5).
        assert_eq!(run(&l, 3, 0.857, 0.0), vec![0, 1]);
    }

    #[test]
    fn top_p_depends_on_temperature() {
        // At T = 1, p = (0.576, 0.212, 0.212): 0.7 needs two. At T = 0.25 the top token has
        // 0.964 of the mass alone.
        let l = [1.0, 0.0, 0.0];
        assert_eq!(run_t(&l, 1.0, 0, 0.7, 0.0), vec![0, 1]);
        assert_eq!(run_t(&l, 0.25, 0, 0.7, 0.0), vec![0]);
        // At T = 100 the three are nearly equal: 0.7 needs all three.
        assert_eq!(run_t(&l, 100.0, 0, 0.7, 0.0), vec![0, 1, 2]);
    }

    #[test]
    fn min_p_is_relative_to_the_top_probability_and_inclusive() {
        let l = [0.0, 0.0, -1.0, -2.0];
        // weights 1, 1, e^-1 = 0.3679, e^-2 = 0.1353
        assert_eq!(run(&l, 0, 1.0, 0.5), vec![0, 1]);
        assert_eq!(run(&l, 0, 1.0, 0.36), vec![0, 1, 2]);
        assert_eq!(run(&l, 0, 1.0, 0.14), vec![0, 1, 2]);
        assert_eq!(run(&l, 0, 1.0, 0.13), vec![0, 1, 2, 3]);
        // Ties with the maximum survive min_p = 1.
        assert_eq!(run(&l, 0, 1.0, 1.0), vec![0, 1]);
        // Inclusive: a weight exactly equal to min_p is kept.
        let w2 = exp_nonpos(-2.0);
        assert_eq!(run(&l, 0, 1.0, w2), vec![0, 1, 2, 3]);
        // Relative, not absolute: scaling all logits by a constant shift changes nothing.
        assert_eq!(run(&[10.0, 10.0, 9.0, 8.0], 0, 1.0, 0.36), vec![0, 1, 2]);
    }

    #[test]
    fn filters_intersect() {
        let l = halves();
        // top-p alone keeps three, min-p alone keeps two: min-p wins.
        assert_eq!(run(&l, 0, 0.8, 0.5), vec![0, 1]);
        // top-k 1 beats a permissive top-p and min-p.
        assert_eq!(run(&l, 1, 0.99, 0.1), vec![0]);
        // min-p looser than top-k: top-k wins.
        assert_eq!(run(&l, 2, 1.0, 0.1), vec![0, 1]);
    }

    #[test]
    fn masked_tokens_rank_last() {
        let l = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        assert_eq!(run(&l, 0, 0.99, 0.0), vec![1, 3]);
        assert_eq!(run(&l, 3, 1.0, 0.0), vec![0, 1, 3]);
        assert_eq!(run(&l, 0, 1.0, 1e-30), vec![1, 3]);
    }

    /// Full-sort reference of the same rules on vocabularies large enough to spread over many
    /// buckets, with heavy ties (logits from a small set of levels) and continuous values.
    #[test]
    fn agrees_with_full_sort_reference() {
        let vocab = 3000usize;
        for case in 0..120u64 {
            let levels = 3 + (case % 20);
            let logits: Vec<f32> = (0..vocab as u64)
                .map(|i| {
                    let b = rng::bits(case, i);
                    if case % 2 == 0 {
                        (b % levels) as f32 * 0.37
                    } else {
                        (b >> 40) as f32 / (1u64 << 24) as f32 * 30.0 - 15.0
                    }
                })
                .collect();
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let temp = [0.05, 0.5, 1.0, 3.0, 50.0][(case % 5) as usize];
            let w: Vec<f32> = logits.iter().map(|&l| exp_nonpos((l - max) / temp)).collect();
            let top_k = [0, 1, 7, 500, 2999, 5000][(case % 6) as usize];
            let top_p = [1.0, 0.3, 0.9, 0.999][(case % 4) as usize];
            let min_p = [0.0, 0.05, 0.5][(case % 3) as usize];

            let mut ranked: Vec<u32> = (0..vocab as u32).collect();
            ranked.sort_by_key(|&i| std::cmp::Reverse(rank_key(logits[i as usize], i)));
            let n_k = if top_k == 0 { vocab } else { top_k.min(vocab) };
            let mut n = n_k;
            if top_p < 1.0 {
                let q = |i: u32| quantize(w[i as usize]);
                let total: u64 = ranked[..n_k].iter().map(|&i| q(i)).sum();
                let target = f64::from(top_p) * total as f64;
                let mut cum = 0u64;
                for (j, &i) in ranked[..n_k].iter().enumerate() {
                    cum += q(i);
                    if cum as f64 >= target {
                        n = j + 1;
                        break;
                    }
                }
            }
            n = n.min(ranked.iter().filter(|&&i| w[i as usize] >= min_p).count());
            let mut want = ranked[..n].to_vec();
            want.sort_unstable();
            let got = run_t(&logits, temp, top_k, top_p, min_p);
            assert_eq!(got, want, "case {case}");
        }
    }

    #[test]
    fn top_n_is_sorted_by_rank() {
        let l = [0.5, 2.0, 2.0, -1.0, 3.0];
        let mut best = Vec::new();
        assert_eq!(top_n(&l, 3, &mut best).collect::<Vec<_>>(), vec![4, 1, 2]);
        assert_eq!(top_n(&l, 9, &mut best).collect::<Vec<_>>(), vec![4, 1, 2, 0, 3]);
        assert_eq!(top_n(&l, 0, &mut best).count(), 0);
        // Ascending logits: every token displaces the previous best.
        let asc: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(top_n(&asc, 3, &mut best).collect::<Vec<_>>(), vec![99, 98, 97]);
    }

    #[test]
    fn kept_up_to_matches_rank_keys() {
        let l = [0.0, -0.0, 1.0, 0.0, -1.0, f32::NEG_INFINITY];
        for cut in 0..l.len() as u32 {
            let k = Kept::up_to(&l, rank_key(l[cut as usize], cut));
            for i in 0..l.len() as u32 {
                let by_key = rank_key(l[i as usize], i) >= rank_key(l[cut as usize], cut);
                assert_eq!(k.contains(l[i as usize], i), by_key, "cut {cut} token {i}");
            }
        }
    }
}
