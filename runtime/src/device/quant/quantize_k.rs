//! ggml's reference k-quant quantizers (`quantize_row_q{2,3,4,5,6}_K_ref`, no importance
//! matrix: what llama.cpp's quantizer runs for k-quant tensors), with the same f32 operations in
//! the same order, so the bytes equal llama.cpp's (fixture test `k_quants_equal_llama_cpp_byte_for_byte`
//! in runtime/tests/quant_blocks.rs).
//!
//! Per 256-value super-block, every format first fits each slice on its own, then quantizes the
//! slices' scales (and mins) against the largest one, and finally re-quantizes the values
//! against the *rounded* scales (so the stored levels are the best ones for what is stored):
//! - `Q4_K` / `Q5_K`: each 32-value slice gets a scale and a min from [`make_qkx2_quants`]
//!   (weights `sqrt(mean x²) + |x|`, a search over candidate scales around `nmax / (max − min)`
//!   minimising the weighted squared error; 15 levels and 21 candidates for Q4_K, 31 and 16 for
//!   Q5_K); scales and mins are quantized to 6 bits (`d = max_scale / 63`, `dmin = max_min /
//!   63`, stored f16).
//! - `Q2_K`: each 16-value slice gets a scale and min from [`make_qkx2_quants`] with 3 levels,
//!   weights `|x|` and absolute (not squared) errors; both are quantized to 4 bits (`d =
//!   max_scale / 15`, `dmin = max_min / 15`).
//! - `Q3_K`: each 16-value slice gets a signed scale from [`make_q3_quants`] (levels −4..3,
//!   refined level by level); the scales are quantized to 6 bits signed against the one of
//!   largest magnitude (`d = max_scale / −32`).
//! - `Q6_K`: each 16-value slice gets a signed scale from [`make_qx_quants`] (levels −32..31),
//!   quantized to i8 (`d = max_scale / −128`).
//!
//! f16 fields are rounded to nearest even (`half`, as ggml's conversion). The levels' bit
//! layouts are the ones [`super::blocks`] reads.

use half::f16;

/// ggml's `nearest_int`: round half to even through the float-magic trick (exact for
/// `|x| ≤ 2²²`).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `make_qkx2_quants` for `nmax` levels: the scale and (negated) min of `x` under
/// `weights`, levels written to `l`. The error of a candidate is `Σ w·(s·l + m − x)²`, or
/// `Σ w·|s·l + m − x|` when `mad` (Q2_K).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let error = |diff: f32| if mad { diff.abs() } else { diff * diff };
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        best_error += weights[i] * error(scale * q as f32 + min - x[i]);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let lf = q as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                cur_error += weights[i] * error(this_scale * laux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// A Q4_K or Q5_K super-block before its levels are bit-packed: `d`, `dmin`, the 12 bytes of
/// packed 6-bit scales and mins, and the 256 levels (`0..=nmax`).
struct K4Block {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    l: [u8; 256],
}

/// The common part of `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref` for the 256 values
/// `x`: they differ only in `nmax` and the search parameters of [`make_qkx2_quants`].
fn k4_block(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> K4Block {
    let mut l = [0u8; 256];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        let (scale, min) = make_qkx2_quants(xs, &weights, nmax, &mut l[32 * j..32 * j + 32], rmin, 0.1, nstep, false);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // ggml stores `nearest_int` into a uint8_t, then caps at 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = super::blocks::k4_scale_min(&packed, j);
        let dj = d.to_f32() * sc as f32;
        // A slice whose scale rounds to zero keeps the levels of its own fit.
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    K4Block { d, dmin, scales: packed, l }
}

/// Appends the Q4_K blocks of `x` (`x.len()` a multiple of 256) to `out`.
pub fn quantize_q4_k(x: &[f32], out: &mut Vec<u8>) {
    for x in x.chunks_exact(256) {
        let b = k4_block(x, 15, -1.0, 20);
        out.extend_from_slice(&b.d.to_le_bytes());
        out.extend_from_slice(&b.dmin.to_le_bytes());
        out.extend_from_slice(&b.scales);
        for j in (0..256).step_by(64) {
            out.extend((0..32).map(|i| b.l[j + i] | (b.l[j + i + 32] << 4)));
        }
    }
}

/// Appends the Q5_K blocks of `x` (`x.len()` a multiple of 256) to `out`: Q4_K's layout with
/// 31 levels, the fifth bit of value `i` of slice `s` in bit `s` of high-bit byte `i`.
pub fn quantize_q5_k(x: &[f32], out: &mut Vec<u8>) {
    for x in x.chunks_exact(256) {
        let b = k4_block(x, 31, -0.5, 15);
        let (mut qh, mut qs) = ([0u8; 32], [0u8; 128]);
        for (s, slice) in b.l.chunks_exact(32).enumerate() {
            for (i, &v) in slice.iter().enumerate() {
                qh[i] |= (v >> 4) << s;
                qs[32 * (s / 2) + i] |= (v & 0x0f) << (4 * (s % 2));
            }
        }
        out.extend_from_slice(&b.d.to_le_bytes());
        out.extend_from_slice(&b.dmin.to_le_bytes());
        out.extend_from_slice(&b.scales);
        out.extend_from_slice(&qh);
        out.extend_from_slice(&qs);
    }
}

/// Q2_K and Q3_K's level layout: 2-bit levels, each 32 bytes holding four 32-value slices of a
/// 128-value half (slice `k` in bits `2k..2k+2`).
fn pack_2bit(l: &[u8; 256]) -> [u8; 64] {
    std::array::from_fn(|i| {
        let (half, byte) = (i / 32, i % 32);
        (0..4).fold(0u8, |q, k| q | (l[128 * half + 32 * k + byte] << (2 * k)))
    })
}

/// Appends the Q2_K blocks of `x` (`x.len()` a multiple of 256) to `out`.
pub fn quantize_q2_k(x: &[f32], out: &mut Vec<u8>) {
    for x in x.chunks_exact(256) {
        let mut l = [0u8; 256];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let weights: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
            let (scale, min) = make_qkx2_quants(xs, &weights, 3, &mut l[16 * j..16 * j + 16], -0.5, 0.1, 15, true);
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }
        // Low nibble the scale, high nibble the min. ggml stores `nearest_int` into a uint8_t
        // unclamped (the largest scale gives exactly 15).
        let mut sc = [0u8; 16];
        let mut d = f16::ZERO;
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            d = f16::from_f32(max_scale / 15.0);
        }
        let mut dmin = f16::ZERO;
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for j in 0..16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            dmin = f16::from_f32(max_min / 15.0);
        }
        for j in 0..16 {
            let dj = d.to_f32() * (sc[j] & 0x0f) as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * (sc[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
            }
        }
        out.extend_from_slice(&sc);
        out.extend_from_slice(&pack_2bit(&l));
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
    }
}

