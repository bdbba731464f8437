//! The one seam every projection of every architecture goes through: [`linear`] computes
//! `out = x · Wᵀ` for a [`Weight`], picking the kernel by the weight's storage and the device.
//! Models never name a format or a GEMM; a new storage kind (quantized blocks, FP8, a shard)
//! is a new `Weight` variant and a new arm here, and no model changes.
//!
//! Invariant: a `Weight` is `[out_features, in_features]` (HF's layout of `nn.Linear`), and
//! `linear` takes `x: [rows, in_features]` into `out: [rows, out_features]`.

use crate::device::quant::activations::{activations, quantize_row8_for, quantize_row_for, Activations};
use crate::device::quant::cpu::{matmul_q16, matmul_q8, Simd};
use crate::device::quant::QuantMatrix;
use crate::{matmul, DType, Device, GemmError, Tensor};

/// A projection's weight, in the form it is stored on its device.
#[derive(Clone, Debug)]
pub enum Weight {
    /// A dense `[out, in]` matrix in a float storage dtype (f32, f16, bf16).
    Dense(Tensor),
    /// GGML blocks (Q4_0, Q4_1, Q8_0) in host memory, multiplied on the CPU without a dense
    /// copy (see `device::quant`).
    Quantized(QuantMatrix),
}

impl Weight {
    /// The dense matrix, for the few uses that need one (a tied embedding's row gather).
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Weight::Dense(t) => Some(t),
            Weight::Quantized(_) => None,
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
        Weight::Quantized(q) => linear_quant_cpu(dev, x, q, out),
    }
}

/// A quantized weight on the CPU: f32 activations quantized to integer blocks (16-bit, or
/// llama.cpp's 8-bit ones; `device::quant::activations`), integer dot products
/// (`device::quant::cpu`).
fn linear_quant_cpu(dev: &Device, x: &Tensor, w: &QuantMatrix, out: &mut Tensor) -> Result<(), GemmError> {
    if !dev.is_cpu() || !x.device().is_cpu() || !out.device().is_cpu() {
        return Err(GemmError::Unsupported {
            dtype: x.dtype(),
            device: format!("{dev:?} for a {} weight", w.format()),
        });
    }
    if x.dtype() != DType::F32 || out.dtype() != DType::F32 {
        return Err(GemmError::DTypes { a: x.dtype(), b: DType::F32, out: out.dtype() });
    }
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    if w.cols() != k || out.rows() != m || out.cols() != n {
        return Err(GemmError::Shape(format!(
            "x {m}×{k} · {}ᵀ ({}×{}) into {}×{}",
            w.format(),
            n,
            w.cols(),
            out.rows(),
            out.cols()
        )));
    }
    // Quantize (and so copy) the activations before writing: `x` and `out` may share storage.
    static SIMD: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    let simd = *SIMD.get_or_init(Simd::detect);
    let mode = activations();
    let y = x.with_host::<f32, _>(|v| match mode {
        Activations::Bits16 => {
            let xq: Vec<_> = (0..m)
                .map(|r| {
                    let mut q = Vec::with_capacity(k / 32);
                    quantize_row_for(mode, w.format(), v.row(r), &mut q);
                    q
                })
                .collect();
            matmul_q16(simd, &xq, w)
        }
        Activations::Ggml8 => {
            let mut wide = Vec::with_capacity(k / 32);
            let xq: Vec<_> = (0..m)
                .map(|r| {
                    let mut q = Vec::with_capacity(k / 32);
                    quantize_row8_for(w.format(), v.row(r), &mut wide, &mut q);
                    q
                })
                .collect();
            matmul_q8(simd, &xq, w)
        }
    })?;
    out.with_host_mut::<f32, _>(|mut o| {
        for r in 0..m {
            o.row_mut(r).copy_from_slice(&y[r * n..(r + 1) * n]);
        }
    })?;
    Ok(())
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
