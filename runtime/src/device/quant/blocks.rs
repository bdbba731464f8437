//! The one definition of every block format's values: a block is cut into 32-value slices
//! ([`Slice32`]), each slice holding small integers `w` and, per half of 16 values, a scale and
//! (for formats with an offset) a min, so that value `l` of the slice is
//! `scale[l / 16] · w[l]`, plus `min[l / 16]` when [`QuantFormat::has_min`].
//!
//! Every kernel works from this form (the CPU's integer dot products multiply `w` by 16-bit
//! activations and apply the scale once per half), and [`QuantFormat::dequantize`] evaluates it
//! in f32 with the same operation order as ggml's `dequantize_row_*` (scale first computed as
//! `d · sub_scale`, then `· w`, then `− d_min · sub_min`), so dequantization is bit-exact
//! against ggml and the `gguf` Python package (fixture test in the workspace's tests crate).
//!
//! Layouts (ggml's `ggml-common.h`; `d`, `dmin`, `m` IEEE f16, little-endian):
//! - `Q4_0` (32 values, 18 B): `d`, 16 B of nibbles (value j low, j+16 high); w = n − 8.
//! - `Q4_1` (32, 20 B): `d`, `m`, nibbles as Q4_0; w = n, min m.
//! - `Q5_0` (32, 22 B): `d`, 32 high bits `qh` (u32), nibbles; w = (n | h·16) − 16.
//! - `Q5_1` (32, 24 B): `d`, `m`, `qh`, nibbles; w = n | h·16, min m.
//! - `Q8_0` (32, 34 B): `d`, 32 × i8.
//! - `Q2_K` (256, 84 B): 16 B scales (low nibble scale, high nibble min, per 16 values),
//!   64 B of 2-bit values, `d`, `dmin`.
//! - `Q3_K` (256, 110 B): 32 B high-bit mask, 64 B of 2-bit values, 12 B of sixteen 6-bit
//!   scales (biased by 32), `d`; w = low2 − (high bit clear ? 4 : 0).
//! - `Q4_K` (256, 144 B): `d`, `dmin`, 12 B of eight 6-bit scales and mins (per 32 values),
//!   128 B of nibbles (each 32 bytes: one slice in the low nibbles, the next in the high).
//! - `Q5_K` (256, 176 B): as Q4_K plus 32 B of high bits (bit b of byte l: slice b, value l).
//! - `Q6_K` (256, 210 B): 128 B low nibbles, 64 B high 2-bit pairs, 16 × i8 scales, `d`;
//!   w = (low4 | high2·16) − 32.

use super::{f16_at, QuantFormat};

/// One 32-value slice of a block in integer form (see the module header).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
pub struct Slice32 {
    pub w: [i16; 32],
    pub scale: [f32; 2],
    pub min: [f32; 2],
}

/// Writes slice `s` (`0..format.block_len() / 32`) of the block `b` (one whole block) into `out`.
#[inline]
pub fn unpack(format: QuantFormat, b: &[u8], s: usize, out: &mut Slice32) {
    slice_ints(format, b, s, &mut out.w);
    (out.scale, out.min) = slice_scales(format, b, s);
}

/// The scale and min (zero where the format has none) of each half of slice `s` of block `b`.
#[inline]
pub fn slice_scales(format: QuantFormat, b: &[u8], s: usize) -> ([f32; 2], [f32; 2]) {
    let fields = half_fields(format);
    let f = |k: usize| fields.get(k).map_or(0.0, |&at| f16_at(b, at));
    slice_scales_with(format, b, s, [f(0), f(1)])
}

/// [`slice_scales`] given the block's f16 fields already converted (`d`, then `m` / `dmin` or
/// 0; see [`half_fields`]): kernels convert them once per block, not once per slice.
#[inline(always)]
pub fn slice_scales_with(format: QuantFormat, b: &[u8], s: usize, [d, m]: [f32; 2]) -> ([f32; 2], [f32; 2]) {
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q5_0 | QuantFormat::Q8_0 | QuantFormat::Q4_1 | QuantFormat::Q5_1 => {
            ([d; 2], [m; 2])
        }
        QuantFormat::Q2_K => {
            let (lo, hi) = (b[2 * s], b[2 * s + 1]);
            ([d * (lo & 0x0f) as f32, d * (hi & 0x0f) as f32], [-(m * (lo >> 4) as f32), -(m * (hi >> 4) as f32)])
        }
        QuantFormat::Q3_K => {
            let sc = |i: usize| d * (q3k_scale(&b[96..108], i) - 32) as f32;
            ([sc(2 * s), sc(2 * s + 1)], [0.0; 2])
        }
        QuantFormat::Q4_K | QuantFormat::Q5_K => {
            let (sc, mn) = k4_scale_min(&b[4..16], s);
            ([d * sc as f32; 2], [-(m * mn as f32); 2])
        }
        QuantFormat::Q6_K => ([d * b[192 + 2 * s] as i8 as f32, d * b[193 + 2 * s] as i8 as f32], [0.0; 2]),
    }
}

