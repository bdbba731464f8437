//! The one seam every projection of every architecture goes through: [`linear`] computes
//! `out = x · Wᵀ` for a [`Weight`], picking the kernel by the weight's storage and the device.
//! Models never name a format or a GEMM; a new storage kind (quantized blocks, FP8, a shard)
//! is a new `Weight` variant and a new arm here, and no model changes.
//!
//! Invariant: a `Weight` is `[out_features, in_features]` (HF's layout of `nn.Linear`), and
//! `linear` takes `x: [rows, in_features]` into `out: [rows, out_features]`.

use crate::device::quant::act_quant::ActQuant;
use crate::device::quant::activations::{
    activations, quantize_row8_for, quantize_row_for, same_blocks, ActBlock, ActBlock8, Activations,
};
use crate::device::quant::cpu::gemm::{gemm_q16, gemm_q8};
use crate::device::quant::cpu::gemv::{gemv_q16, gemv_q8, GEMV_MAX_ROWS};
use crate::device::quant::cpu::Simd;
use crate::device::quant::int4::Int4Matrix;
use crate::device::quant::int4_cuda::{linear_int4_cuda, Int4Cuda};
use crate::device::quant::w8_cuda::{linear_w8_cuda, linear_w8_cuda_quantized, row_codes, W8Cuda};
use crate::device::quant::{QuantFormat, QuantMatrix};
use crate::{matmul, DType, Device, GemmError, Tensor};
use std::sync::{Arc, Mutex};

/// A projection's weight, in the form it is stored on its device.
#[derive(Clone, Debug)]
pub enum Weight {
    /// A dense `[out, in]` matrix in a float storage dtype (f32, f16, bf16).
    Dense(Tensor),
    /// GGML blocks (any `QuantFormat`) in host memory, multiplied on the CPU without a dense
    /// copy (see `device::quant`).
    Quantized(QuantMatrix),
    /// Quantized matrices of different formats stacked along rows (a fused q/k/v whose v is
    /// Q8_0 and q, k Q5_0, as llama.cpp's Q4_K_M recipe writes them): each part multiplied in
    /// its own format into its own columns of the output.
    QuantizedRows(Vec<QuantMatrix>),
    /// 4-bit values with a scale and zero per group of inputs (AWQ, GPTQ) in host memory,
    /// multiplied on the CPU without a dense copy (see `device::quant::int4`): one matrix, or
    /// parts stacked along rows whose grouping differs (act-order q, k and v of one fused
    /// projection), each multiplied into its own columns of the output.
    Int4(Vec<Int4Matrix>),
    /// The same 4-bit weights in GPU memory (`device::quant::int4_cuda`: a GEMV for decode,
    /// dequantize + cuBLAS for larger batches), parts stacked along rows as in `Int4`.
    Int4Cuda(Vec<Int4Cuda>),
    /// 8-bit weights with block scales (FP8 E4M3, INT8) in GPU memory
    /// (`device::quant::w8_cuda`: a GEMV for decode, dequantize + cuBLAS above), parts stacked
    /// along rows as in `Int4`.
    W8Cuda(Vec<W8Cuda>),
    /// W8A8 on the CPU: the dense f32 values of an 8-bit weight, and activations replaced by
    /// their quantization before the product — e4m3 per row or per 128 inputs (the twin of
    /// `W8Cuda` uploaded as FP8 W8A8), or int8 per row (INT8 W8A8, `act_quant::ActQuant`).
    W8a8Cpu(Tensor, ActQuant),
    /// Weights of different kinds stacked along rows, each multiplied into its own columns of
    /// the output, in order (on a GPU, a GGUF Q4_K_M's fused q/k/v whose q and k are 4-bit
    /// blocks in the int4 kernels and whose v is Q6_K, loaded dense).
    Rows(Vec<Weight>),
    /// A weight whose products also record the largest |x| of each input column they see
    /// (a calibration pass: SmoothQuant's activation statistics), then multiply as the inner
    /// weight does.
    Observed(Box<Weight>, Arc<InputStats>),
}

