//! Owning argument lists for `cpu::run`, so a test can build its inputs, run, and read the
//! outputs back without juggling borrows.

use super::host::Host;
use kiln_codegen::cpu::{self, CpuError, CpuOutArg, CpuParam, CpuScalar};
use kiln_codegen::ir::Kernel;

pub enum PArg {
    Row(Host, usize),
    Bcast(Host),
    PerRow(Host),
    Scalar(CpuScalar),
}

pub enum OArg {
    Row(Host, usize),
    PerRow(Host),
}

impl OArg {
    pub fn host(&self) -> &Host {
        match self {
            OArg::Row(h, _) | OArg::PerRow(h) => h,
        }
    }
}

/// Run a lowered kernel on owned arguments.
pub fn run(k: &Kernel, params: &[PArg], outs: &mut [OArg], rows: usize, width: usize) -> Result<(), CpuError> {
    let ps: Vec<CpuParam<'_>> = params
        .iter()
        .map(|p| match p {
            PArg::Row(h, s) => CpuParam::Row { data: h.as_in(), row_stride: *s },
            PArg::Bcast(h) => CpuParam::Bcast(h.as_in()),
            PArg::PerRow(h) => CpuParam::PerRow(h.as_in()),
            PArg::Scalar(s) => CpuParam::Comptime(*s),
        })
        .collect();
    let mut os: Vec<CpuOutArg<'_>> = outs
        .iter_mut()
        .map(|o| match o {
            OArg::Row(h, s) => CpuOutArg::Row { data: h.as_out(), row_stride: *s },
            OArg::PerRow(h) => CpuOutArg::PerRow(h.as_out()),
        })
        .collect();
    cpu::run(k, &ps, &mut os, rows, width)
}
