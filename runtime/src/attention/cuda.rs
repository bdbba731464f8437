//! The attention template on a GPU: the split kernel, then (with more than one split) the
//! combine kernel, both on the backend's stream, arguments in the order of
//! `kiln_codegen::attention::abi`.
//!
//! Invariants: nothing is launched unless every check passed (head dim instantiated, 16-byte
//! aligned pools, plan uploaded with scratch for its splits, every value fits its C type).

use super::plan::AttnPlan;
use super::{AttnError, Bound, PagedKv};
use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{drv, CudaError};
use crate::device::fused::Arg;
use crate::Tensor;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use kiln_codegen::attention::abi::{self, HEAD_DIMS};
use kiln_codegen::attention::def::{AttnDef, AttnSpec};

enum KArg {
    Ptr(u64),
    I32(i32),
    F32(f32),
}

/// Every argument, in order, with its C type (they live in `args` until the launch).
fn push_args<'a>(launch: &mut cudarc::driver::LaunchArgs<'a>, args: &'a [KArg]) {
    for v in args {
        match v {
            KArg::Ptr(p) => launch.arg(p),
            KArg::I32(x) => launch.arg(x),
            KArg::F32(x) => launch.arg(x),
        };
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    backend: &CudaBackend,
    def: &'static AttnDef,
    spec: &'static AttnSpec,
    b: &Bound<'_>,
    q: &Tensor,
    kv: &PagedKv<'_>,
    plan: &AttnPlan,
    comptimes: &[Arg<'_>],
    out: &mut Tensor,
) -> Result<(), AttnError> {
    let device = format!("cuda:{}", backend.ordinal());
    let bad = |what: String| AttnError::Device { device: device.clone(), what };
    let hd = b.head_dim;
    if !HEAD_DIMS.contains(&hd) {
        return Err(bad(format!("head dim {hd} is not instantiated (CUDA kernels exist for {HEAD_DIMS:?})")));
    }
    if kv.fp8.is_some() && !abi::fp8_kv_supported(b.kernel) {
        return Err(bad(format!("FP8 KV pools need f16 or bf16 queries, not {}", q.dtype())));
    }
    // A pool row's stride in its elements (e4m3 bytes for FP8 pools: 4 to a stored i32). Rows
    // are read in 16-byte pieces (a key row of an FP8 pool too), so they start 16-byte aligned.
    let stride_mul = if kv.fp8.is_some() { 4 } else { 1 };
    let aligned = |t: &Tensor| {
        t.cuda_ptr().is_some_and(|p| p % 16 == 0) && (t.row_stride() * t.dtype().size_bytes()).is_multiple_of(16)
    };
    if !aligned(kv.k) || !aligned(kv.v) {
        return Err(bad("the K/V pools and their row stride must be 16-byte aligned".into()));
    }
    let dp = plan
        .device
        .as_ref()
        .ok_or_else(|| bad("the plan was not uploaded to this device (AttnPlan::upload)".into()))?;
    let n_splits = plan.n_splits;
    let part_rows = plan.n_tokens() * b.n_heads * n_splits;
    if n_splits > 1 && (dp.part_o.rows() < part_rows || dp.part_o.cols() != hd) {
        return Err(bad(format!(
            "the plan's scratch holds {} rows of {}, {part_rows} of {hd} needed (upload after set_splits)",
            dp.part_o.rows(),
            dp.part_o.cols()
        )));
    }
    let int = |what: &str, v: usize| {
        i32::try_from(v).map(KArg::I32).map_err(|_| bad(format!("{what} = {v} does not fit a C int")))
    };
    let ptr =
        |what: &str, t: &Tensor| t.cuda_ptr().map(KArg::Ptr).ok_or_else(|| bad(format!("{what} is not on the GPU")));
    let group = b.n_heads / b.n_kv_heads;
    let g = abi::group_cap(group);
    let chunks = group.div_ceil(g);
    let mut args = vec![
        ptr("q", q)?,
        int("q stride", q.row_stride())?,
        ptr("the K pool", kv.k)?,
        ptr("the V pool", kv.v)?,
        int("the KV row stride", kv.k.row_stride() * stride_mul)?,
        ptr("the plan", &dp.plan)?,
        int("tokens", plan.layout.n_tokens)?,
        int("sequences", plan.layout.n_seqs)?,
        int("the block-table stride", plan.layout.bt_stride)?,
        int("the block size", plan.block_size)?,
        int("query heads", b.n_heads)?,
        int("KV heads", b.n_kv_heads)?,
        // An FP8 pool's K scale multiplies every score of the layer: folded into the scale.
        KArg::F32(b.scale * kv.fp8.map_or(1.0, |s| s.k)),
    ];
    if let Some(s) = kv.fp8 {
        args.push(KArg::F32(s.v));
    }
    let n_common = args.len() + 2; // up to out_stride
    args.extend([
        ptr("out", out)?,
        int("out stride", out.row_stride())?,
        ptr("the partials", &dp.part_o)?,
        ptr("the partial sums", &dp.part_ml)?,
        int("splits", n_splits)?,
    ]);
    for a in comptimes {
        args.push(match a {
            Arg::F32(x) => KArg::F32(*x),
            Arg::I32(x) => KArg::I32(*x),
            Arg::Bool(x) => KArg::I32(*x as i32),
            Arg::Tensor(_) => return Err(bad("a tensor was passed for a comptime argument".into())),
        });
    }
    let cuda_err = |source: CudaError| AttnError::Cuda { kernel: def.name, device: device.clone(), source };
    let fp8_kv = kv.fp8.is_some();
    let mut defines = vec![(abi::HEAD_DIM_MACRO, hd)];
    if abi::fp8_kv_supported(b.kernel) {
        defines.push((abi::KV8_MACRO, usize::from(fp8_kv)));
    }
    let module = backend
        .module_variant(spec.cuda, &defines, &b.kernel.spec_name(), &abi::entries_for(b.kernel, hd, fp8_kv))
        .map_err(cuda_err)?;
    if plan.n_tokens() == 0 {
        return Ok(());
    }
    // A prefill on tensor cores: the common arguments, then the blocks of queries.
    if let (Some(items), Some(entry)) = (&dp.items, abi::mma_entry(b.kernel, hd, fp8_kv)) {
        if abi::mma_queries(group) > 0 {
            let n_items = items.cols() / 4;
            let mut margs: Vec<KArg> = args.drain(..n_common).collect();
            margs.push(ptr("the query blocks", items)?);
            margs.extend(args.drain(3..));
            let f = module.func(&entry).map_err(cuda_err)?;
            let mut launch = backend.stream().launch_builder(f);
            push_args(&mut launch, &margs);
            let grid = (n_items as u32, b.n_kv_heads as u32, 1);
            let cfg = LaunchConfig { grid_dim: grid, block_dim: (abi::THREADS as u32, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: as the split kernel below; `items` holds 4 i32 per block (AttnPlan::prepare_mma).
            let r = unsafe { launch.launch(cfg) };
            return drv(format!("launching the attention tensor-core kernel (grid {grid:?})"), r)
                .map(|_| ())
                .map_err(cuda_err);
        }
    }
    let grid = (plan.n_tokens() as u32, (b.n_kv_heads * chunks) as u32, n_splits as u32);
    let split_fn = module.func(&abi::split_entry(b.kernel, hd, g, fp8_kv)).map_err(cuda_err)?;
    let mut launch = backend.stream().launch_builder(split_fn);
    push_args(&mut launch, &args);
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (abi::THREADS as u32, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the arguments follow `abi` in order and C type; every pointer is a live device
    // allocation covering what the kernel reads or writes (shapes checked by `bind`, the plan
    // by `AttnPlan::new`, the scratch above); the pools are 16-byte aligned.
    let r = unsafe { launch.launch(cfg) };
    drv(format!("launching the attention split kernel (grid {grid:?})"), r).map_err(cuda_err)?;
    if n_splits > 1 {
        let combine_fn = module.func(&abi::combine_entry(b.kernel, hd)).map_err(cuda_err)?;
        let mut launch = backend.stream().launch_builder(combine_fn);
        let (po, pm) = (dp.part_o.cuda_ptr().unwrap_or(0), dp.part_ml.cuda_ptr().unwrap_or(0));
        let (ns, nh, op, os) =
            (n_splits as i32, b.n_heads as i32, out.cuda_ptr().unwrap_or(0), out.row_stride() as i32);
        launch.arg(&po).arg(&pm).arg(&ns).arg(&nh).arg(&op).arg(&os);
        let cfg = LaunchConfig {
            grid_dim: (plan.n_tokens() as u32, b.n_heads as u32, 1),
            block_dim: (hd as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; the partials were written by the split kernel just queued.
        let r = unsafe { launch.launch(cfg) };
        drv("launching the attention combine kernel", r).map_err(cuda_err)?;
    }
    Ok(())
}