/// ggml's `make_q3_quants` with `do_rmse` (what Q3_K uses): the signed scale of `x` for levels
/// `−nmax..nmax−1`, levels (offset by `nmax`; all zero for an all-zero slice) written to `l`.
/// Starting from rounding against `max / −nmax`, up to five passes move single levels to the
/// value that best fits the others, kept when they raise `(Σ w·x·l)² / Σ w·l²` (`w = x²`).
fn make_q3_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (o, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *o = q as i8;
        let (w, lf) = (v * v, q as f32);
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (o, &v) in l.iter_mut().zip(x) {
            let (w, old) = (v * v, *o as f32);
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let q = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if q != *o as i32 {
                    let lf = q as f32;
                    slx += w * v * lf;
                    sl2 += w * lf * lf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = q as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    l.iter_mut().for_each(|v| *v += nmax as i8);
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Appends the Q3_K blocks of `x` (`x.len()` a multiple of 256) to `out`.
pub fn quantize_q3_k(x: &[f32], out: &mut Vec<u8>) {
    for x in x.chunks_exact(256) {
        let mut l = [0i8; 256];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..16 {
            scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        // Sixteen 6-bit scales biased by 32: low nibbles in bytes 0..8 (scales 8..16 in the
        // high nibbles), the top two bits in bytes 8..12 (scale j at bits 2·(j/4) of byte
        // 8 + j%4), as `blocks::q3k_scale` reads them.
        let mut sc = [0u8; 12];
        let mut d = f16::ZERO;
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                // ggml stores `nearest_int` into an int8_t before clamping.
                let q = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    sc[j] = q & 0x0f;
                } else {
                    sc[j - 8] |= (q & 0x0f) << 4;
                }
                sc[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
            }
            d = f16::from_f32(1.0 / iscale);
        }
        for j in 0..16 {
            let dj = d.to_f32() * (super::blocks::q3k_scale(&sc, j) - 32) as f32;
            if dj == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-4, 3) + 4) as i8;
            }
        }
        // The third bit of value i (0..256) goes to bit i / 32 of mask byte i % 32.
        let mut hmask = [0u8; 32];
        let mut low = [0u8; 256];
        for (i, &v) in l.iter().enumerate() {
            let v = v as u8;
            if v > 3 {
                hmask[i % 32] |= 1 << (i / 32);
            }
            low[i] = v & 3;
        }
        out.extend_from_slice(&hmask);
        out.extend_from_slice(&pack_2bit(&low));
        out.extend_from_slice(&sc);
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// ggml's `make_qx_quants` with `rmse_type` 1 and no importance weights (what Q6_K uses): the
/// signed scale of `x` for levels `−nmax..nmax−1`, levels (offset by `nmax`) written to `l`.
fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w·x·l and Σ w·l² with w = x², as ggml sums them.
    let sums = |iscale: f32| {
        x.iter().fold((0f32, 0f32), |(sumlx, suml2), &v| {
            let (lf, w) = (level(iscale, v) as f32, v * v);
            (sumlx + w * v * lf, suml2 + w * lf * lf)
        })
    };
    let mut iscale = -(nmax as f32) / max;
    for (o, &v) in l.iter_mut().zip(x) {
        *o = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l.iter_mut().zip(x) {
                *o = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it is all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Appends the Q6_K blocks of `x` (`x.len()` a multiple of 256) to `out`
/// (`quantize_row_q6_K_ref`: a signed scale per 16 values from [`make_qx_quants`], the scales
/// quantized to i8 against the one of largest magnitude, `d = 1 / iscale` stored f16).
pub fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    for x in x.chunks_exact(256) {
        let mut l = [0i8; 256];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let scale = make_qx_quants(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            out.extend_from_slice(&[0u8; 210]);
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        let sc: [i8; 16] = scales.map(|s| nearest_int(iscale * s).min(127) as i8);
        for j in 0..16 {
            let dj = d.to_f32() * sc[j] as f32;
            if dj == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-32, 31) + 32) as i8;
            }
        }
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for (n, j) in (0..256).step_by(128).enumerate() {
            for i in 0..32 {
                let q = |k: usize| l[j + i + 32 * k] as u8;
                ql[64 * n + i] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
                ql[64 * n + i + 32] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
                qh[32 * n + i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(sc.iter().map(|&s| s as u8));
        out.extend_from_slice(&d.to_le_bytes());
    }
}
