//! The CPU backend: runs a *lowered* kernel (one that passed
//! [`crate::verify::verify_lowered`]) over a `[rows, width]` problem on the host. It is the
//! path real models take on a machine without a GPU, and the reference the CUDA results are
//! checked against.
//!
//! How it runs: rows are independent; each row is evaluated node by node over whole rows
//! (`Elem` values are rows of `width` values in reused buffers, `Uniform` values scalars),
//! then its outputs are stored. Large problems (more than [`PARALLEL_MIN_ELEMS`] elements)
//! are split into blocks of rows run in parallel with rayon; every row's arithmetic is the
//! same whichever thread runs it, so results do not depend on the split.
//!
//! # Semantics (the CUDA emitter follows the same list)
//!
//! - All float arithmetic is f32. `F16`/`BF16` are storage only: a load widens exactly; a
//!   cast to a half dtype rounds to nearest-even (the `half` crate; `cvt.rn` on the GPU); a
//!   half output stores the (already representable) value exactly.
//! - Casts: float → i32 truncates toward zero, saturating, NaN → 0; i32 → f32 rounds to
//!   nearest-even; i32/bool → half go through f32; bool → number is 1 / 0.
//! - i32 arithmetic wraps (two's complement); `Neg`/`Abs` wrap at `i32::MIN`; division
//!   truncates toward zero; division by zero is undefined on the GPU (the CPU gives 0).
//! - `Min`/`Max` are `fminf`/`fmaxf` (a NaN operand is ignored). `Pow` is `powf`.
//! - `sigmoid(x) = 1 / (1 + exp(-x))`; `rsqrt(x) = 1 / sqrt(x)`; `log`, `sqrt`, `tanh`,
//!   `sin`, `cos` are the f32 library functions; `exp` is [`math::exp`] (within 1.03 ulp,
//!   vectorisable) and `erf` is [`math::erf`] (within one ulp). Any implementation within a
//!   few ulp of exact meets the contract (CUDA's `expf`, `erff`, ... are within 2).
//! - Reductions: `Sum` over the row (order unspecified: compare with a tolerance), `Mean` =
//!   `Sum / width` (f32 division), `Max` = `fmaxf` over the row starting from `-inf`.
//! - `Rope` on a row of `n_heads * head_dim` columns (`head_dim` must be positive, even and
//!   divide `width`; otherwise the CPU returns [`CpuError::RopeHeadDim`]). For column `c`,
//!   `j = c % head_dim`; `x` is the `Row` parameter's row widened to f32.
//!   - `HalfSplit`: `half = head_dim / 2`, `i = j % half`; `j < half`:
//!     `out = x[c]*cos - x[c+half]*sin`, else `out = x[c]*cos + x[c-half]*sin`.
//!   - `Interleaved`: `i = j / 2`; even `c`: `out = x[c]*cos - x[c+1]*sin`; odd `c`:
//!     `out = x[c]*cos + x[c-1]*sin`.
//!   - `inv_freq = 1.0f / powf(theta, (float)(2*i) / (float)head_dim)`.
//!   - Llama-3 scaling (factor, low, high, orig): `wavelen = 6.2831855f / inv_freq`; if
//!     `wavelen < orig/high` keep; else if `wavelen > orig/low` use `inv_freq/factor`; else
//!     `smooth = (orig/wavelen - low) / (high - low)` and
//!     `inv_freq = (1-smooth)*inv_freq/factor + smooth*inv_freq`.
//!   - `RopeTable`: `inv_freq = table[i]` (`HalfSplit`) or `table[2*i]` (`Interleaved`): head
//!     0's entry at the pair's first column; the `Bcast` table has `width >= head_dim` entries.
//!   - `angle = (float)pos * inv_freq`; `cos`/`sin` are f32 `cosf`/`sinf` of it.
//! - A comptime `F16`/`BF16` parameter is given as an f32 and rounded to its dtype.
//!
//! # Arguments
//!
//! Parameters ([`CpuParam`]) in `Kernel::params` order and outputs ([`CpuOutArg`]) in
//! `Kernel::outputs` order, each in the variant of its kind and of its exact dtype. For
//! `rows` x `width` (both non-zero): `Row` tensors need `row_stride >= width` and at least
//! `(rows-1)*row_stride + width` elements (a longer view is fine); `Bcast` tensors exactly
//! `width`; `PerRow` tensors and outputs exactly `rows`. Everything is checked before any work,
//! so a rejected call writes nothing ([`CpuError`] names the argument). Padding between rows
//! of an output is never written.

