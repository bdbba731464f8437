//! Activation rows quantized for the CPU's integer dot products ([`ActBlock`]: blocks of 32
//! with a scale `d`, integers `q` and their sums), in one of two ways ([`Activations`]):
//!
//! - [`Activations::Bits16`] (the default): `d = max|x| / 32767`, `q = round(x / d)`; a
//!   relative error of at most 2⁻¹⁶ of the block's largest value, so the product is within
//!   ~1e-4 of the dequantize-then-f32 one.
//! - [`Activations::Ggml8`]: llama.cpp's 8-bit blocks, as its x86 CPU path makes them, chosen by
//!   the weight's format: Q8_0 / Q8_1 for the 32-value formats (`d = max|x| / 127` stored as
//!   f16, `q = round_half_even(x · 127 / max|x|)`), Q8_K for the k-quants (one f32
//!   `d = max / −127` per 256 values, `max` the value of largest magnitude,
//!   `q = min(127, round_half_even(x · −127 / max))`). Its own `maddubs` kernels make it the
//!   faster mode (cpu/avx2_q8.rs). Against llama.cpp on the same files it brings the worst
//!   last-position logit difference from 5.8% to 2.4–5.7% of the largest logit, not to
//!   summation-order noise (tests/tests/llama_cpp_quantized.rs says what is known of why).
//!
//! The choice is process-wide: [`set_activations`], or `KILN_CPU_ACTIVATIONS=ggml8` read at the
//! first use. Both produce `q` within ±32767, which the 16-bit dot products take unchanged. The
//! 16-bit and Q8_0 quantizers have AVX2 forms (`activations_avx2.rs`) that give the same blocks
//! bit for bit; the Q8_K one is scalar.

use super::cpu::Simd;
use super::{QuantFormat, BLOCK};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// One activation block quantized to integers.
#[derive(Clone, Copy, Debug)]
pub struct ActBlock {
    pub d: f32,
    /// `Σ q` over the block.
    pub sum: i32,
    /// `Σ q` over its first 16 values (formats with a min per 16 values need both halves).
    pub sum_lo: i32,
    pub qs: [i16; BLOCK],
}

impl ActBlock {
    fn new(d: f32, qs: [i16; BLOCK]) -> ActBlock {
        let sum_lo = qs[..16].iter().map(|&q| q as i32).sum();
        let sum = sum_lo + qs[16..].iter().map(|&q| q as i32).sum::<i32>();
        ActBlock { d, sum, sum_lo, qs }
    }
}

/// One activation block quantized to 8 bits (`Activations::Ggml8`), for the 8-bit kernels.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct ActBlock8 {
    pub qs: [i8; BLOCK],
    pub d: f32,
    /// `Σ q` over the block and over its first 16 values.
    pub sum: i32,
    pub sum_lo: i32,
}

impl From<&ActBlock8> for ActBlock {
    fn from(b: &ActBlock8) -> ActBlock {
        ActBlock { d: b.d, sum: b.sum, sum_lo: b.sum_lo, qs: b.qs.map(|q| q as i16) }
    }
}

impl From<&ActBlock> for ActBlock8 {
    /// The same block with its values narrowed (they must lie within ±127).
    fn from(b: &ActBlock) -> ActBlock8 {
        ActBlock8 { qs: b.qs.map(|q| q.clamp(-127, 127) as i8), d: b.d, sum: b.sum, sum_lo: b.sum_lo }
    }
}

/// Quantizes one row for a product with a `format` weight by llama.cpp's 8-bit rules, as
/// 8-bit blocks (the same values [`quantize_row_for`] gives under `Ggml8`).
pub fn quantize_row8_for(format: QuantFormat, x: &[f32], scratch: &mut Vec<ActBlock>, out: &mut Vec<ActBlock8>) {
    quantize_row_for(Activations::Ggml8, format, x, scratch);
    out.clear();
    out.extend(scratch.iter().map(ActBlock8::from));
}

/// How activations are quantized (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    Bits16,
    Ggml8,
}

/// 0: not chosen yet; 1: `Bits16`; 2: `Ggml8`.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Chooses the activation quantization of every later quantized product in this process.
pub fn set_activations(a: Activations) {
    CHOSEN.store(if a == Activations::Ggml8 { 2 } else { 1 }, Ordering::Relaxed);
}

