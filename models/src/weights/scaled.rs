//! Checkpoints whose projections are stored as 8-bit values beside separate scales: FP8 E4M3
//! (compressed-tensors `float-quantized` / `naive-quantized`, and the `quant_method: "fp8"` of
//! DeepSeek-V3 and Hugging Face's FineGrainedFP8 with 2-D block scales in `weight_scale_inv`)
//! and INT8 (compressed-tensors `int-quantized`, W8A8 / SmoothQuant).
//!
//! A projection `X` is `X.weight` (`[out, in]`, e4m3 or int8) and `X.{scale}` (`weight_scale`
//! or `weight_scale_inv`), with an optional int8 `X.weight_zero_point` (asymmetric int8) and an
//! optional `X.input_scale` (static activation quantization). The value of `(o, i)` is
//! `(q − zero) · scale`, where the scale (and zero) of `(o, i)` is, by [`ScaleLayout`]: the one
//! value of the tensor, `[o]` of a per-channel vector, `[o, i / G]` of a group matrix, or
//! `[o / Bo, i / Bi]` of a block matrix. The loader reads `X.weight` as these f32 values.
//!
//! Activations: kiln multiplies the dequantized weights with its own f16 / bf16 / f32
//! activations, so an `input_scale` (static FP8 / INT8 activations) is consumed and not applied
//! — the products are the ones of the checkpoint's weights with unquantized activations, the
//! dequantize-then-f32 reference. Keeping the weights in 8 bits on the GPU (cuBLASLt FP8 / INT8)
//! is the open part of the GPU quantization work.
//!
//! Invariant: a value is `q · scale` (or `(q − z) · scale`) computed in f32 from the exact
//! f32 value of `q` (every e4m3 and int8 value is one) and the scale widened to f32, the same
//! arithmetic as a float64 reference rounded once when the product is exact (always for f16 /
//! bf16 scales times e4m3: 4 + 11 significant bits).

use kiln_runtime::device::quant::w8::W8Elem;

/// The 8-bit element type of a scaled checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaledElem {
    Fp8E4M3,
    Int8,
}

impl ScaledElem {
    /// The same element type as the GPU kernels name it.
    pub fn w8(self) -> W8Elem {
        match self {
            ScaledElem::Fp8E4M3 => W8Elem::Fp8E4M3,
            ScaledElem::Int8 => W8Elem::Int8,
        }
    }
}

/// Which values share a scale (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleLayout {
    Tensor,
    Channel,
    /// Groups of this many consecutive inputs of each output.
    Group(usize),
    /// `[rows, cols]` blocks.
    Block([usize; 2]),
}

/// A scaled checkpoint's `quantization_config`, as far as kiln reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaledConfig {
    pub elem: ScaledElem,
    pub layout: ScaleLayout,
    /// The scale tensor's suffix: `weight_scale`, or DeepSeek's `weight_scale_inv` (a
    /// multiplier despite its name, as its writers apply it).
    pub scale_name: &'static str,
    /// Asymmetric: `X.weight_zero_point` holds the zero of each scale.
    pub zero_point: bool,
}

/// The exact value of an OCP FP8 E4M3 ("fn") byte: sign, 4 exponent bits (bias 7), 3 mantissa
/// bits; exponent 0 is subnormal (`m/8 · 2⁻⁶`); `S.1111.111` is NaN and there is no infinity.
pub fn e4m3_to_f32(b: u8) -> f32 {
    W8Elem::Fp8E4M3.value(b)
}

/// The 8-bit values of one stored `[out, in]` weight as f32 (exact).
pub fn values(elem: ScaledElem, bytes: &[u8]) -> Vec<f32> {
    let elem = elem.w8();
    bytes.iter().map(|&b| elem.value(b)).collect()
}

/// The values that share a scale, as a `[bo, bi]` block of an `[out, in]` weight (per
/// tensor: the whole; per channel: a row; a group: `[1, G]`), checked against the scale
/// tensor's shape; or why they do not fit together. Scale `(o / bo, i / bi)` of a
/// `[⌈out / bo⌉, ⌈in / bi⌉]` matrix covers `(o, i)`.
pub fn scale_block(layout: ScaleLayout, [out, inp]: [usize; 2], scale_shape: &[usize]) -> Result<[usize; 2], String> {
    let block = match layout {
        ScaleLayout::Tensor => [out.max(1), inp.max(1)],
        ScaleLayout::Channel => [1, inp.max(1)],
        ScaleLayout::Group(g) if g > 0 && inp.is_multiple_of(g) => [1, g],
        ScaleLayout::Group(g) => return Err(format!("{inp} inputs are not whole groups of {g}")),
        ScaleLayout::Block([bo, bi]) if bo > 0 && bi > 0 => [bo, bi],
        ScaleLayout::Block(b) => return Err(format!("block {b:?}")),
    };
    let (rows, cols) = (out.div_ceil(block[0]), inp.div_ceil(block[1]));
    let numel: usize = scale_shape.iter().product();
    // [rows, cols], or a vector of its `rows · cols` entries ([out] per channel, [1] per tensor).
    let fits = numel == rows * cols
        && (scale_shape == [rows, cols] || scale_shape.len() <= 1 || (cols == 1 && scale_shape == [rows, 1]));
    if !fits {
        return Err(format!(
            "scale of shape {scale_shape:?} for a {out}×{inp} weight in {layout:?} (expected [{rows}, {cols}])"
        ));
    }
    Ok(block)
}

