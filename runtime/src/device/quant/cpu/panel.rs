//! A panel: [`NR`] weight rows of any block format unpacked once into small integers and f32
//! scales, interleaved so that one 256-bit vector holds the same few values of all `NR` rows (a
//! 32-bit lane per row). The GEMM's micro-kernels ([`super::gemm`]) multiply a panel with many
//! activation rows; each lane of their accumulators is one output column, so a block's scale
//! applies as one vector and no horizontal sums are needed.
//!
//! Contents, per 32-value slice `s` of the rows (`s` counts slices along the row, whatever the
//! format's block length), row `r` of the panel, value `l` of the slice, half `h = l / 16`:
//! - 16-bit panels ([`Ints16`]): the signed `w` of [`super::super::blocks`] (`|w| ≤ 128`), at
//!   `[(l / 2) · 16 + r · 2 + l % 2]`: lane `r` of vector `l / 2` holds a pair, as `madd`
//!   and `dpwssd` take it. The f32 terms: `scale[h]`, and `coef[h] = min[h]`.
//! - 8-bit panels ([`Ints8`]): `u = w + offset` as a byte (`u ≤ 63` for every format but Q8_0,
//!   whose byte is its signed `w` itself, offset 0), at `[(l / 4) · 32 + r · 4 + l % 4]`: lane
//!   `r` of vector `l / 4` holds four, as `maddubs` and `dpbusd` take them. The f32 terms:
//!   `scale[h]`, and `coef[h] = min[h] − scale[h] · offset`, which multiplies `Σq` of the half.
//!
//! Rows past the matrix's end are zero (scales too), so their outputs are zero and discarded.
//! The scales are computed by one scalar function for every SIMD path, so every path's panel is
//! the same bits ([`pack`] with `Simd::Portable` is the reference the tests compare with).

use super::super::blocks::{half_fields, slice_ints, slice_scales_with};
use super::super::{f16_at, QuantFormat, QuantMatrix, BLOCK};
use super::Simd;

/// Weight rows per panel: the lanes of a 256-bit vector of 32-bit sums.
pub const NR: usize = 8;

/// The integers of one 32-value slice of a 16-bit panel (see the module header).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Ints16(pub [i16; BLOCK * NR]);

/// The integers of one 32-value slice of an 8-bit panel (see the module header).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Ints8(pub [u8; BLOCK * NR]);

/// The f32 terms of one slice, per half and row.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Scales {
    pub scale: [[f32; NR]; 2],
    pub coef: [[f32; NR]; 2],
}

/// The integer form of a panel: how one slice is laid out and what offset its values carry.
pub trait PanelInts: Copy + Send + 'static {
    const ZERO: Self;
    /// 16-bit values (two per lane) rather than bytes (four per lane).
    const WIDE: bool;
    /// The value each weight carries on top of its `w` in this form.
    fn offset(format: QuantFormat) -> i16;
    /// Stores row `r`'s 32 integers `w` (already offset by [`Self::offset`]).
    fn put(&mut self, r: usize, w: &[i16; BLOCK]);
    /// Row `r`'s value `l` as stored (`signed`: a Q8_0 byte, read as i8).
    fn get(&self, r: usize, l: usize, signed: bool) -> i32;
}

impl PanelInts for Ints16 {
    const ZERO: Self = Ints16([0; BLOCK * NR]);
    const WIDE: bool = true;

    fn offset(_: QuantFormat) -> i16 {
        0
    }

    fn put(&mut self, r: usize, w: &[i16; BLOCK]) {
        for (l, &v) in w.iter().enumerate() {
            self.0[(l / 2) * 2 * NR + r * 2 + l % 2] = v;
        }
    }

    fn get(&self, r: usize, l: usize, _: bool) -> i32 {
        self.0[(l / 2) * 2 * NR + r * 2 + l % 2] as i32
    }
}

impl PanelInts for Ints8 {
    const ZERO: Self = Ints8([0; BLOCK * NR]);
    const WIDE: bool = false;

    /// What makes every format's values unsigned bytes for `maddubs` / `dpbusd` (Q8_0 keeps its
    /// signed bytes; the kernels take their sign apart).
    fn offset(format: QuantFormat) -> i16 {
        match format {
            QuantFormat::Q4_0 => 8,
            QuantFormat::Q5_0 => 16,
            QuantFormat::Q6_K => 32,
            QuantFormat::Q3_K => 4,
            _ => 0,
        }
    }

    fn put(&mut self, r: usize, w: &[i16; BLOCK]) {
        for (l, &v) in w.iter().enumerate() {
            self.0[(l / 4) * 4 * NR + r * 4 + l % 4] = v as u8;
        }
    }

    fn get(&self, r: usize, l: usize, signed: bool) -> i32 {
        let b = self.0[(l / 4) * 4 * NR + r * 4 + l % 4];
        if signed {
            b as i8 as i32
        } else {
            b as i32
        }
    }
}