/// The largest |x| of each input column the products of an [`Weight::Observed`] weight saw.
#[derive(Debug, Default)]
pub struct InputStats {
    max_abs: Mutex<Vec<f32>>,
}

impl InputStats {
    /// Per input column, the largest |x| seen so far (empty before any product).
    pub fn max_abs(&self) -> Vec<f32> {
        self.max_abs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, x: &Tensor) -> Result<(), GemmError> {
        let (rows, cols) = (x.rows(), x.cols());
        let v = x.to_host_f32()?;
        let mut m = self.max_abs.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() != cols {
            *m = vec![0.0; cols];
        }
        // `to_host_f32` gathers the rows densely: row r is v[r * cols..].
        for row in v.chunks_exact(cols.max(1)).take(rows) {
            for (a, &x) in m.iter_mut().zip(row) {
                *a = a.max(x.abs());
            }
        }
        Ok(())
    }
}

impl Weight {
    /// The dense matrix, for the few uses that need one (a tied embedding's row gather).
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Weight::Dense(t) => Some(t),
            Weight::Quantized(_)
            | Weight::QuantizedRows(_)
            | Weight::Int4(_)
            | Weight::Int4Cuda(_)
            | Weight::W8Cuda(_)
            | Weight::W8a8Cpu(..)
            | Weight::Rows(_) => None,
            Weight::Observed(w, _) => w.as_dense(),
        }
    }

    /// Output features: the rows of the `[out, in]` matrix (of every part, stacked).
    pub fn out_features(&self) -> usize {
        match self {
            Weight::Dense(t) | Weight::W8a8Cpu(t, _) => t.rows(),
            Weight::Quantized(q) => q.rows(),
            Weight::QuantizedRows(qs) => qs.iter().map(QuantMatrix::rows).sum(),
            Weight::Int4(ps) => ps.iter().map(Int4Matrix::rows).sum(),
            Weight::Int4Cuda(ps) => ps.iter().map(Int4Cuda::rows).sum(),
            Weight::W8Cuda(ps) => ps.iter().map(W8Cuda::rows).sum(),
            Weight::Rows(ws) => ws.iter().map(Weight::out_features).sum(),
            Weight::Observed(w, _) => w.out_features(),
        }
    }
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Weight {
        Weight::Dense(t)
    }
}

/// `out = x · Wᵀ`: `x` is `[rows, in]`, `out` is `[rows, out]`.
pub fn linear(dev: &Device, x: &Tensor, w: &Weight, out: &mut Tensor) -> Result<(), GemmError> {
    match w {
        Weight::Dense(t) => matmul(dev, x, t, out),
        Weight::Quantized(q) => linear_quant_cpu(dev, x, std::slice::from_ref(q), out),
        Weight::QuantizedRows(parts) => linear_quant_cpu(dev, x, parts, out),
        Weight::Int4(parts) => linear_int4_cpu(dev, x, parts, out),
        Weight::Int4Cuda(parts) => linear_int4_cuda(x, parts, out),
        Weight::W8Cuda(parts) => linear_w8_cuda(x, parts, out),
        Weight::W8a8Cpu(w, act) => linear_w8a8_cpu(dev, x, w, *act, out),
        Weight::Rows(parts) => linear_rows(dev, x, parts, out),
        Weight::Observed(w, stats) => {
            stats.record(x)?;
            linear(dev, x, w, out)
        }
    }
}

/// Activations already quantized per row by the kernel that made them (a norm fused with the
/// quantization, `rms_norm_quant_e4m3` / `rms_norm_quant_i8`): `q` `[rows, k]` e4m3 or int8
/// codes (rows contiguous), `scales` the `[rows]` f32 scales; `q · s` stands for the row.
#[derive(Clone, Copy, Debug)]
pub struct QuantizedRows<'a> {
    pub q: &'a Tensor,
    pub scales: &'a Tensor,
}