/// `[out, in]` f32 weights from their 8-bit values `q`, the scales `scale` (of shape
/// `scale_shape`) and the zero points `zero` (same shape), or why they do not fit together.
pub fn dequantize(
    cfg: &ScaledConfig,
    q: &[f32],
    [out, inp]: [usize; 2],
    scale: &[f32],
    scale_shape: &[usize],
    zero: Option<&[f32]>,
) -> Result<Vec<f32>, String> {
    if q.len() != out * inp {
        return Err(format!("{} values for a {out}×{inp} weight", q.len()));
    }
    let [bo, bi] = scale_block(cfg.layout, [out, inp], scale_shape)?;
    let cols = inp.div_ceil(bi);
    if scale.len() != out.div_ceil(bo) * cols {
        return Err(format!("{} scales of shape {scale_shape:?}", scale.len()));
    }
    if let Some(z) = zero {
        if z.len() != scale.len() {
            return Err(format!("{} zero points for {} scales", z.len(), scale.len()));
        }
    }
    let mut w = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            let k = (o / bo) * cols + i / bi;
            let z = zero.map_or(0.0, |z| z[k]);
            w[o * inp + i] = (q[o * inp + i] - z) * scale[k];
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_values_follow_the_ocp_encoding() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0); // exponent 7, mantissa 0
        assert_eq!(e4m3_to_f32(0xB8), -1.0);
        assert_eq!(e4m3_to_f32(0x7E), 448.0); // the largest finite value
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // the smallest subnormal
        assert_eq!(e4m3_to_f32(0x3C), 1.5);
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
        // Every byte but the NaNs against half's f16 reading of the same bits widened: e4m3
        // is f16 with 4 exponent bits (bias 7) and 3 mantissa bits, so shift into f16's fields.
        for b in 0u8..=255 {
            if b & 0x7F == 0x7F {
                continue;
            }
            let (s, e, m) = (u16::from(b >> 7), u16::from((b >> 3) & 0xF), u16::from(b & 7));
            let want = if e == 0 {
                (if s == 1 { -1.0 } else { 1.0 }) * f32::from(m) * 2f32.powi(-9)
            } else {
                half::f16::from_bits((s << 15) | ((e + 8) << 10) | (m << 7)).to_f32()
            };
            assert_eq!(e4m3_to_f32(b), want, "byte {b:#04x}");
        }
    }

    #[test]
    fn each_layout_scales_its_own_values_and_bad_shapes_are_refused() {
        let q: Vec<f32> = (0..4 * 6).map(|i| i as f32).collect();
        let cfg =
            |layout| ScaledConfig { elem: ScaledElem::Int8, layout, scale_name: "weight_scale", zero_point: false };
        let t = dequantize(&cfg(ScaleLayout::Tensor), &q, [4, 6], &[0.5], &[1], None).unwrap();
        assert_eq!(t[7], 3.5);
        let c = dequantize(&cfg(ScaleLayout::Channel), &q, [4, 6], &[1.0, 2.0, 3.0, 4.0], &[4, 1], None).unwrap();
        assert_eq!((c[5], c[6], c[23]), (5.0, 12.0, 92.0));
        let g = dequantize(
            &cfg(ScaleLayout::Group(3)),
            &q,
            [4, 6],
            &[1.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            &[4, 2],
            None,
        );
        assert_eq!(g.unwrap()[4], 40.0);
        // Blocks of 2×4 over 4×6: a 2×2 scale matrix, the last block column cut to 2 inputs.
        let b = dequantize(&cfg(ScaleLayout::Block([2, 4])), &q, [4, 6], &[1.0, 2.0, 3.0, 4.0], &[2, 2], None).unwrap();
        assert_eq!((b[0], b[5], b[13], b[23]), (0.0, 10.0, 39.0, 92.0));
        let z = dequantize(&cfg(ScaleLayout::Tensor), &q, [4, 6], &[2.0], &[1], Some(&[1.0])).unwrap();
        assert_eq!(z[0], -2.0);
        assert!(dequantize(&cfg(ScaleLayout::Channel), &q, [4, 6], &[1.0; 3], &[3, 1], None).is_err());
        assert!(dequantize(&cfg(ScaleLayout::Block([2, 4])), &q, [4, 6], &[1.0; 4], &[4, 1], None).is_err());
        assert!(dequantize(&cfg(ScaleLayout::Group(4)), &q, [4, 6], &[1.0; 8], &[4, 2], None).is_err());
    }
}
