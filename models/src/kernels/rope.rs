//! Rotary position embeddings on rows of `n_heads * head_dim` columns (rows = tokens, or
//! tokens × heads). Three pairings/frequency schedules cover the Llama family:
//! `rope_half` (HF "rotate_half": column `j` pairs with `j + head_dim/2`), `rope_interleaved`
//! (GPT-J / GGUF: `2i` pairs with `2i+1`) and `rope_half_llama3` (rotate_half with Llama-3.1
//! frequency scaling). `pos` is each row's token position; `theta`, `head_dim` and the
//! scaling factors come from the model config at launch. `rope_half_table` takes the
//! frequencies as data instead (a `[width]` f32 vector whose column `j < head_dim/2` holds pair
//! `j`'s inverse frequency; the loader tiles it per head): LongRoPE's per-pair factors, and
//! partial rotary as pass-through pairs of frequency 0 (see `decoder/rope_table.rs`). The
//! `_bias` kernels rotate a biased projection (`x + bias`, Qwen2) with the add inside the
//! rotation: a rope's source may be any per-column arithmetic on its parameters.
//!
//! The `*_ref` functions are the obviously-correct definitions (one row, f64), written from
//! the published formulas (RoFormer; Llama-3.1's `rope_scaling`).

use kiln_fusion_macros::fused;

#[fused]
pub fn rope_half(x: Row, pos: PerRow<i32>, #[comptime] theta: f32, #[comptime] head_dim: i32) -> Row {
    let y = rope_half(x, pos, theta, head_dim);
    y
}

#[fused]
pub fn rope_interleaved(x: Row, pos: PerRow<i32>, #[comptime] theta: f32, #[comptime] head_dim: i32) -> Row {
    let y = rope_interleaved(x, pos, theta, head_dim);
    y
}

#[fused]
pub fn rope_half_llama3(
    x: Row,
    pos: PerRow<i32>,
    #[comptime] theta: f32,
    #[comptime] head_dim: i32,
    #[comptime] factor: f32,
    #[comptime] low_freq_factor: f32,
    #[comptime] high_freq_factor: f32,
    #[comptime] original_max_position: f32,
) -> Row {
    let y = rope_half_llama3(x, pos, theta, head_dim, factor, low_freq_factor, high_freq_factor, original_max_position);
    y
}

#[fused]
pub fn rope_half_table(x: Row, pos: PerRow<i32>, inv_freq: Bcast<f32>, #[comptime] head_dim: i32) -> Row {
    let y = rope_half_table(x, pos, inv_freq, head_dim);
    y
}

/// [`rope_half`] of a biased projection (Qwen2's q): `rope(x + bias)`. The bias add is part of
/// the rotation's source, evaluated at each column and its partner, not a pass of its own.
#[fused]
pub fn rope_half_bias(x: Row, bias: Bcast, pos: PerRow<i32>, #[comptime] theta: f32, #[comptime] head_dim: i32) -> Row {
    let y = rope_half(x + bias, pos, theta, head_dim);
    y
}

/// Llama-3.1 frequency scaling, as published with the model.
#[derive(Clone, Copy, Debug)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: f64,
}

/// The rotation frequency of pair `i` of a head: `theta^(-2i/head_dim)`, scaled for Llama-3:
/// long wavelengths are divided by `factor`, short ones kept, and the band between blended.
pub fn inv_freq_ref(theta: f64, i: usize, head_dim: usize, scaling: Option<Llama3Scaling>) -> f64 {
    let f = theta.powf(-((2 * i) as f64) / head_dim as f64);
    let Some(s) = scaling else { return f };
    let wavelen = 2.0 * std::f64::consts::PI / f;
    let low_freq_wavelen = s.original_max_position / s.low_freq_factor;
    let high_freq_wavelen = s.original_max_position / s.high_freq_factor;
    if wavelen < high_freq_wavelen {
        f
    } else if wavelen > low_freq_wavelen {
        f / s.factor
    } else {
        let smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * f / s.factor + smooth * f
    }
}

/// Rotate every head of `x` by `pos`; `pairs(i)` gives the two columns (within a head) of
/// pair `i`, which turn by angle `pos * inv_freq(i)`.
fn rotate(
    x: &[f64],
    pos: i32,
    head_dim: usize,
    inv_freq: impl Fn(usize) -> f64,
    pairs: impl Fn(usize) -> (usize, usize),
) -> Vec<f64> {
    assert!(
        head_dim.is_multiple_of(2) && x.len().is_multiple_of(head_dim),
        "row of {} columns, head_dim {head_dim}",
        x.len()
    );
    let mut out = vec![0.0; x.len()];
    for (h, xs) in x.chunks(head_dim).enumerate() {
        for i in 0..head_dim / 2 {
            let (a, b) = pairs(i);
            let (sin, cos) = (pos as f64 * inv_freq(i)).sin_cos();
            out[h * head_dim + a] = xs[a] * cos - xs[b] * sin;
            out[h * head_dim + b] = xs[b] * cos + xs[a] * sin;
        }
    }
    out
}