/// The code type of activation rows `w` multiplies quantized per row with one scale a row —
/// e4m3 for FP8 W8A8, int8 for INT8 W8A8 (scales per output channel or tensor, on the GPU or
/// the CPU's twin): the norm before it may then emit its output so, and [`linear_quantized`]
/// takes it instead of [`linear`] quantizing it again. `None` for every other weight.
pub fn quantized_rows_for(w: &Weight) -> Option<DType> {
    match w {
        Weight::W8Cuda(parts) => row_codes(parts),
        Weight::W8a8Cpu(_, act) => act.row_codes(),
        _ => None,
    }
}

/// `out = x · Wᵀ` from rows a kernel already quantized ([`QuantizedRows`]), for weights whose
/// [`quantized_rows_for`] is the rows' code type: the same product [`linear`] computes after
/// its own quantization of the rows those codes stand for.
pub fn linear_quantized(dev: &Device, x: QuantizedRows<'_>, w: &Weight, out: &mut Tensor) -> Result<(), GemmError> {
    let refused = || GemmError::Shape(format!("{} rows for a weight that does not take them", x.q.dtype()));
    if quantized_rows_for(w) != Some(x.q.dtype()) {
        return Err(refused());
    }
    match w {
        Weight::W8Cuda(parts) => linear_w8_cuda_quantized(x.q, x.scales, parts, out),
        Weight::W8a8Cpu(w, _) => {
            let (m, k) = (x.q.rows(), x.q.cols());
            if x.scales.vector_len() != Some(m) || x.scales.dtype() != DType::F32 {
                return Err(GemmError::DTypes { a: x.q.dtype(), b: x.scales.dtype(), out: out.dtype() });
            }
            let s = x.scales.to_host_f32()?;
            let mut v = x.q.to_host_f32()?;
            v.chunks_mut(k.max(1)).zip(&s).for_each(|(row, s)| row.iter_mut().for_each(|q| *q *= s));
            matmul(dev, &Tensor::from_host(dev, &v, m, k)?, w, out)
        }
        _ => Err(refused()),
    }
}

/// Weights stacked along rows: part `p` into its own columns of `out` (a column view: every
/// product writes rows of any stride).
fn linear_rows(dev: &Device, x: &Tensor, parts: &[Weight], out: &mut Tensor) -> Result<(), GemmError> {
    let n: usize = parts.iter().map(Weight::out_features).sum();
    if parts.is_empty() || out.rows() != x.rows() || out.cols() != n {
        return Err(GemmError::Shape(format!(
            "x {}×{} · stacked ({n} rows) into {}×{}",
            x.rows(),
            x.cols(),
            out.rows(),
            out.cols()
        )));
    }
    let mut at = 0;
    for w in parts {
        let width = w.out_features();
        linear(dev, x, w, &mut out.view_cols(at, width)?)?;
        at += width;
    }
    Ok(())
}

/// The CPU's W8A8: each row of `x` quantized as `act` says (e4m3 as the GPU's FP8 kernels do
/// it, or int8 per row; the values it stands for, in f32), then the dense product.
fn linear_w8a8_cpu(dev: &Device, x: &Tensor, w: &Tensor, act: ActQuant, out: &mut Tensor) -> Result<(), GemmError> {
    if !dev.is_cpu() || x.dtype() != DType::F32 {
        return Err(GemmError::Unsupported { dtype: x.dtype(), device: format!("{dev:?} for the CPU's FP8 W8A8") });
    }
    let (m, k) = (x.rows(), x.cols());
    let mut xs: Vec<f32> = x.with_host::<f32, _>(|v| (0..m).flat_map(|r| v.row(r).to_vec()).collect())?;
    xs.chunks_mut(k.max(1)).for_each(|row| act.fake_quantize(row));
    matmul(dev, &Tensor::from_host(dev, &xs, m, k)?, w, out)
}

