//! Attention over a paged KV cache, through the `#[fused]` attention template
//! (`kiln_codegen::attention`): [`run`] takes the template instance (an [`AttnDef`]), the
//! queries, the cache and the step's [`AttnPlan`].
//!
//! Layout (shared by the CPU path and the CUDA kernels):
//! - per layer, a K pool and a V pool, each a `[num_blocks * block_size, n_kv_heads * head_dim]`
//!   tensor: one row per *slot*; slot `s` is token `s % block_size` of physical block
//!   `s / block_size`;
//! - a sequence's token `t` lives in slot `block_table[t / block_size] * block_size + t % block_size`;
//! - a batch is a flat list of new tokens (`q`: `[tokens, n_heads * head_dim]`), split into
//!   sequences by [`SeqAttn`]: the sequence's new tokens are rows `q_start .. q_start + q_len`,
//!   and its context after this step is `ctx_len` tokens (cached prefix + the new ones), so new
//!   token `j` sits at position `ctx_len - q_len + j` and attends, causally, to positions
//!   `0 ..= ctx_len - q_len + j` (decode is the case `q_len == 1`); the score modifier may mask
//!   more or change scores (ALiBi, softcap). A kernel with a `window` parameter (a sliding
//!   window) has the template itself visit only the last `window` keys of each query, so its
//!   work follows the window, not the context.
//!
//! The new tokens' K and V must be in the cache (the `rope_kv_write` kernel) before attention
//! runs. GQA/MQA: query head `h` reads KV head `h / (n_heads / n_kv_heads)`. A query whose
//! every key is masked gets zeros.

mod cpu;
mod cuda;
mod plan;

pub use plan::{AttnPlan, SPLIT_TOKENS};

use crate::device::fused::Arg;
use crate::{Device, Tensor, TensorError};
use kiln_codegen::attention::def::{AttnDef, AttnDefError};
use kiln_codegen::attention::{AttnKernel, Scale, MOD_PARAMS};
use kiln_codegen::ir::{DType, ParamKind};

/// One sequence of a batch, as attention sees it.
#[derive(Clone, Debug)]
pub struct SeqAttn<'a> {
    pub q_start: usize,
    pub q_len: usize,
    pub ctx_len: usize,
    pub block_table: &'a [u32],
}

/// The scales of one layer's FP8 KV pools: a stored e4m3 byte `b` of K stands for
/// `e4m3(b) * k`, of V for `e4m3(b) * v`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvScale {
    pub k: f32,
    pub v: f32,
}

/// One layer's K and V pools.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub head_dim: usize,
    /// `Some`: the pools hold e4m3 bytes (an FP8 KV cache), four to an `i32` column, so a
    /// pool row of `n_kv_heads * head_dim` values is `n_kv_heads * head_dim / 4` columns;
    /// `None`: the pools are in the queries' dtype.
    pub fp8: Option<KvScale>,
}