pub fn rope_half_ref(x: &[f64], pos: i32, theta: f64, head_dim: usize) -> Vec<f64> {
    rotate(x, pos, head_dim, |i| inv_freq_ref(theta, i, head_dim, None), |i| (i, i + head_dim / 2))
}

pub fn rope_interleaved_ref(x: &[f64], pos: i32, theta: f64, head_dim: usize) -> Vec<f64> {
    rotate(x, pos, head_dim, |i| inv_freq_ref(theta, i, head_dim, None), |i| (2 * i, 2 * i + 1))
}

/// Rotate-half RoPE with pair `i` turning by `pos * inv_freq[i]` (`head_dim / 2` entries).
pub fn rope_half_table_ref(x: &[f64], pos: i32, inv_freq: &[f64], head_dim: usize) -> Vec<f64> {
    assert_eq!(inv_freq.len(), head_dim / 2, "one inverse frequency per pair");
    rotate(x, pos, head_dim, |i| inv_freq[i], |i| (i, i + head_dim / 2))
}

pub fn rope_half_llama3_ref(x: &[f64], pos: i32, theta: f64, head_dim: usize, s: Llama3Scaling) -> Vec<f64> {
    rotate(x, pos, head_dim, |i| inv_freq_ref(theta, i, head_dim, Some(s)), |i| (i, i + head_dim / 2))
}

/// The KV-cache write of one layer, fused with the RoPE of K: `k` rotated (rotate_half) and
/// `v` as is are written to cache row `slot[r]` (a negative slot skips the token: padding in
/// a captured batch). `k`, `v`: the K and V column views of the fused QKV projection.
#[fused]
pub fn rope_kv_write(
    k: Row,
    v: Row,
    pos: PerRow<i32>,
    slot: PerRow<i32>,
    #[comptime] theta: f32,
    #[comptime] head_dim: i32,
) -> (Scatter<slot>, Scatter<slot>) {
    let k_cache = rope_half(k, pos, theta, head_dim);
    let v_cache = v;
    (k_cache, v_cache)
}

/// [`rope_kv_write`] of a biased projection (Qwen2's k and v): `k + bias_k` rotated and
/// `v + bias_v` written to the cache, the bias adds fused into the write.
#[fused]
pub fn rope_kv_write_bias(
    k: Row,
    v: Row,
    bias_k: Bcast,
    bias_v: Bcast,
    pos: PerRow<i32>,
    slot: PerRow<i32>,
    #[comptime] theta: f32,
    #[comptime] head_dim: i32,
) -> (Scatter<slot>, Scatter<slot>) {
    let k_cache = rope_half(k + bias_k, pos, theta, head_dim);
    let v_cache = v + bias_v;
    (k_cache, v_cache)
}

/// [`rope_kv_write`] with Llama-3.1 frequency scaling.
#[fused]
pub fn rope_kv_write_llama3(
    k: Row,
    v: Row,
    pos: PerRow<i32>,
    slot: PerRow<i32>,
    #[comptime] theta: f32,
    #[comptime] head_dim: i32,
    #[comptime] factor: f32,
    #[comptime] low_freq_factor: f32,
    #[comptime] high_freq_factor: f32,
    #[comptime] original_max_position: f32,
) -> (Scatter<slot>, Scatter<slot>) {
    let k_cache =
        rope_half_llama3(k, pos, theta, head_dim, factor, low_freq_factor, high_freq_factor, original_max_position);
    let v_cache = v;
    (k_cache, v_cache)
}

/// [`rope_kv_write`] with the frequencies from a table (see [`rope_half_table`]).
#[fused]
pub fn rope_kv_write_table(
    k: Row,
    v: Row,
    pos: PerRow<i32>,
    slot: PerRow<i32>,
    inv_freq: Bcast<f32>,
    #[comptime] head_dim: i32,
) -> (Scatter<slot>, Scatter<slot>) {
    let k_cache = rope_half_table(k, pos, inv_freq, head_dim);
    let v_cache = v;
    (k_cache, v_cache)
}