/// A packed 4-bit weight on the CPU: f32 activations, the weight unpacked a word at a time.
fn linear_int4_cpu(dev: &Device, x: &Tensor, parts: &[Int4Matrix], out: &mut Tensor) -> Result<(), GemmError> {
    if !dev.is_cpu() || !x.device().is_cpu() || !out.device().is_cpu() {
        return Err(GemmError::Unsupported { dtype: x.dtype(), device: format!("{dev:?} for a 4-bit group weight") });
    }
    if x.dtype() != DType::F32 || out.dtype() != DType::F32 {
        return Err(GemmError::DTypes { a: x.dtype(), b: DType::F32, out: out.dtype() });
    }
    let (m, k, n) = (x.rows(), x.cols(), parts.iter().map(Int4Matrix::rows).sum::<usize>());
    if parts.is_empty() || parts.iter().any(|w| w.cols() != k) || out.rows() != m || out.cols() != n {
        return Err(GemmError::Shape(format!("x {m}×{k} · int4ᵀ ({n} rows) into {}×{}", out.rows(), out.cols())));
    }
    // Computed before writing: `x` and `out` may share storage.
    let xs: Vec<f32> = x.with_host::<f32, _>(|v| (0..m).flat_map(|r| v.row(r).to_vec()).collect())?;
    let ys: Vec<Vec<f32>> = parts.iter().map(|w| w.matmul(&xs, m)).collect();
    write_parts(out, parts.iter().map(Int4Matrix::rows), &ys)
}

/// `out`'s rows from the products of weights stacked along rows: part `p` (`widths[p]` output
/// columns, `ys[p]` row-major `[rows, widths[p]]`) fills its own columns, after the parts
/// before it.
fn write_parts(
    out: &mut Tensor,
    widths: impl Iterator<Item = usize> + Clone,
    ys: &[Vec<f32>],
) -> Result<(), GemmError> {
    out.with_host_mut::<f32, _>(|mut o| {
        for r in 0..o.rows {
            let row = o.row_mut(r);
            let mut at = 0;
            for (nw, y) in widths.clone().zip(ys) {
                row[at..at + nw].copy_from_slice(&y[r * nw..(r + 1) * nw]);
                at += nw;
            }
        }
    })?;
    Ok(())
}

/// A quantized weight on the CPU: f32 activations quantized to integer blocks (16-bit, or
/// llama.cpp's 8-bit ones; `device::quant::activations`), integer dot products
/// (`device::quant::cpu`).
fn linear_quant_cpu(dev: &Device, x: &Tensor, parts: &[QuantMatrix], out: &mut Tensor) -> Result<(), GemmError> {
    let formats = parts.iter().map(|w| w.format().name()).collect::<Vec<_>>().join("+");
    if !dev.is_cpu() || !x.device().is_cpu() || !out.device().is_cpu() {
        return Err(GemmError::Unsupported { dtype: x.dtype(), device: format!("{dev:?} for a {formats} weight") });
    }
    if x.dtype() != DType::F32 || out.dtype() != DType::F32 {
        return Err(GemmError::DTypes { a: x.dtype(), b: DType::F32, out: out.dtype() });
    }
    let (m, k, n) = (x.rows(), x.cols(), parts.iter().map(QuantMatrix::rows).sum::<usize>());
    if parts.is_empty() || parts.iter().any(|w| w.cols() != k) || out.rows() != m || out.cols() != n {
        let widths: Vec<usize> = parts.iter().map(QuantMatrix::cols).collect();
        return Err(GemmError::Shape(format!(
            "x {m}×{k} · {formats}ᵀ ({n}×{widths:?}) into {}×{}",
            out.rows(),
            out.cols()
        )));
    }
    static SIMD: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    let simd = *SIMD.get_or_init(Simd::detect);
    let mode = activations();
    // Every product computed (and so the activations copied) before writing: `x` and `out`
    // may share storage.
    let ys = x.with_host::<f32, _>(|v| {
        // Parts whose formats take the same activation blocks share one quantization of the rows.
        let mut quantized: Vec<(QuantFormat, QuantRows)> = Vec::new();
        let mut ys = Vec::with_capacity(parts.len());
        for w in parts {
            let at = match quantized.iter().position(|(f, _)| same_blocks(mode, *f, w.format())) {
                Some(at) => at,
                None => {
                    quantized.push((w.format(), QuantRows::new(mode, w.format(), (0..m).map(|r| v.row(r)), k)));
                    quantized.len() - 1
                }
            };
            ys.push(quantized[at].1.times(simd, w));
        }
        ys
    })?;
    write_parts(out, parts.iter().map(QuantMatrix::rows), &ys)
}