impl PagedKv<'_> {
    /// Values in a pool row (`n_kv_heads * head_dim`).
    pub fn width(&self) -> usize {
        if self.fp8.is_some() {
            self.k.cols() * 4
        } else {
            self.k.cols()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttnError {
    #[error("attention: {0}")]
    Shape(String),
    #[error("attention `{kernel}`: {what}")]
    Arg { kernel: &'static str, what: String },
    #[error("attention on {device}: {what}")]
    Device { device: String, what: String },
    #[error(transparent)]
    Def(#[from] AttnDefError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("attention `{kernel}` on the CPU: {source}")]
    Cpu { kernel: &'static str, source: kiln_codegen::cpu::CpuError },
    #[error("attention `{kernel}` on {device}: {source}")]
    Cuda { kernel: &'static str, device: String, source: crate::device::cuda_error::CudaError },
}

/// What both backends get once the arguments are checked.
pub(crate) struct Bound<'a> {
    pub kernel: &'a AttnKernel,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// The key window (`Some(w)`: keys `q_pos - w < k_pos <= q_pos` only), from the
    /// kernel's `window` comptime parameter when it has one and it is positive.
    pub window: Option<usize>,
}

/// Attention of `q` over `kv` as laid out by `plan`, into `out` (`q`'s shape and dtype), with
/// the template instance `def` and its comptime arguments in declaration order.
pub fn run(
    dev: &Device,
    def: &'static AttnDef,
    q: &Tensor,
    kv: &PagedKv<'_>,
    plan: &AttnPlan,
    comptimes: &[Arg<'_>],
    out: &mut Tensor,
) -> Result<(), AttnError> {
    let compiled = def.compiled(q.dtype().to_ir())?;
    let (_, spec) =
        def.spec(q.dtype().to_ir()).ok_or(AttnDefError::NoSpec { name: def.name, dtype: q.dtype().to_ir() })?;
    let b = bind(def, &compiled.kernel, q, kv, plan, comptimes, out)?;
    for (what, t) in [("q", q), ("the K pool", kv.k), ("the V pool", kv.v), ("out", &*out)] {
        if t.device() != dev {
            return Err(AttnError::Arg {
                kernel: def.name,
                what: format!("{what} is on {}, the call is on {}", t.device().label(), dev.label()),
            });
        }
    }
    match dev {
        Device::Cpu => cpu::run(def, &b, q, kv, plan, comptimes, out),
        Device::Cuda(backend) => cuda::run(backend, def, spec, &b, q, kv, plan, comptimes, out),
    }
}

fn bind<'a>(
    def: &'static AttnDef,
    k: &'a AttnKernel,
    q: &Tensor,
    kv: &PagedKv<'_>,
    plan: &AttnPlan,
    comptimes: &[Arg<'_>],
    out: &Tensor,
) -> Result<Bound<'a>, AttnError> {
    let bad = |what: String| Err(AttnError::Arg { kernel: def.name, what });
    let (hd, width) = (kv.head_dim, kv.width());
    if hd == 0 || !q.cols().is_multiple_of(hd) || !width.is_multiple_of(hd) || width == 0 {
        return bad(format!(
            "head_dim {hd} does not divide q ({} columns) and the pools ({width} values a row)",
            q.cols()
        ));
    }
    let (n_heads, n_kv_heads) = (q.cols() / hd, width / hd);
    if n_heads % n_kv_heads != 0 {
        return bad(format!("{n_heads} query heads is not a multiple of {n_kv_heads} KV heads"));
    }
    if kv.v.cols() != kv.k.cols() || kv.v.rows() != kv.k.rows() {
        return bad(format!("K pool is {}x{}, V pool {}x{}", kv.k.rows(), kv.k.cols(), kv.v.rows(), kv.v.cols()));
    }
    if (out.rows(), out.cols()) != (q.rows(), q.cols()) {
        return bad(format!("out is {}x{}, q {}x{}", out.rows(), out.cols(), q.rows(), q.cols()));
    }
    if q.rows() != plan.n_tokens() {
        return bad(format!("q has {} rows, the plan {} tokens", q.rows(), plan.n_tokens()));
    }
    if kv.k.rows() < plan.pool_blocks * plan.block_size {
        return bad(format!(
            "the pools hold {} slots, the plan was checked against {} blocks of {}",
            kv.k.rows(),
            plan.pool_blocks,
            plan.block_size
        ));
    }
    // FP8 pools are e4m3 bytes in i32 words; other pools are in q's dtype.
    let pool_dtype = if kv.fp8.is_some() { crate::DType::I32 } else { q.dtype() };
    for (what, t, want) in [("the K pool", kv.k, pool_dtype), ("the V pool", kv.v, pool_dtype), ("out", out, q.dtype())]
    {
        if t.dtype() != want {
            return bad(format!("{what} is {}, {} expected (q is {})", t.dtype(), want, q.dtype()));
        }
    }
    if let Some(s) = kv.fp8 {
        if !(s.k.is_finite() && s.k > 0.0 && s.v.is_finite() && s.v > 0.0) {
            return bad(format!("FP8 KV scales must be positive and finite, got k {} and v {}", s.k, s.v));
        }
    }
    if out.shares_storage(q) || out.shares_storage(kv.k) || out.shares_storage(kv.v) {
        return bad("out must not share storage with q or the pools".into());
    }
    let want = k.comptimes();
    if comptimes.len() != want.len() {
        return bad(format!("takes {} comptime arguments, {} given", want.len(), comptimes.len()));
    }
    for (p, a) in want.iter().zip(comptimes) {
        let ok = matches!(
            (p.kind, a),
            (ParamKind::Comptime(DType::F32 | DType::F16 | DType::BF16), Arg::F32(_))
                | (ParamKind::Comptime(DType::I32), Arg::I32(_))
                | (ParamKind::Comptime(DType::Bool), Arg::Bool(_))
        );
        if !ok {
            return bad(format!("`{}` is a {:?}, got {}", p.name, p.kind, a.describe()));
        }
    }
    let scale = match k.scale {
        Scale::Const(x) => x,
        Scale::Param(i) => match comptimes.get(i as usize - MOD_PARAMS.len()) {
            Some(Arg::F32(x)) => *x,
            _ => return bad("the scale argument is not an f32".into()),
        },
    };
    let window = match k.window_param().and_then(|i| comptimes.get(i - MOD_PARAMS.len())) {
        Some(Arg::I32(w)) if *w > 0 => Some(*w as usize),
        _ => None,
    };
    Ok(Bound { kernel: k, n_heads, n_kv_heads, head_dim: hd, scale, window })
}
