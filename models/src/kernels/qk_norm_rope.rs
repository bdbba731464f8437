//! Per-head q/k RMSNorm, RoPE and the KV-cache write of one layer in one kernel (Qwen3,
//! Gemma 3): the fused q/k/v projection is read once, as one row per (token, head), and each
//! row goes where it belongs — a query head normed with `wq`, rotated, into the query buffer;
//! a key head normed with `wk`, rotated, into the key cache; a value head as it is into the
//! value cache. Which one a row is, and where it goes, is data: `q_row`, `k_row`, `v_row`
//! (`kiln_runtime::model::step::HeadRows`; `-1` skips that output for the row).
//!
//! The reference is the composition the kernel replaces: `head_rms_norm_ref` (per-head norm),
//! then `rope_half_ref` (or its Llama-3 / linear-scaled form).

use kiln_fusion_macros::fused;

#[fused]
pub fn qk_norm_rope_write(
    x: Row,
    wq: Bcast,
    wk: Bcast,
    pos: PerRow<i32>,
    q_row: PerRow<i32>,
    k_row: PerRow<i32>,
    v_row: PerRow<i32>,
    #[comptime] eps: f32,
    #[comptime] theta: f32,
    #[comptime] head_dim: i32,
) -> (Scatter<q_row>, Scatter<k_row>, Scatter<v_row>) {
    let inv = rsqrt(mean(x * x) + eps);
    let w = select(q_row >= 0, wq, wk);
    let q = rope_half(x * inv * w, pos, theta, head_dim);
    let k = q;
    let v = x;
    (q, k, v)
}

/// [`qk_norm_rope_write`] with Llama-3.1 (or linear) frequency scaling: Gemma 3's global layers.
#[fused]
pub fn qk_norm_rope_write_llama3(
    x: Row,
    wq: Bcast,
    wk: Bcast,
    pos: PerRow<i32>,
    q_row: PerRow<i32>,
    k_row: PerRow<i32>,
    v_row: PerRow<i32>,
    #[comptime] eps: f32,
    #[comptime] theta: f32,
    #[comptime] head_dim: i32,
    #[comptime] factor: f32,
    #[comptime] low_freq_factor: f32,
    #[comptime] high_freq_factor: f32,
    #[comptime] original_max_position: f32,
) -> (Scatter<q_row>, Scatter<k_row>, Scatter<v_row>) {
    let inv = rsqrt(mean(x * x) + eps);
    let w = select(q_row >= 0, wq, wk);
    let q = rope_half_llama3(
        x * inv * w,
        pos,
        theta,
        head_dim,
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position,
    );
    let k = q;
    let v = x;
    (q, k, v)
}