/// Activation rows quantized for the weights of one kind of format.
enum QuantRows {
    Bits16(Vec<Vec<ActBlock>>),
    Ggml8(Vec<Vec<ActBlock8>>),
}

impl QuantRows {
    /// The rows `xs` (`k` wide each) quantized as `mode` says for a `format` weight.
    fn new<'a>(mode: Activations, format: QuantFormat, xs: impl Iterator<Item = &'a [f32]>, k: usize) -> QuantRows {
        let mut wide = Vec::with_capacity(k / 32);
        match mode {
            Activations::Bits16 => QuantRows::Bits16(
                xs.map(|x| {
                    let mut q = Vec::with_capacity(k / 32);
                    quantize_row_for(mode, format, x, &mut q);
                    q
                })
                .collect(),
            ),
            Activations::Ggml8 => QuantRows::Ggml8(
                xs.map(|x| {
                    let mut q = Vec::with_capacity(k / 32);
                    quantize_row8_for(format, x, &mut wide, &mut q);
                    q
                })
                .collect(),
            ),
        }
    }

    /// `x · wᵀ` (`[rows, w.rows()]`, row-major): the few-rows product up to
    /// [`GEMV_MAX_ROWS`] rows (decode), where packing panels would cost as much as the products;
    /// the blocked GEMM above (prefill). Both compute a row to the same bits, so a row's result
    /// does not depend on the batch it came in (a seeded request reproduces under load).
    fn times(&self, simd: Simd, w: &QuantMatrix) -> Vec<f32> {
        match self {
            QuantRows::Bits16(xq) if xq.len() <= GEMV_MAX_ROWS => gemv_q16(simd, xq, w),
            QuantRows::Bits16(xq) => gemm_q16(simd, xq, w),
            QuantRows::Ggml8(xq) if xq.len() <= GEMV_MAX_ROWS => gemv_q8(simd, xq, w),
            QuantRows::Ggml8(xq) => gemm_q8(simd, xq, w),
        }
    }
}

