//! Attention as `#[fused]` template instances: each fn is the paged attention template
//! (causal softmax of `q·kᵀ·scale` over the cache, times `v`) with its own score modifier —
//! the closure — spliced in, as FlexAttention's `score_mod` is. The modifier sees one scaled
//! score with the query's and key's positions and the query head; `neg_inf()` masks the key.
//!
//! The `*_ref` functions are the obviously-correct definitions (dense, f64) the template is
//! tested against; [`score_ref`] is each modifier written out by hand.

use kiln_fusion_macros::fused;

/// Plain causal attention (Llama, Mistral without a window, Qwen).
#[fused]
pub fn attn_causal(q: Query, kv: PagedKv, #[comptime] scale: f32) -> Query {
    attention(q, kv, scale, |score, _q_pos, _k_pos, _head| score)
}

/// Sliding-window attention (Mistral, Gemma-2 local layers): a query sees the `window` most
/// recent positions, itself included.
#[fused]
pub fn attn_sliding_window(q: Query, kv: PagedKv, #[comptime] scale: f32, #[comptime] window: i32) -> Query {
    attention(q, kv, scale, |score, q_pos, k_pos, _head| select(q_pos - k_pos < window, score, neg_inf()))
}

/// Logit soft-capping (Gemma-2): scores squashed into `(-cap, cap)` by `cap * tanh(s / cap)`.
#[fused]
pub fn attn_softcap(q: Query, kv: PagedKv, #[comptime] scale: f32, #[comptime] cap: f32) -> Query {
    attention(q, kv, scale, |score, _q_pos, _k_pos, _head| cap * tanh(score / cap))
}

/// Softcap and a sliding window together (Gemma 2's local layers).
#[fused]
pub fn attn_softcap_window(
    q: Query,
    kv: PagedKv,
    #[comptime] scale: f32,
    #[comptime] cap: f32,
    #[comptime] window: i32,
) -> Query {
    attention(q, kv, scale, |score, q_pos, k_pos, _head| {
        select(q_pos - k_pos < window, cap * tanh(score / cap), neg_inf())
    })
}

/// ALiBi (BLOOM, MPT): a linear penalty on the distance, slope `2^(-8 (h + 1) / n_heads)`
/// for head `h` (the published slopes for a power-of-two head count).
#[fused]
pub fn attn_alibi(q: Query, kv: PagedKv, #[comptime] scale: f32, #[comptime] n_heads: i32) -> Query {
    attention(q, kv, scale, |score, q_pos, k_pos, head| {
        let slope = pow(2.0, -8.0 * ((head + 1) as f32) / (n_heads as f32));
        score - slope * ((q_pos - k_pos) as f32)
    })
}

/// The score modifiers, by hand: `None` masks the key.
#[derive(Clone, Copy, Debug)]
pub enum ScoreRef {
    Causal,
    SlidingWindow { window: i64 },
    Softcap { cap: f64 },
    Alibi { n_heads: usize },
    SoftcapWindow { cap: f64, window: i64 },
}

pub fn score_ref(m: ScoreRef, s: f64, q_pos: usize, k_pos: usize, head: usize) -> Option<f64> {
    match m {
        ScoreRef::Causal => Some(s),
        ScoreRef::SlidingWindow { window } => ((q_pos as i64 - k_pos as i64) < window).then_some(s),
        ScoreRef::Softcap { cap } => Some(cap * (s / cap).tanh()),
        ScoreRef::SoftcapWindow { cap, window } => {
            ((q_pos as i64 - k_pos as i64) < window).then_some(cap * (s / cap).tanh())
        }
        ScoreRef::Alibi { n_heads } => {
            let slope = 2f64.powf(-8.0 * (head + 1) as f64 / n_heads as f64);
            Some(s - slope * (q_pos as f64 - k_pos as f64))
        }
    }
}

/// Dense causal attention of one query row against `keys`/`values` (`[ctx][head_dim]`): the
/// query at position `q_pos` sees keys `0 ..= q_pos`; all masked gives zeros.
pub fn attention_ref(
    m: ScoreRef,
    q: &[f64],
    keys: &[Vec<f64>],
    values: &[Vec<f64>],
    q_pos: usize,
    head: usize,
    scale: f64,
) -> Vec<f64> {
    let scores: Vec<Option<f64>> = (0..=q_pos)
        .map(|t| {
            let dot: f64 = q.iter().zip(&keys[t]).map(|(a, b)| a * b).sum();
            score_ref(m, dot * scale, q_pos, t, head)
        })
        .collect();
    let max = scores.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut out = vec![0.0; q.len()];
    if max == f64::NEG_INFINITY {
        return out;
    }
    let w: Vec<f64> = scores.iter().map(|s| s.map_or(0.0, |s| (s - max).exp())).collect();
    let denom: f64 = w.iter().sum();
    for (t, wt) in w.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(&values[t]) {
            *o += wt / denom * v;
        }
    }
    out
}