mod args;
mod exec;
mod exp;
pub mod math;
mod plan;
pub mod rope;
mod vector;

pub use args::{CpuIn, CpuOut, CpuOutArg, CpuParam, CpuScalar};

use crate::ir::{DType, Kernel, ParamKind, ValueId};
use crate::verify::{verify_lowered, VerifyError};
use exec::{Ctx, In, OutView, Worker};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Problems with more elements than this run on several threads.
pub const PARALLEL_MIN_ELEMS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpuError {
    #[error("the CPU backend runs lowered kernels only: {0}")]
    NotLowered(#[from] VerifyError),
    #[error("empty problem ({rows} rows x {width} columns)")]
    Empty { rows: usize, width: usize },
    #[error("expected {} params and {} outputs, got {} and {}", params.0, outputs.0, params.1, outputs.1)]
    ArgCount { params: (usize, usize), outputs: (usize, usize) },
    #[error("`{name}`: expected {want}, got {got}")]
    ParamKind { name: String, want: String, got: String },
    #[error("`{name}`: {len} elements, need {want}")]
    Length { name: String, len: usize, want: String },
    #[error("`{name}`: row stride {stride} is smaller than the row width {width}")]
    Stride { name: String, stride: usize, width: usize },
    #[error("{node}: rope head_dim {head_dim} must be positive, even and divide the row width {width}")]
    RopeHeadDim { node: ValueId, head_dim: i32, width: usize },
    #[error("{node}: internal error in the CPU backend: {what}")]
    Internal { node: ValueId, what: String },
}

/// A lowered kernel checked and planned once, to run many times.
#[derive(Clone, Debug)]
pub struct CpuKernel {
    kernel: Kernel,
    plan: plan::Plan,
}

impl CpuKernel {
    /// Verify (lowered rules) and plan `k`.
    pub fn new(k: &Kernel) -> Result<CpuKernel, CpuError> {
        verify_lowered(k)?;
        Ok(CpuKernel { kernel: k.clone(), plan: plan::plan(k) })
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Run over `rows` x `width`; see the module docs for argument order and semantics.
    pub fn run(
        &self,
        params: &[CpuParam<'_>],
        outputs: &mut [CpuOutArg<'_>],
        rows: usize,
        width: usize,
    ) -> Result<(), CpuError> {
        let k = &self.kernel;
        args::validate(k, params, outputs, rows, width)?;
        // Half `Bcast` tensors are widened once here, not once per row.
        let widened: Vec<Option<Vec<f32>>> = params
            .iter()
            .map(|p| match p {
                CpuParam::Bcast(CpuIn::F16(d)) => Some(d.to_f32_vec()),
                CpuParam::Bcast(CpuIn::BF16(d)) => {
                    let mut v = vec![0.0; d.len()];
                    vector::widen_bf16(&mut v, d);
                    Some(v)
                }
                CpuParam::Bcast(CpuIn::E4M3(d)) => {
                    let mut v = vec![0.0; d.len()];
                    vector::widen_e4m3(&mut v, d);
                    Some(v)
                }
                CpuParam::Bcast(CpuIn::I8(d)) => {
                    let mut v = vec![0.0; d.len()];
                    vector::widen_i8(&mut v, d);
                    Some(v)
                }
                _ => None,
            })
            .collect();
        let ins = k
            .params
            .iter()
            .zip(params)
            .zip(&widened)
            .map(|((p, arg), wide)| to_in(&p.name, p.kind, arg, wide.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let ctx = Ctx::new(k, &self.plan, ins, width)?;

        // A scattered output's rows are not block-local: such kernels run as one block.
        let scatter = k.outputs.iter().any(|o| o.index.is_some());
        let parallel =
            rows > 1 && !scatter && rows.saturating_mul(width) > PARALLEL_MIN_ELEMS && rayon::current_num_threads() > 1;
        let block_rows = if parallel { rows.div_ceil((rayon::current_num_threads() * 4).min(rows)) } else { rows };
        let blocks = split_outputs(outputs, rows, block_rows);
        let run_block = |w: &mut Worker, (b, mut outs): (usize, Vec<OutView<'_>>)| -> Result<(), CpuError> {
            let first = b * block_rows;
            for lr in 0..block_rows.min(rows - first) {
                w.row(&ctx, first + lr)?;
                w.store(&ctx, first + lr, lr, &mut outs)?;
            }
            Ok(())
        };
        if parallel {
            blocks.into_par_iter().enumerate().try_for_each_init(|| Worker::new(&ctx), run_block)
        } else {
            let mut w = Worker::new(&ctx);
            blocks.into_iter().enumerate().try_for_each(|blk| run_block(&mut w, blk))
        }
    }
}

/// Verify, plan and run a lowered kernel once (see [`CpuKernel`] to reuse the plan).
pub fn run(
    k: &Kernel,
    params: &[CpuParam<'_>],
    outputs: &mut [CpuOutArg<'_>],
    rows: usize,
    width: usize,
) -> Result<(), CpuError> {
    CpuKernel::new(k)?.run(params, outputs, rows, width)
}

/// The row loop's view of a validated parameter.
fn to_in<'a>(name: &str, kind: ParamKind, arg: &CpuParam<'a>, wide: Option<&'a [f32]>) -> Result<In<'a>, CpuError> {
    Ok(match *arg {
        CpuParam::Row { data, row_stride: st } => match data {
            CpuIn::F32(d) => In::RowF32(d, st),
            CpuIn::F16(d) => In::RowF16(d, st),
            CpuIn::BF16(d) => In::RowBF16(d, st),
            CpuIn::I32(d) => In::RowI32(d, st),
            CpuIn::E4M3(d) => In::RowE4M3(d, st),
            CpuIn::I8(d) => In::RowI8(d, st),
        },
        CpuParam::Bcast(data) => match (data, wide) {
            (CpuIn::I32(d), _) => In::BcastI32(d),
            (CpuIn::F32(d), _) => In::BcastF32(d),
            (_, Some(w)) => In::BcastF32(w),
            (d, None) => {
                let got = format!("a bcast<{}> tensor that was not widened", d.dtype());
                return Err(CpuError::ParamKind { name: name.to_string(), want: "a widened half tensor".into(), got });
            }
        },
        CpuParam::PerRow(data) => In::PerRow(data),
        CpuParam::Comptime(s) => In::Scalar(match (kind.dtype(), s) {
            (DType::F16, CpuScalar::F32(x)) => CpuScalar::F32(math::round_f16(x)),
            (DType::BF16, CpuScalar::F32(x)) => CpuScalar::F32(math::round_bf16(x)),
            (DType::F8E4M3, CpuScalar::F32(x)) => CpuScalar::F32(math::round_e4m3(x)),
            (DType::I8, CpuScalar::F32(x)) => CpuScalar::F32(math::round_i8(x)),
            _ => s,
        }),
    })
}

/// Cut every output into per-block views: block `b` gets rows `b*block_rows ..`.
fn split_outputs<'o>(outputs: &'o mut [CpuOutArg<'_>], rows: usize, block_rows: usize) -> Vec<Vec<OutView<'o>>> {
    let n_blocks = rows.div_ceil(block_rows);
    let mut blocks: Vec<Vec<OutView<'o>>> = (0..n_blocks).map(|_| Vec::with_capacity(outputs.len())).collect();
    for o in outputs.iter_mut() {
        let (data, stride, row) = match o {
            CpuOutArg::Row { data, row_stride } => (data.reborrow(), *row_stride, true),
            CpuOutArg::PerRow(data) => (data.reborrow(), 1, false),
        };
        if n_blocks == 1 {
            // One block sees the whole tensor (a scattered output writes anywhere in it).
            blocks[0].push(OutView { data, stride, row });
            continue;
        }
        // validate() guarantees every block's first row lies inside the slice.
        for (b, chunk) in data.chunks(block_rows.saturating_mul(stride)).into_iter().take(n_blocks).enumerate() {
            blocks[b].push(OutView { data: chunk, stride, row });
        }
    }
    blocks
}