/// The 32 integers `w` of slice `s` of block `b`.
#[inline]
pub fn slice_ints(format: QuantFormat, b: &[u8], s: usize, w: &mut [i16; 32]) {
    match format {
        QuantFormat::Q4_0 => nibbles(&b[2..18], |_, lo, hi| (lo as i16 - 8, hi as i16 - 8), w),
        QuantFormat::Q4_1 => nibbles(&b[4..20], |_, lo, hi| (lo as i16, hi as i16), w),
        QuantFormat::Q5_0 | QuantFormat::Q5_1 => {
            let with_min = format == QuantFormat::Q5_1;
            let off = if with_min { 4 } else { 2 };
            let qh = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
            let bias = if with_min { 0 } else { 16 };
            let high = |j: usize, lo: u8, hi: u8| {
                let h0 = (((qh >> j) & 1) << 4) as i16;
                let h1 = ((qh >> (j + 12)) & 0x10) as i16;
                ((lo as i16 | h0) - bias, (hi as i16 | h1) - bias)
            };
            nibbles(&b[off + 4..off + 20], high, w);
        }
        QuantFormat::Q8_0 => {
            for (w, &q) in w.iter_mut().zip(&b[2..34]) {
                *w = q as i8 as i16;
            }
        }
        QuantFormat::Q2_K => {
            let (q, shift) = (&b[16 + 32 * (s / 4)..16 + 32 * (s / 4) + 32], 2 * (s % 4));
            for (w, &v) in w.iter_mut().zip(q) {
                *w = ((v >> shift) & 3) as i16;
            }
        }
        QuantFormat::Q3_K => {
            let (hmask, q, shift) = (&b[..32], &b[32 + 32 * (s / 4)..32 + 32 * (s / 4) + 32], 2 * (s % 4));
            for ((w, &v), &h) in w.iter_mut().zip(q).zip(hmask) {
                let sub = if h & (1 << s) != 0 { 0 } else { 4 };
                *w = ((v >> shift) & 3) as i16 - sub;
            }
        }
        QuantFormat::Q4_K | QuantFormat::Q5_K => {
            let qs_at = if format == QuantFormat::Q4_K { 16 } else { 48 };
            let q = &b[qs_at + 32 * (s / 2)..qs_at + 32 * (s / 2) + 32];
            let shift = 4 * (s % 2);
            for (w, &v) in w.iter_mut().zip(q) {
                *w = ((v >> shift) & 0x0f) as i16;
            }
            if format == QuantFormat::Q5_K {
                for (w, &h) in w.iter_mut().zip(&b[16..48]) {
                    *w |= (((h >> s) & 1) as i16) << 4;
                }
            }
        }
        QuantFormat::Q6_K => {
            let (n, k) = (s / 4, s % 4);
            let ql = &b[64 * n + 32 * (k % 2)..64 * n + 32 * (k % 2) + 32];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let (lshift, hshift) = (4 * (k / 2), 2 * k);
            for ((w, &l), &h) in w.iter_mut().zip(ql).zip(qh) {
                *w = ((((l >> lshift) & 0x0f) | (((h >> hshift) & 3) << 4)) as i16) - 32;
            }
        }
    }
}

/// Byte offsets of a block's IEEE f16 fields (`d`, and `m` / `dmin` where the format has one).
pub fn half_fields(format: QuantFormat) -> &'static [usize] {
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q5_0 | QuantFormat::Q8_0 => &[0],
        QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4_K | QuantFormat::Q5_K => &[0, 2],
        QuantFormat::Q2_K => &[80, 82],
        QuantFormat::Q3_K => &[108],
        QuantFormat::Q6_K => &[208],
    }
}

/// The 32 values of a 32-value block whose 16 bytes hold value j in the low nibble and value
/// j + 16 in the high one, mapped by `f(j, low, high)`.
#[inline(always)]
fn nibbles(q: &[u8], f: impl Fn(usize, u8, u8) -> (i16, i16), w: &mut [i16; 32]) {
    for (j, &v) in q.iter().enumerate() {
        let (lo, hi) = f(j, v & 0x0f, v >> 4);
        w[j] = lo;
        w[j + 16] = hi;
    }
}

/// Q4_K / Q5_K: the 6-bit scale and min of slice `j` (0..8) from their 12 packed bytes
/// (ggml's `get_scale_min_k4`).
#[inline]
pub fn k4_scale_min(q: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q3_K: the 6-bit scale `i` (0..16) of its 12 packed bytes, still biased by 32: the low 4
/// bits are the nibbles of bytes 0..8 (low nibbles first), the high 2 bits come from bytes
/// 8..12, two bits per group of four scales.
#[inline]
pub fn q3k_scale(q: &[u8], i: usize) -> i32 {
    let low = if i < 8 { q[i] & 0x0f } else { q[i - 8] >> 4 };
    let high = (q[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i32
}
