//! Choosing among cuBLASLt's FP8 algorithms by timing them, where its heuristic's first pick
//! is not the fastest (`kiln-check-w8 --lt-sweep` measures how often and by how much).
//!
//! With `KILN_FP8_LT_TUNE=N` (N > 1), a plan made for a new shape times the heuristic's first
//! N algorithms on the product's own operands (one warm-up and three timed launches each,
//! CUDA events) and keeps the fastest; the winner is remembered for the shape's *bucket* — the
//! same product with its row count rounded up to a power of two — and later plans of that
//! bucket take it when cuBLASLt accepts it for their rows (`cublasLtMatmulAlgoCheck`), so a
//! serving step's many row counts pay for the timing once per bucket, not once each (timing
//! every new row count made prefill slower: see `Plan`). Plans are made on a step's eager
//! run, before any CUDA graph capture; timing synchronizes the stream once per bucket.
//!
//! Invariant: tuning changes which algorithm computes a product, never its inputs or output;
//! a candidate that fails to launch is skipped, and without a timed winner the heuristic's
//! first pick stays.

use super::{alignment, lt_for, Form, Lt, Plan, Shape};
use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::quant::w8::W8Elem;
use crate::device::tensor::Tensor;
use crate::{DType, Device, GemmError};
use cudarc::cublaslt::sys as lts;
use cudarc::driver::sys::CUevent_flags;
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

/// How many of the heuristic's algorithms a new plan times (`KILN_FP8_LT_TUNE`; 0 or 1: none,
/// the first is taken).
pub(super) fn candidates() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::env::var("KILN_FP8_LT_TUNE").ok().and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// The bucket of `s`: its row count rounded up to a power of two.
pub(super) fn bucket(s: Shape) -> Shape {
    Shape { m: s.m.next_power_of_two(), ..s }
}

impl Plan {
    /// Makes this new plan of `s` take its bucket's tuned algorithm where cuBLASLt accepts it
    /// for `s`, else the fastest of [`candidates`] offers timed on these operands (then
    /// remembered for the bucket).
    ///
    /// # Safety
    /// The operands are device addresses of the matrices `s` describes, as for
    /// [`Plan::launch`]; this plan is not yet shared.
    pub(super) unsafe fn tune(
        &mut self,
        b: &CudaBackend,
        l: &Lt,
        s: Shape,
        (a, sa): (u64, u64),
        (bm, sb): (u64, u64),
        d: u64,
    ) -> Result<(), GemmError> {
        let key = bucket(s);
        let known = l.tuned.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        if let Some(algo) = known {
            if self.accepts(l, &algo) {
                self.algo = algo;
                return Ok(());
            }
        }
        let stream = b.stream().cu_stream() as lts::cudaStream_t;
        let ctx = b.context();
        let event = || drv("creating a timing event", ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)));
        let (start, end) = (event()?, event()?);
        let mut best: Option<(f32, lts::cublasLtMatmulAlgo_t)> = None;
        for h in self.offers(l, s, candidates())? {
            // SAFETY: the caller's contract.
            let run = || unsafe { self.launch(l, &h.algo, (a, sa), (bm, sb), d, s.form, stream) };
            if run().is_err() {
                continue;
            }
            drv("recording a timing event", start.record(b.stream()))?;
            let timed = (0..3).try_for_each(|_| run());
            drv("recording a timing event", end.record(b.stream()))?;
            let ms = drv("timing an FP8 algorithm", start.elapsed_ms(&end))?;
            if timed.is_ok() && best.is_none_or(|(t, _)| ms < t) {
                best = Some((ms, h.algo));
            }
        }
        if let Some((_, algo)) = best {
            self.algo = algo;
            l.tuned.lock().unwrap_or_else(|e| e.into_inner()).insert(key, algo);
        }
        Ok(())
    }

    /// Whether cuBLASLt runs `algo` for this plan's shape.
    fn accepts(&self, l: &Lt, algo: &lts::cublasLtMatmulAlgo_t) -> bool {
        let mut r = std::mem::MaybeUninit::<lts::cublasLtMatmulHeuristicResult_t>::zeroed();
        // SAFETY: the descriptors are this plan's, live; `r` is written by the call.
        let status = unsafe {
            lts::cublasLtMatmulAlgoCheck(l.handle, self.desc, self.a, self.b, self.d, self.d, algo, r.as_mut_ptr())
        };
        // SAFETY: zero-initialized above, and written by the call when it succeeds.
        let r = unsafe { r.assume_init() };
        status == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS
            && r.state == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS
            && r.workspaceSize <= l.workspace.len() * 4
    }
}

/// One of cuBLASLt's algorithms for an FP8 product and its median time (see
/// [`time_algorithms`]).
#[derive(Clone, Debug)]
pub struct AlgoTiming {
    /// Its place in the heuristic's list (0: what a plan takes).
    pub rank: usize,
    /// Its configuration: algorithm id, tile, stages, split-k, cluster shape.
    pub config: String,
    /// Median µs.
    pub us: f64,
}

/// How the swept FP8 product applies its scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepForm {
    /// A vector per operand (weight `[n]`, activations `[m]`): what the engine's plans use.
    OuterVec,
    /// No scales at all (a per-tensor product: what a scale pair of one value each costs).
    Unscaled,
    /// The weight's `[n]` scales as cuBLASLt's alpha vector, the activations unscaled.
    AlphaVec,
}

impl SweepForm {
    fn form(self) -> Form {
        match self {
            SweepForm::OuterVec => Form::OuterVec,
            SweepForm::Unscaled => Form::Product,
            SweepForm::AlphaVec => Form::AlphaVec,
        }
    }
}