/// Rows `ids` of a weight that is not dense (an embedding table kept quantized), each
/// dequantized into `out` (`[ids, cols]` f32 on the CPU): only the rows read are ever dense.
/// `ids` is an i32 vector on the CPU. A dense table is gathered by the model's own kernel.
pub fn gather_rows_quantized(w: &Weight, ids: &Tensor, out: &mut Tensor) -> Result<(), GemmError> {
    let Weight::Quantized(q) = w else {
        return Err(GemmError::Shape("gather_rows_quantized: the table is dense".into()));
    };
    if !ids.device().is_cpu() || !out.device().is_cpu() || out.dtype() != DType::F32 {
        return Err(GemmError::Unsupported { dtype: out.dtype(), device: format!("a {} row gather", q.format()) });
    }
    let rows: Vec<i32> = ids.to_host::<i32>()?;
    if out.rows() != rows.len() || out.cols() != q.cols() {
        let (r, c) = (out.rows(), out.cols());
        return Err(GemmError::Shape(format!("{} ids into {r}×{c} from {}×{}", rows.len(), q.rows(), q.cols())));
    }
    if let Some(bad) = rows.iter().find(|&&r| r < 0 || r as usize >= q.rows()) {
        return Err(GemmError::Shape(format!("row {bad} of a {}-row table", q.rows())));
    }
    out.with_host_mut::<f32, _>(|mut o| {
        for (i, &r) in rows.iter().enumerate() {
            q.dequantize_row(r as usize, o.row_mut(i));
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::quant::fp8_lt::{quantize_groups_e4m3, quantize_row_e4m3, w8a8_form, ActScale, GROUP};
    use crate::device::quant::w8::{W8Elem, W8Matrix};

    /// The FP8 W8A8 product in the integer domain: `Σ_g s_x,g · s_w · Σ q_w · q_x` in f64.
    fn exact(x: &[f32], k: usize, w: &W8Matrix, act: ActScale) -> Vec<f64> {
        let v = |b: u8| f64::from(W8Elem::Fp8E4M3.value(b));
        let ([bo, bi], sc) = (w.block(), w.scale_cols());
        let mut out = vec![];
        for xi in x.chunks(k) {
            let (sx, qx) = match act {
                ActScale::Row => (vec![quantize_row_e4m3(xi).0], quantize_row_e4m3(xi).1),
                ActScale::Group => quantize_groups_e4m3(xi),
            };
            let g = k / sx.len();
            for (j, row) in w.bytes().chunks(k).enumerate() {
                let d: f64 = (0..k)
                    .step_by(g)
                    .map(|i0| {
                        let p: f64 = (i0..i0 + g).map(|i| v(row[i]) * v(qx[i])).sum();
                        p * f64::from(sx[i0 / g]) * f64::from(w.scales()[(j / bo) * sc + i0 / bi])
                    })
                    .sum();
                out.push(d);
            }
        }
        out
    }

    #[test]
    fn the_cpu_w8a8_twin_is_the_integer_domain_product() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let cases = [
            (32usize, 256usize, [1usize, 256], ActScale::Row),
            (48, 384, [GROUP, GROUP], ActScale::Group),
            (16, 64, [16, 64], ActScale::Row),
        ];
        for (rows, k, block, act) in cases {
            let bytes: Vec<u8> = (0..rows * k).map(|_| (next() % 0x7E) as u8 | ((next() & 1) << 7) as u8).collect();
            let n = rows.div_ceil(block[0]) * k.div_ceil(block[1]);
            let scales = (0..n).map(|i| 0.001 * (1 + i % 5) as f32).collect();
            let w = W8Matrix::new((rows, k), W8Elem::Fp8E4M3, bytes, scales, block).unwrap();
            // Blocks take W8A8 only when asked for (`KILN_W8A8_BLOCKS`, unset here).
            let want = if act == ActScale::Row { Some(act) } else { None };
            assert_eq!(w8a8_form(std::slice::from_ref(&w)), want, "{block:?}");
            let m = 3;
            let x: Vec<f32> = (0..m * k).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let dense = Tensor::from_host(&Device::Cpu, &w.dequantize(), rows, k).unwrap();
            let mut out = Tensor::zeros(&Device::Cpu, DType::F32, m, rows).unwrap();
            let xt = Tensor::from_host(&Device::Cpu, &x, m, k).unwrap();
            linear(&Device::Cpu, &xt, &Weight::W8a8Cpu(dense, ActQuant::E4m3(act)), &mut out).unwrap();
            let got = out.to_host_f32().unwrap();
            let want = exact(&x, k, &w, act);
            let top = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() <= 1e-5 * top, "{block:?}: {g} vs {w}");
            }
            // Not the W8A16 product: the activations were quantized.
            let mut w16 = Tensor::zeros(&Device::Cpu, DType::F32, m, rows).unwrap();
            let dense = Tensor::from_host(&Device::Cpu, &w.dequantize(), rows, k).unwrap();
            linear(&Device::Cpu, &xt, &Weight::Dense(dense), &mut w16).unwrap();
            assert_ne!(w16.to_host_f32().unwrap(), got, "{block:?}");
        }
    }
}
