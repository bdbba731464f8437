//! The calling convention of generated CUDA row kernels, shared by the emitter (which writes
//! the signature) and the runtime (which marshals launch arguments). Nothing else may assume
//! argument order.
//!
//! Signature of every entry point, in order:
//! 1. for each param, in declaration order:
//!    - `Row(d)`: a pointer to `d`, then an `int` row stride in elements;
//!    - `Bcast(d)` / `PerRow(d)`: a pointer to `d`;
//!    - `Comptime(d)`: the value (`float` for f32, `int` for i32 and bool);
//! 2. for each output, in order: `Row(d)`: a pointer then an `int` row stride; `PerRow(d)`: a pointer;
//! 3. `int rows, int width`.
//!
//! Launch: one thread block per row (`grid.x = rows`), `block.x` (at most [`MAX_THREADS`]) from [`launch_config`], no
//! dynamic shared memory. Each kernel has two entry points: a vectorised one (`_v{N}`,
//! 16-byte accesses: every row stride and `width` divisible by N and every pointer 16-byte
//! aligned) and a scalar one (`_v1`) that takes any layout.

use crate::ir::{DType, Kernel, OutputKind, ParamKind};
use crate::schedule::Schedule;

/// One argument slot of a generated entry point.
#[derive(Clone, Debug, PartialEq)]
pub enum AbiArg {
    /// Device pointer of param `n`.
    ParamPtr(usize),
    /// Row stride (elements) of `Row` param `n`.
    ParamStride(usize),
    /// Value of comptime param `n`, passed as this dtype (`I32` for bool).
    ParamValue(usize, DType),
    /// Device pointer of output `n`.
    OutputPtr(usize),
    /// Row stride (elements) of `Row` output `n`.
    OutputStride(usize),
    Rows,
    Width,
}

/// The argument list of a kernel's entry points (both share it).
pub fn args(k: &Kernel) -> Vec<AbiArg> {
    let mut a = vec![];
    for (i, p) in k.params.iter().enumerate() {
        match p.kind {
            ParamKind::Row(_) => {
                a.push(AbiArg::ParamPtr(i));
                a.push(AbiArg::ParamStride(i));
            }
            ParamKind::Bcast(_) | ParamKind::PerRow(_) => a.push(AbiArg::ParamPtr(i)),
            ParamKind::Comptime(d) => a.push(AbiArg::ParamValue(i, if d == DType::Bool { DType::I32 } else { d })),
        }
    }
    for (i, o) in k.outputs.iter().enumerate() {
        a.push(AbiArg::OutputPtr(i));
        if let OutputKind::Row(_) = o.kind {
            a.push(AbiArg::OutputStride(i));
        }
    }
    a.push(AbiArg::Rows);
    a.push(AbiArg::Width);
    a
}

/// Elements per 16-byte access for a storage dtype.
pub fn vec_width(d: DType) -> usize {
    16 / d.size_bytes().max(1)
}

/// Loop iterations per thread in kernels that cache values across stages (the register
/// arrays are sized by it). The widest row such a kernel takes is `MAX_THREADS * MAX_ITERS * vec`.
pub const MAX_ITERS: usize = 4;

/// Threads per block, at most (`__launch_bounds__`). 512 rather than 1024 so the compiler may
/// give a thread up to 128 registers: a cached f32 value of a bf16 row is `MAX_ITERS * 8`
/// registers, and with a 1024-thread bound (64 registers) such kernels spilled.
pub const MAX_THREADS: usize = 512;

/// The vector width of a kernel's vectorised entry: the narrowest tensor dtype it touches
/// decides (16 bytes of it), so every access of the entry is at most 16 bytes.
pub fn kernel_vec(k: &Kernel) -> usize {
    let mut widest_elem = 1;
    for p in &k.params {
        if matches!(p.kind, ParamKind::Row(_) | ParamKind::Bcast(_)) {
            widest_elem = widest_elem.max(p.kind.dtype().size_bytes());
        }
    }
    for o in &k.outputs {
        if let OutputKind::Row(d) = o.kind {
            widest_elem = widest_elem.max(d.size_bytes());
        }
    }
    16 / widest_elem
}

/// Entry point names: (vectorised, scalar).
pub fn entry_names(k: &Kernel) -> (String, String) {
    (format!("{}_v{}", k.spec_name(), kernel_vec(k)), format!("{}_v1", k.spec_name()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: u32,
    pub block: u32,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LaunchError {
    #[error("row width {width} is too wide for kernel `{kernel}` (at most {max} with this layout)")]
    TooWide { kernel: String, width: usize, max: usize },
    #[error("kernel `{kernel}`: {what}")]
    Shape { kernel: String, what: String },
}

/// Threads per block for a row of `width` elements accessed `vec` at a time.
/// Kernels with cached values run a fixed `MAX_ITERS` loop; they take as many threads as the
/// row has vectors (up to `MAX_THREADS`), so a row is usually one iteration and the block has
/// the most loads in flight before its reduction (measured on the H100: 128 threads x 4
/// iterations reached 74% of copy bandwidth on a 4096-wide bf16 RMSNorm). Others aim for
/// about two vectors per thread.
pub fn launch_config(
    k: &Kernel,
    s: &Schedule,
    rows: usize,
    width: usize,
    vec: usize,
) -> Result<LaunchConfig, LaunchError> {
    if rows == 0 || width == 0 {
        return Err(LaunchError::Shape {
            kernel: k.spec_name(),
            what: format!("empty problem ({rows} rows x {width})"),
        });
    }
    if rows > i32::MAX as usize || width > i32::MAX as usize {
        return Err(LaunchError::Shape { kernel: k.spec_name(), what: "more than 2^31 rows or columns".into() });
    }
    let nvec = width.div_ceil(vec);
    let round32 = |t: usize| t.div_ceil(32) * 32;
    let block = if s.cached.is_empty() {
        round32(nvec.div_ceil(2)).clamp(32, MAX_THREADS)
    } else {
        let max = MAX_THREADS * MAX_ITERS * vec;
        if width > max {
            return Err(LaunchError::TooWide { kernel: k.spec_name(), width, max });
        }
        round32(nvec).clamp(32, MAX_THREADS)
    };
    Ok(LaunchConfig { grid: rows as u32, block: block as u32 })
}