/// Times each of the first `count` algorithms cuBLASLt's heuristic offers for the FP8 product
/// (scales applied as `form` says) of an `[n, k]` weight by `m` rows into bf16, on random e4m3
/// operands (accumulating in the tensor cores' precision when `fast`): the measurement behind
/// a plan's choice (`kiln-check-w8 --lt-sweep`). Empty when cuBLASLt has no algorithm; an
/// algorithm that fails to launch is left out.
pub fn time_algorithms(
    dev: &Device,
    (n, k, m): (usize, usize, usize),
    (form, fast): (SweepForm, bool),
    count: usize,
) -> Result<Vec<AlgoTiming>, GemmError> {
    let Device::Cuda(b) = dev else { return Ok(vec![]) };
    let Some(SweepPlan { l, out, shape, plan }) = sweep_plan(dev, (n, k, m), (form, fast))? else {
        return Ok(vec![]);
    };
    // Random bytes without the e4m3 NaN (no byte has all of its low 7 bits set).
    let mut seed = 0x9E37_79B9u32;
    let mut words = |count: usize| -> Vec<i32> {
        (0..count)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed & 0x7777_7777) as i32
            })
            .collect()
    };
    let w = Tensor::from_host(dev, &words(n * k / 4), n, k / 4)?;
    let qx = Tensor::from_host(dev, &words(m * k / 4), m, k / 4)?;
    let sw = Tensor::from_host(dev, &vec![1f32; n], 1, n)?;
    let sx = Tensor::from_host(dev, &vec![1f32; m], 1, m)?;
    let ptr = |t: &Tensor| t.cuda_ptr().unwrap_or(0);
    let stream = b.stream().cu_stream() as lts::cudaStream_t;
    let mut timings = vec![];
    for (rank, h) in plan.offers(&l, shape, count)?.iter().enumerate() {
        // SAFETY: the operands above have the shapes the plan describes; the plan is this
        // function's own.
        let run = |_| unsafe {
            plan.launch(&l, &h.algo, (ptr(&w), ptr(&sw)), (ptr(&qx), ptr(&sx)), ptr(&out), shape.form, stream)
        };
        if let Ok(us) = crate::device::timing::median_us(b, 3, 20, run) {
            timings.push(AlgoTiming { rank, config: algo_config(&h.algo), us });
        }
    }
    Ok(timings)
}

/// For the FP8 product of `(n, k, m)` (as [`time_algorithms`] describes it): what cuBLASLt's
/// heuristic answers when asked for each of `counts` algorithms — `(asked, status, returned,
/// kept)` — the sweep's diagnosis when it finds none.
pub fn heuristic_answers(
    dev: &Device,
    (n, k, m): (usize, usize, usize),
    form: (SweepForm, bool),
    counts: &[usize],
) -> Result<Vec<(usize, String, i32, usize)>, GemmError> {
    let Some(SweepPlan { l, shape, plan, .. }) = sweep_plan(dev, (n, k, m), form)? else { return Ok(vec![]) };
    counts
        .iter()
        .map(|&c| plan.heuristic(&l, shape, c).map(|(st, got, kept)| (c, format!("{st:?}"), got, kept.len())))
        .collect()
}

/// The sweep's product of `(n, k, m)`: the cuBLASLt state, the bf16 `[m, n]` output, its
/// shape and plan in the form asked (no algorithm chosen).
struct SweepPlan {
    l: Arc<Lt>,
    out: Tensor,
    shape: Shape,
    plan: Plan,
}

/// The [`SweepPlan`] of `(n, k, m)`; `None` off a GPU with FP8 tensor cores.
fn sweep_plan(
    dev: &Device,
    (n, k, m): (usize, usize, usize),
    (form, fast): (SweepForm, bool),
) -> Result<Option<SweepPlan>, GemmError> {
    let Device::Cuda(b) = dev else { return Ok(None) };
    let Some(l) = lt_for(b, dev, W8Elem::Fp8E4M3)? else { return Ok(None) };
    let out = Tensor::zeros(dev, DType::BF16, m, n)?;
    let align = alignment(out.cuda_ptr().unwrap_or(0));
    let shape = Shape { n, m, k, form: form.form(), out: DType::BF16, ldd: n, align };
    let plan = Plan::describe(shape, fast)?;
    Ok(Some(SweepPlan { l, out, shape, plan }))
}

/// An algorithm's configuration in words (the attributes that tell two apart).
fn algo_config(algo: &lts::cublasLtMatmulAlgo_t) -> String {
    use lts::cublasLtMatmulAlgoConfigAttributes_t as C;
    let get = |attr: C, size: usize| {
        let mut v = 0u64;
        let mut written = 0usize;
        // SAFETY: `v` has room for `size` (≤ 8) bytes; the algorithm is a live value.
        let r = unsafe {
            lts::cublasLtMatmulAlgoConfigGetAttribute(algo, attr, &mut v as *mut u64 as *mut c_void, size, &mut written)
        };
        if r == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            v
        } else {
            u64::MAX
        }
    };
    format!(
        "id {} tile {} stages {} split-k {} cluster {} swizzle {}",
        get(C::CUBLASLT_ALGO_CONFIG_ID, 4),
        get(C::CUBLASLT_ALGO_CONFIG_TILE_ID, 4),
        get(C::CUBLASLT_ALGO_CONFIG_STAGES_ID, 4),
        get(C::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 4),
        get(C::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, 2),
        get(C::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, 4),
    )
}
