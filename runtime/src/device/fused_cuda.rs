//! The CUDA path of [`crate::device::fused::launch`]: entry choice, argument marshalling, launch.
//!
//! Entry choice (the ABI's rule, `kiln_codegen::abi`): the vectorised `_v{N}` entry when
//! `width` and every Row stride (inputs and outputs) are divisible by N and every tensor
//! pointer is 16-byte aligned; the scalar `_v1` entry otherwise.
//!
//! Marshalling follows `abi::args(kernel)` slot by slot — the only place argument order is
//! decided: pointers as 64-bit device addresses, strides/rows/width as `int`, comptime f32 as
//! `float` (f16/bf16 comptimes as their 16-bit storage), i32 and bool as `int`.
//!
//! Invariants: nothing is launched if any value does not fit its C type; the launch goes on
//! the backend's stream and its immediate error is returned (asynchronous faults surface at the
//! next synchronize).

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{drv, CudaError};
use crate::device::fused::{Arg, FusedError};
use crate::device::fused_bind::Bound;
use crate::device::tensor::Tensor;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use kiln_codegen::abi::{self, AbiArg};
use kiln_codegen::ir::{DType, ParamKind};

/// One marshalled kernel argument (kept alive until the launch call returns).
enum KArg {
    Ptr(u64),
    I32(i32),
    F32(f32),
    F16(half::f16),
    BF16(half::bf16),
}

pub(crate) fn run(
    backend: &CudaBackend,
    b: &Bound,
    args: &[Arg<'_>],
    outs: &mut [&mut Tensor],
) -> Result<(), FusedError> {
    let name = b.def.name;
    let k = b.kernel();
    let cuda_err =
        |source: CudaError| FusedError::Cuda { kernel: name, device: format!("cuda:{}", backend.ordinal()), source };
    let loaded = backend.fused_kernel(b.spec, k).map_err(cuda_err)?;

    let vec_ok = vectorisable(loaded.vec, b, args, outs);
    let (func, vec) = if vec_ok { (&loaded.vec_fn, loaded.vec) } else { (&loaded.scalar_fn, 1) };
    let cfg = abi::launch_config(k, &b.compiled.schedule, b.rows, b.width, vec)?;

    let vals = marshal(b, args, outs)?;
    let mut launch = backend.stream().launch_builder(func);
    for v in &vals {
        match v {
            KArg::Ptr(p) => launch.arg(p),
            KArg::I32(x) => launch.arg(x),
            KArg::F32(x) => launch.arg(x),
            KArg::F16(x) => launch.arg(x),
            KArg::BF16(x) => launch.arg(x),
        };
    }
    let config = LaunchConfig { grid_dim: (cfg.grid, 1, 1), block_dim: (cfg.block, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the argument list is `abi::args(kernel)` in order with the C types the emitter
    // declares; every pointer is a live allocation whose view covers rows × width (checked by
    // `bind`); the grid is one block per row as the ABI requires.
    let r = unsafe { launch.launch(config) };
    drv(
        format!("launching `{}` ({} blocks of {})", if vec_ok { "vectorised" } else { "scalar" }, cfg.grid, cfg.block),
        r,
    )
    .map(|_| ())
    .map_err(cuda_err)
}

fn vectorisable(vec: usize, b: &Bound, args: &[Arg<'_>], outs: &[&mut Tensor]) -> bool {
    if vec <= 1 || !b.width.is_multiple_of(vec) {
        return false;
    }
    let k = b.kernel();
    let aligned = |t: &Tensor| t.cuda_ptr().is_some_and(|p| p % 16 == 0);
    let params_ok = k.params.iter().zip(args).all(|(p, a)| match (p.kind, a) {
        (ParamKind::Row(_), Arg::Tensor(t)) => aligned(t) && t.row_stride() % vec == 0,
        (_, Arg::Tensor(t)) => aligned(t),
        _ => true,
    });
    let outs_ok = k.outputs.iter().zip(outs).all(|(o, t)| match o.kind {
        kiln_codegen::ir::OutputKind::Row(_) => aligned(t) && t.row_stride() % vec == 0,
        kiln_codegen::ir::OutputKind::PerRow(_) => aligned(t),
    });
    params_ok && outs_ok
}

fn marshal(b: &Bound, args: &[Arg<'_>], outs: &[&mut Tensor]) -> Result<Vec<KArg>, FusedError> {
    let name = b.def.name;
    let k = b.kernel();
    let int = |what: &str, v: usize| {
        i32::try_from(v).map(KArg::I32).map_err(|_| FusedError::Shape {
            kernel: name,
            param: what.to_string(),
            what: format!("{v} does not fit a C int"),
        })
    };
    let tensor = |i: usize| match args.get(i) {
        Some(Arg::Tensor(t)) => Ok(*t),
        other => Err(FusedError::ArgKind {
            kernel: name,
            param: k.params.get(i).map(|p| p.name.clone()).unwrap_or_default(),
            expected: "a tensor".into(),
            got: other.map(|a| a.describe()).unwrap_or_else(|| "nothing".into()),
        }),
    };
    let ptr = |t: &Tensor, param: &str| {
        t.cuda_ptr().map(KArg::Ptr).ok_or_else(|| FusedError::WrongDevice {
            kernel: name,
            param: param.to_string(),
            tensor: t.device().label(),
            launch: "cuda".into(),
        })
    };
    let out = |i: usize| {
        outs.get(i).map(|t| &**t).ok_or(FusedError::OutputCount {
            kernel: name,
            expected: k.outputs.len(),
            got: outs.len(),
        })
    };
    let mut vals = vec![];
    for slot in abi::args(k) {
        vals.push(match slot {
            AbiArg::ParamPtr(i) => ptr(tensor(i)?, &k.params[i].name)?,
            AbiArg::ParamStride(i) => int(&k.params[i].name, tensor(i)?.row_stride())?,
            AbiArg::ParamValue(i, d) => scalar(name, &k.params[i].name, args.get(i), d)?,
            AbiArg::OutputPtr(i) => ptr(out(i)?, &k.outputs[i].name)?,
            AbiArg::OutputStride(i) => int(&k.outputs[i].name, out(i)?.row_stride())?,
            AbiArg::Rows => int("rows", b.rows)?,
            AbiArg::Width => int("width", b.width)?,
        });
    }
    Ok(vals)
}

/// A comptime value in the C type the ABI passes it as (`d`: I32 for bool).
fn scalar(kernel: &'static str, param: &str, a: Option<&Arg<'_>>, d: DType) -> Result<KArg, FusedError> {
    Ok(match (a, d) {
        (Some(Arg::F32(x)), DType::F32) => KArg::F32(*x),
        (Some(Arg::F32(x)), DType::F16) => KArg::F16(half::f16::from_f32(*x)),
        (Some(Arg::F32(x)), DType::BF16) => KArg::BF16(half::bf16::from_f32(*x)),
        (Some(Arg::I32(x)), DType::I32) => KArg::I32(*x),
        (Some(Arg::Bool(x)), DType::I32) => KArg::I32(*x as i32),
        (a, d) => {
            return Err(FusedError::ArgKind {
                kernel,
                param: param.to_string(),
                expected: format!("a comptime passed as {d}"),
                got: a.map(|a| a.describe()).unwrap_or_else(|| "nothing".into()),
            })
        }
    })
}