/// [`NR`] weight rows packed (see the module header); reused from panel to panel.
pub struct Panel<I> {
    pub ints: Vec<I>,
    pub scales: Vec<Scales>,
}

impl<I: PanelInts> Panel<I> {
    pub fn new() -> Panel<I> {
        Panel { ints: Vec::new(), scales: Vec::new() }
    }
}

impl<I: PanelInts> Default for Panel<I> {
    fn default() -> Self {
        Panel::new()
    }
}

/// Whether a format's slices have a scale (and min) per half of 16 values rather than one per 32.
pub fn halves(format: QuantFormat) -> bool {
    matches!(format, QuantFormat::Q2_K | QuantFormat::Q3_K | QuantFormat::Q6_K)
}

/// Whether the `coef · d·Σq` term can be nonzero for `format` in the form `I`.
pub fn has_coef<I: PanelInts>(format: QuantFormat) -> bool {
    format.has_min() || I::offset(format) != 0
}

/// Packs weight rows `r0 .. r0 + NR` of `w` (those that exist) into `panel`, unpacked by
/// `simd`'s code (every path writes the same bits).
pub fn pack<I: PanelInts>(simd: Simd, w: &QuantMatrix, r0: usize, panel: &mut Panel<I>) {
    let slices = w.cols() / BLOCK;
    let rows = NR.min(w.rows() - r0);
    panel.ints.resize(slices, I::ZERO);
    panel.scales.resize(slices, Scales::default());
    if rows < NR {
        // Rows past the matrix are zeros; a whole panel has every byte written below (zeroing
        // each panel first had cost 3% of a prefill).
        panel.scales.fill(Scales::default());
        panel.ints.fill(I::ZERO);
    }
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::Portable {
        // Safety: every SIMD path implies AVX2 and F16C (`Simd::available`).
        unsafe { super::panel_avx2::pack(w, r0, rows, panel) };
        return;
    }
    let _ = simd;
    let fields = half_fields(w.format());
    let halves = |b: &[u8]| [f16_at(b, fields[0]), fields.get(1).map_or(0.0, |&at| f16_at(b, at))];
    for r in 0..rows {
        pack_scales::<I>(w.format(), w.row(r0 + r), r, &mut panel.scales, halves);
    }
    pack_ints_portable(w, r0, rows, &mut panel.ints);
}

/// Asks for the blocks of weight rows `r0 .. r0 + NR` (those that exist) to be brought into L2
/// (a hint, x86-64 only). The GEMM calls it for the next panel before multiplying the current
/// one: packing reads each block once, straight from memory, and the first read of every block
/// had waited on it (most of the packing time).
pub fn prefetch(w: &QuantMatrix, r0: usize) {
    #[cfg(target_arch = "x86_64")]
    for r in r0..(r0 + NR).min(w.rows()) {
        for line in w.row(r).chunks(64) {
            // Safety: a prefetch is a hint and never faults; SSE is baseline on x86-64.
            unsafe { std::arch::x86_64::_mm_prefetch(line.as_ptr() as *const i8, std::arch::x86_64::_MM_HINT_T1) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, r0);
}

/// The integers of each slice of rows `r0 .. r0 + rows`, one value at a time.
fn pack_ints_portable<I: PanelInts>(w: &QuantMatrix, r0: usize, rows: usize, ints: &mut [I]) {
    let format = w.format();
    let per = format.block_len() / BLOCK;
    let offset = I::offset(format);
    let mut v = [0i16; BLOCK];
    for r in 0..rows {
        let row = w.row(r0 + r);
        for (s, slot) in ints.iter_mut().enumerate() {
            let b = &row[s / per * format.block_bytes()..][..format.block_bytes()];
            slice_ints(format, b, s % per, &mut v);
            for x in v.iter_mut() {
                *x += offset;
            }
            slot.put(r, &v);
        }
    }
}

/// Row `r`'s scales and coefficients, every slice (`row` is the row's blocks; `halves` reads a
/// block's f16 fields as `blocks::slice_scales_with` takes them).
#[inline(always)]
pub(super) fn pack_scales<I: PanelInts>(
    format: QuantFormat,
    row: &[u8],
    r: usize,
    out: &mut [Scales],
    halves: impl Fn(&[u8]) -> [f32; 2],
) {
    let per = format.block_len() / BLOCK;
    let offset = I::offset(format) as f32;
    for (i, b) in row.chunks_exact(format.block_bytes()).enumerate() {
        // The block's f16 fields once per block (a k-quant's eight slices share them).
        let halves = halves(b);
        for sub in 0..per {
            let (scale, min) = slice_scales_with(format, b, sub, halves);
            let sc = &mut out[i * per + sub];
            for h in 0..2 {
                sc.scale[h][r] = scale[h];
                sc.coef[h][r] = min[h] - scale[h] * offset;
            }
        }
    }
}
