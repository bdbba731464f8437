//! RoPE on the CPU: the rotation rules of `cpu/mod.rs`, with the per-frequency tables cached.
//!
//! A row of `n_heads * head_dim` columns is rotated head by head with one table of
//! `head_dim / 2` (cos, sin) pairs, so `powf`/`cos`/`sin` run once per frequency instead of
//! once per column. The inverse frequencies depend only on (theta, head_dim, scaling) and the
//! angles on the position too; both are kept while consecutive rows share them (the
//! `token x head` layout repeats a token's position for each of its heads).

use crate::ir::RopeStyle;

/// 2π rounded to f32 (`6.2831855f`), the constant the Llama-3 wavelength uses.
pub const TWO_PI: f32 = std::f32::consts::TAU;

/// Llama-3 frequency scaling operands: factor, low-frequency factor, high-frequency factor,
/// original maximum position.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Llama3 {
    pub factor: f32,
    pub low: f32,
    pub high: f32,
    pub orig: f32,
}

/// The inverse frequency of pair `i` of a head of `head_dim` columns.
pub fn inv_freq(theta: f32, head_dim: i32, scaling: Option<Llama3>, i: usize) -> f32 {
    let f = 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32);
    let Some(s) = scaling else { return f };
    let wavelen = TWO_PI / f;
    if wavelen < s.orig / s.high {
        f
    } else if wavelen > s.orig / s.low {
        f / s.factor
    } else {
        let smooth = (s.orig / wavelen - s.low) / (s.high - s.low);
        (1.0 - smooth) * f / s.factor + smooth * f
    }
}

/// Where a row's inverse frequencies come from.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum Freqs<'a> {
    /// `theta^(-2i/head_dim)`, optionally Llama-3 scaled (`Op::Rope`).
    Formula { theta: f32, scaling: Option<Llama3> },
    /// A `Bcast` table read at each pair's first column of head 0 (`Op::RopeTable`).
    Table(&'a [f32]),
}

/// One row's rotation parameters (the op's `Uniform` operands for this row).
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) struct RopeArgs<'a> {
    pub pos: i32,
    pub freqs: Freqs<'a>,
    pub head_dim: i32,
    pub style: RopeStyle,
}

impl RopeArgs<'_> {
    /// `head_dim` as a usize when it is positive, even and divides the row.
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than the workspace's rust-version
    pub fn head_dim_for(&self, width: usize) -> Option<usize> {
        let hd = usize::try_from(self.head_dim).ok()?;
        (hd > 0 && hd % 2 == 0 && width % hd == 0).then_some(hd)
    }
}

/// Cached tables, one per worker.
#[derive(Default)]
pub(crate) struct RopeCache {
    /// (theta bits, head_dim, scaling bits) of a formula; or (table address, head_dim, None):
    /// a table is the same data for a whole call, and a cache lives for one call.
    freq_key: Option<(usize, i32, Option<[u32; 4]>)>,
    inv_freq: Vec<f32>,
    angle_key: Option<i32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeCache {
    fn tables(&mut self, a: &RopeArgs, half: usize) -> (&[f32], &[f32]) {
        let fk = Some(match a.freqs {
            Freqs::Formula { theta, scaling } => {
                let sc = scaling.map(|s| [s.factor.to_bits(), s.low.to_bits(), s.high.to_bits(), s.orig.to_bits()]);
                (theta.to_bits() as usize, a.head_dim, sc)
            }
            Freqs::Table(t) => (t.as_ptr() as usize, a.head_dim, None),
        });
        if self.freq_key != fk {
            self.inv_freq = match a.freqs {
                Freqs::Formula { theta, scaling } => {
                    (0..half).map(|i| inv_freq(theta, a.head_dim, scaling, i)).collect()
                }
                Freqs::Table(t) => {
                    let step = match a.style {
                        RopeStyle::HalfSplit => 1,
                        RopeStyle::Interleaved => 2,
                    };
                    (0..half).map(|i| t[step * i]).collect()
                }
            };
            self.freq_key = fk;
            self.angle_key = None;
        }
        if self.angle_key != Some(a.pos) {
            let p = a.pos as f32;
            self.cos.clear();
            self.sin.clear();
            for &f in &self.inv_freq {
                let angle = p * f;
                self.cos.push(angle.cos());
                self.sin.push(angle.sin());
            }
            self.angle_key = Some(a.pos);
        }
        (&self.cos, &self.sin)
    }
}

/// Rotate one row `x` into `out` (both `width` long; `head_dim` already checked to be even
/// and to divide the row).
pub(crate) fn rotate(cache: &mut RopeCache, a: &RopeArgs, head_dim: usize, x: &[f32], out: &mut [f32]) {
    let half = head_dim / 2;
    let (cos, sin) = cache.tables(a, half);
    // Equal-length slices let the compiler drop the bounds checks in the loops below.
    let (cos, sin) = (&cos[..half], &sin[..half]);
    for (xh, oh) in x.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim)) {
        match a.style {
            RopeStyle::HalfSplit => {
                let (x0, x1) = xh.split_at(half);
                let (o0, o1) = oh.split_at_mut(half);
                let (x1, o1) = (&x1[..half], &mut o1[..half]);
                for i in 0..half {
                    o0[i] = x0[i] * cos[i] - x1[i] * sin[i];
                    o1[i] = x1[i] * cos[i] + x0[i] * sin[i];
                }
            }
            RopeStyle::Interleaved => {
                for ((o, p), (&c, &s)) in oh.chunks_exact_mut(2).zip(xh.chunks_exact(2)).zip(cos.iter().zip(sin)) {
                    o[0] = p[0] * c - p[1] * s;
                    o[1] = p[1] * c + p[0] * s;
                }
            }
        }
    }
}
