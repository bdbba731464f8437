//! The CPU path of [`crate::device::fused::launch`]: the codegen interpreter over host views.
//!
//! Locking (see [`crate::device::host_buf`]): each distinct input storage is read-locked once (a
//! storage shared by several arguments is not locked twice, which could deadlock against a
//! waiting writer). Outputs are written in place under their write locks when no output shares
//! storage with an input or another output; otherwise the kernel writes into scratch buffers,
//! the read locks are released, and the scratch is copied into the outputs.

use crate::device::fused::{Arg, FusedError};
use crate::device::fused_bind::Bound;
use crate::device::host_buf::{HostBuf, HostRead, HostWrite};
use crate::device::tensor::{Tensor, TensorError};
use kiln_codegen::cpu::{CpuError, CpuIn, CpuKernel, CpuOut, CpuOutArg, CpuParam, CpuScalar};
use kiln_codegen::fused::FusedSpec;
use kiln_codegen::ir::{DType, Kernel, OutputKind, ParamKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Verified and planned CPU kernels, keyed like the GPU module cache: by the address of the
/// spec's `'static` CUDA source, which identifies the specialisation. Planning once matters on
/// the CPU decode path, where each kernel runs once per layer per token.
fn cpu_kernel(spec: &'static FusedSpec, k: &Kernel) -> Result<Arc<CpuKernel>, CpuError> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<CpuKernel>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = spec.cuda.as_ptr() as usize;
    // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
    if let Some(c) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let planned = Arc::new(CpuKernel::new(k)?);
    Ok(cache.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(planned).clone())
}

pub(crate) fn run(b: &Bound, args: &[Arg<'_>], outs: &mut [&mut Tensor]) -> Result<(), FusedError> {
    let name = b.def.name;
    let terr = |source: TensorError| FusedError::Tensor { kernel: name, source };
    let inputs: Vec<&Tensor> =
        args.iter().filter_map(|a| if let Arg::Tensor(t) = a { Some(*t) } else { None }).collect();
    let aliased = outs
        .iter()
        .enumerate()
        .any(|(i, o)| inputs.iter().any(|t| t.shares_storage(o)) || outs[..i].iter().any(|p| p.shares_storage(o)));

    // Distinct input storages, each read-locked once.
    let mut distinct: Vec<&Tensor> = vec![];
    for t in &inputs {
        if !distinct.iter().any(|d| d.shares_storage(t)) {
            distinct.push(t);
        }
    }
    let guards: Vec<HostRead<'_>> = distinct
        .iter()
        .map(|t| t.host_buf("fused launch").and_then(|h| h.read().map_err(TensorError::from)))
        .collect::<Result<_, _>>()
        .map_err(terr)?;
    let bytes_of = |t: &Tensor| -> &[u8] {
        let i = distinct.iter().position(|d| d.shares_storage(t)).unwrap_or(0);
        guards[i].bytes()
    };

    let k = b.kernel();
    let mut params = Vec::with_capacity(args.len());
    for (p, a) in k.params.iter().zip(args) {
        params.push(match (p.kind, a) {
            (ParamKind::Row(_), Arg::Tensor(t)) => {
                CpuParam::Row { data: cpu_in(t, bytes_of(t)).map_err(terr)?, row_stride: t.row_stride() }
            }
            (ParamKind::Bcast(_), Arg::Tensor(t)) => CpuParam::Bcast(cpu_in(t, bytes_of(t)).map_err(terr)?),
            (ParamKind::PerRow(_), Arg::Tensor(t)) => CpuParam::PerRow(cpu_in(t, bytes_of(t)).map_err(terr)?),
            (_, Arg::F32(x)) => CpuParam::Comptime(CpuScalar::F32(*x)),
            (_, Arg::I32(x)) => CpuParam::Comptime(CpuScalar::I32(*x)),
            (_, Arg::Bool(x)) => CpuParam::Comptime(CpuScalar::Bool(*x)),
            // Kinds were validated by `bind`; a tensor for a comptime can't reach here.
            (_, Arg::Tensor(_)) => {
                return Err(FusedError::ArgKind {
                    kernel: name,
                    param: p.name.clone(),
                    expected: "a scalar".into(),
                    got: a.describe(),
                })
            }
        });
    }
    let run_err = |source| FusedError::Cpu { kernel: name, source };
    let planned = cpu_kernel(b.spec, k).map_err(run_err)?;

    if !aliased {
        let mut out_guards: Vec<HostWrite<'_>> = outs
            .iter()
            .map(|t| t.host_buf("fused launch").and_then(|h| h.write().map_err(TensorError::from)))
            .collect::<Result<_, _>>()
            .map_err(terr)?;
        let mut out_args = Vec::with_capacity(outs.len());
        for ((o, t), g) in k.outputs.iter().zip(outs.iter()).zip(out_guards.iter_mut()) {
            let (start, end) = t.byte_range();
            let data = cpu_out(t.dtype().to_ir(), &mut g.bytes_mut()[start..end]).map_err(terr)?;
            out_args.push(out_arg(o.kind, data, t.row_stride()));
        }
        return planned.run(&params, &mut out_args, b.rows, b.width).map_err(run_err);
    }

    // A scattered output writes only some rows of its tensor, so it cannot go through scratch.
    if let Some(o) = k.outputs.iter().find(|o| o.index.is_some()) {
        return Err(FusedError::Shape {
            kernel: name,
            param: o.name.clone(),
            what: "a scattered output must not share storage with an input or another output".into(),
        });
    }

    // Aliased: compute into contiguous scratch, then copy back once the inputs are unlocked.
    let scratch: Vec<HostBuf> = k
        .outputs
        .iter()
        .map(|o| {
            let n = match o.kind {
                OutputKind::Row(_) => b.rows * b.width,
                OutputKind::PerRow(_) => b.rows,
            };
            HostBuf::zeroed(n * o.kind.dtype().size_bytes())
        })
        .collect();
    {
        let mut sg: Vec<HostWrite<'_>> =
            scratch.iter().map(|h| h.write()).collect::<Result<_, _>>().map_err(|e| terr(e.into()))?;
        let mut out_args = Vec::with_capacity(outs.len());
        for (o, g) in k.outputs.iter().zip(sg.iter_mut()) {
            let data = cpu_out(o.kind.dtype(), g.bytes_mut()).map_err(terr)?;
            out_args.push(out_arg(o.kind, data, b.width));
        }
        planned.run(&params, &mut out_args, b.rows, b.width).map_err(run_err)?;
    }
    drop(params);
    drop(guards);
    for (t, s) in outs.iter_mut().zip(&scratch) {
        let g = s.read().map_err(|e| terr(e.into()))?;
        crate::device::tensor_io::scatter_bytes(t, g.bytes()).map_err(terr)?;
    }
    Ok(())
}

fn out_arg(kind: OutputKind, data: CpuOut<'_>, row_stride: usize) -> CpuOutArg<'_> {
    match kind {
        OutputKind::Row(_) => CpuOutArg::Row { data, row_stride },
        OutputKind::PerRow(_) => CpuOutArg::PerRow(data),
    }
}

/// The tensor's view in `storage` (all of its storage's bytes) as a typed input.
fn cpu_in<'a>(t: &Tensor, storage: &'a [u8]) -> Result<CpuIn<'a>, TensorError> {
    Ok(match t.dtype().to_ir() {
        DType::F32 => CpuIn::F32(t.typed(storage)?),
        DType::F16 => CpuIn::F16(t.typed(storage)?),
        DType::BF16 => CpuIn::BF16(t.typed(storage)?),
        DType::I32 => CpuIn::I32(t.typed(storage)?),
        DType::F8E4M3 => CpuIn::E4M3(bytemuck::cast_slice(t.typed::<crate::device::element::E4m3>(storage)?)),
        DType::I8 => CpuIn::I8(t.typed(storage)?),
        DType::Bool => return Err(TensorError::NotStorable(DType::Bool)),
    })
}

/// Bytes of one output view as a typed output.
fn cpu_out(dtype: DType, bytes: &mut [u8]) -> Result<CpuOut<'_>, TensorError> {
    let storage = crate::DType::from_ir(dtype).ok_or(TensorError::NotStorable(dtype))?;
    let mis = |_| TensorError::Misaligned(storage);
    Ok(match dtype {
        DType::F32 => CpuOut::F32(bytemuck::try_cast_slice_mut(bytes).map_err(mis)?),
        DType::F16 => CpuOut::F16(bytemuck::try_cast_slice_mut(bytes).map_err(mis)?),
        DType::BF16 => CpuOut::BF16(bytemuck::try_cast_slice_mut(bytes).map_err(mis)?),
        DType::I32 => CpuOut::I32(bytemuck::try_cast_slice_mut(bytes).map_err(mis)?),
        DType::F8E4M3 => CpuOut::E4M3(bytes),
        DType::I8 => CpuOut::I8(bytemuck::cast_slice_mut(bytes)),
        DType::Bool => return Err(TensorError::NotStorable(DType::Bool)),
    })
}