/// The activation quantization in force.
pub fn activations() -> Activations {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Activations::Bits16,
        2 => Activations::Ggml8,
        _ => {
            let a = match std::env::var("KILN_CPU_ACTIVATIONS").as_deref() {
                Ok("ggml8") => Activations::Ggml8,
                _ => Activations::Bits16,
            };
            set_activations(a);
            a
        }
    }
}

/// The largest 16-bit activation magnitude.
const QMAX: f32 = 32767.0;

/// The SIMD path of this CPU, detected once (`KILN_CPU_SIMD=0`: the portable one).
fn simd() -> Simd {
    static SIMD: OnceLock<Simd> = OnceLock::new();
    *SIMD.get_or_init(Simd::detect)
}

/// Quantizes one row (`x.len()` a multiple of 32) to 16 bits into `out` (`x.len() / 32` blocks).
pub fn quantize_row(x: &[f32], out: &mut Vec<ActBlock>) {
    quantize_row_with(simd(), x, out)
}

/// [`quantize_row`] by `simd`'s code: every path gives the same blocks (`activations_avx2.rs`).
pub fn quantize_row_with(simd: Simd, x: &[f32], out: &mut Vec<ActBlock>) {
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::Portable {
        // Safety: every SIMD path implies AVX2 (`Simd::available`).
        return unsafe { super::activations_avx2::quantize_row16(x, QMAX, out) };
    }
    let _ = simd;
    out.clear();
    for b in x.chunks_exact(BLOCK) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / QMAX;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i16; BLOCK];
        for (q, &v) in qs.iter_mut().zip(b) {
            *q = (v * id).round().clamp(-QMAX, QMAX) as i16;
        }
        out.push(ActBlock::new(d, qs));
    }
}

/// Quantizes one row for a product with a `format` weight, as `mode` says.
pub fn quantize_row_for(mode: Activations, format: QuantFormat, x: &[f32], out: &mut Vec<ActBlock>) {
    quantize_row_for_with(simd(), mode, format, x, out)
}

/// [`quantize_row_for`] by `simd`'s code (the same blocks on every path).
pub fn quantize_row_for_with(simd: Simd, mode: Activations, format: QuantFormat, x: &[f32], out: &mut Vec<ActBlock>) {
    match mode {
        Activations::Bits16 => quantize_row_with(simd, x, out),
        Activations::Ggml8 if format.block_len() == BLOCK => quantize_row_q8_0(simd, x, out),
        Activations::Ggml8 => quantize_row_q8_k(x, out),
    }
}

/// Whether [`quantize_row_for`] gives the same blocks for weights of formats `a` and `b` (so
/// one quantization of a row serves both).
pub fn same_blocks(mode: Activations, a: QuantFormat, b: QuantFormat) -> bool {
    mode == Activations::Bits16 || (a.block_len() == BLOCK) == (b.block_len() == BLOCK)
}

/// llama.cpp's Q8_0 / Q8_1 activation blocks (its AVX2 `quantize_row_q8_0`: `127 / max|x|`,
/// round half to even, `d` stored as f16).
fn quantize_row_q8_0(simd: Simd, x: &[f32], out: &mut Vec<ActBlock>) {
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::Portable {
        // Safety: every SIMD path implies AVX2 and F16C (`Simd::available`).
        return unsafe { super::activations_avx2::quantize_row_q8_0(x, out) };
    }
    let _ = simd;
    out.clear();
    for b in x.chunks_exact(BLOCK) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = half::f16::from_f32(amax / 127.0).to_f32();
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i16; BLOCK];
        for (q, &v) in qs.iter_mut().zip(b) {
            *q = (v * id).round_ties_even() as i16;
        }
        out.push(ActBlock::new(d, qs));
    }
}

/// llama.cpp's Q8_K activation blocks (`quantize_row_q8_K_ref`), one `d` per 256 values, held
/// as eight 32-value blocks sharing it.
fn quantize_row_q8_k(x: &[f32], out: &mut Vec<ActBlock>) {
    out.clear();
    for b in x.chunks(256) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let iscale = if amax != 0.0 { -127.0 / max } else { 0.0 };
        let d = if amax != 0.0 { 1.0 / iscale } else { 0.0 };
        for c in b.chunks_exact(BLOCK) {
            let mut qs = [0i16; BLOCK];
            for (q, &v) in qs.iter_mut().zip(c) {
                *q = ((iscale * v).round_ties_even() as i32).min(127) as i16;
            }
            out.push(ActBlock::new(d, qs));
        }
    }
}
