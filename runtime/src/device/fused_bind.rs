//! Binding launch arguments to a [`FusedDef`]: choosing the specialisation and validating
//! counts, kinds, dtypes, devices and shapes (rules in [`crate::device::fused`]).
//!
//! Specialisation choice: the spec whose storage dtype equals the dtype of the first float
//! tensor given is tried first (that tensor is usually a generic `Row`), then every other spec;
//! the first spec under which every tensor's dtype equals its parameter's dtype wins. When none
//! fits, the error is the first mismatch under the first-tried spec.

use crate::device::fused::{Arg, FusedError};
use crate::device::tensor::Tensor;
use crate::device::Device;
use kiln_codegen::compile::Compiled;
use kiln_codegen::fused::{FusedDef, FusedSpec};
use kiln_codegen::ir::{DType, Kernel, OutputKind, ParamKind};

/// A validated launch: the specialisation and the problem size.
pub(crate) struct Bound {
    pub def: &'static FusedDef,
    pub spec: &'static FusedSpec,
    pub compiled: &'static Compiled,
    pub rows: usize,
    pub width: usize,
}

impl Bound {
    pub fn kernel(&self) -> &'static Kernel {
        &self.compiled.kernel
    }
}

pub(crate) fn bind(
    dev: &Device,
    def: &'static FusedDef,
    args: &[Arg<'_>],
    outs: &[&mut Tensor],
) -> Result<Bound, FusedError> {
    let name = def.name;
    let order = spec_order(def, args, outs);
    let first = order.first().copied().ok_or(kiln_codegen::fused::FusedError::NoSpec { name, dtype: DType::F32 })?;
    let k0 = &def.compiled(first.dtype)?.kernel;
    check_counts_and_kinds(name, k0, args, outs)?;

    let mut chosen = None;
    let mut first_err = None;
    for spec in &order {
        let compiled = def.compiled(spec.dtype)?;
        match dtype_mismatch(name, spec.dtype, &compiled.kernel, args, outs) {
            None => {
                chosen = Some((*spec, compiled));
                break;
            }
            Some(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let (spec, compiled) = match (chosen, first_err) {
        (Some(c), _) => c,
        (None, Some(e)) => return Err(e),
        (None, None) => return Err(kiln_codegen::fused::FusedError::NoSpec { name, dtype: first.dtype }.into()),
    };
    if cfg!(debug_assertions) && compiled.cuda != spec.cuda {
        return Err(FusedError::StaleSource { kernel: name, dtype: spec.dtype });
    }
    let k = &compiled.kernel;
    check_devices(dev, name, k, args, outs)?;
    let (rows, width) = problem_size(name, k, args, outs)?;
    check_shapes(name, k, args, outs, rows, width)?;
    Ok(Bound { def, spec, compiled, rows, width })
}

/// Specs in the order they are tried.
fn spec_order(def: &'static FusedDef, args: &[Arg<'_>], outs: &[&mut Tensor]) -> Vec<&'static FusedSpec> {
    let first_float = args
        .iter()
        .filter_map(|a| match a {
            Arg::Tensor(t) => Some(t.dtype().to_ir()),
            _ => None,
        })
        .chain(outs.iter().map(|t| t.dtype().to_ir()))
        .find(|d| d.is_float());
    let mut order: Vec<&'static FusedSpec> = vec![];
    if let Some((_, s)) = first_float.and_then(|d| def.spec(d)) {
        order.push(s);
    }
    for s in def.specs {
        if !order.iter().any(|o| std::ptr::eq(*o, s)) {
            order.push(s);
        }
    }
    order
}

fn check_counts_and_kinds(
    name: &'static str,
    k: &Kernel,
    args: &[Arg<'_>],
    outs: &[&mut Tensor],
) -> Result<(), FusedError> {
    if args.len() != k.params.len() {
        return Err(FusedError::ArgCount { kernel: name, expected: k.params.len(), got: args.len() });
    }
    if outs.len() != k.outputs.len() {
        return Err(FusedError::OutputCount { kernel: name, expected: k.outputs.len(), got: outs.len() });
    }
    for (p, a) in k.params.iter().zip(args) {
        let ok = matches!(
            (p.kind, a),
            (ParamKind::Row(_) | ParamKind::Bcast(_) | ParamKind::PerRow(_), Arg::Tensor(_))
                | (ParamKind::Comptime(DType::F32 | DType::F16 | DType::BF16), Arg::F32(_))
                | (ParamKind::Comptime(DType::I32), Arg::I32(_))
                | (ParamKind::Comptime(DType::Bool), Arg::Bool(_))
        );
        if !ok {
            return Err(FusedError::ArgKind {
                kernel: name,
                param: p.name.clone(),
                expected: kind_text(p.kind),
                got: a.describe(),
            });
        }
    }
    Ok(())
}

fn dtype_mismatch(
    name: &'static str,
    spec: DType,
    k: &Kernel,
    args: &[Arg<'_>],
    outs: &[&mut Tensor],
) -> Option<FusedError> {
    let bad = |param: &str, expected: DType, got: DType| FusedError::DType {
        kernel: name,
        param: param.to_string(),
        spec,
        expected,
        got,
    };
    for (p, a) in k.params.iter().zip(args) {
        if let Arg::Tensor(t) = a {
            if t.dtype().to_ir() != p.kind.dtype() {
                return Some(bad(&p.name, p.kind.dtype(), t.dtype().to_ir()));
            }
        }
    }
    for (o, t) in k.outputs.iter().zip(outs) {
        if t.dtype().to_ir() != o.kind.dtype() {
            return Some(bad(&o.name, o.kind.dtype(), t.dtype().to_ir()));
        }
    }
    None
}

fn check_devices(
    dev: &Device,
    name: &'static str,
    k: &Kernel,
    args: &[Arg<'_>],
    outs: &[&mut Tensor],
) -> Result<(), FusedError> {
    let tensors = k.params.iter().zip(args).filter_map(|(p, a)| match a {
        Arg::Tensor(t) => Some((&p.name, *t)),
        _ => None,
    });
    let outputs = k.outputs.iter().zip(outs).map(|(o, t)| (&o.name, &**t));
    for (param, t) in tensors.chain(outputs) {
        if t.device() != dev {
            return Err(FusedError::WrongDevice {
                kernel: name,
                param: param.clone(),
                tensor: t.device().label(),
                launch: dev.label(),
            });
        }
    }
    Ok(())
}

/// `(rows, width)`: rows from the first Row tensor that is not gathered or scattered (inputs
/// first), else from the first row index; width from the first Row tensor.
fn problem_size(
    name: &'static str,
    k: &Kernel,
    args: &[Arg<'_>],
    outs: &[&mut Tensor],
) -> Result<(usize, usize), FusedError> {
    // Every launch binds: walk the Row tensors without collecting them.
    let row_tensors = || {
        let params = k.params.iter().zip(args).filter_map(|(p, a)| match (p.kind, a) {
            (ParamKind::Row(_), Arg::Tensor(t)) => Some((p.index, *t)),
            _ => None,
        });
        let outputs = k
            .outputs
            .iter()
            .zip(outs)
            .filter(|(o, _)| matches!(o.kind, OutputKind::Row(_)))
            .map(|(o, t)| (o.index, &**t));
        params.chain(outputs)
    };
    let (first_index, first) = row_tensors().next().ok_or(FusedError::NoRowTensor { kernel: name })?;
    let rows = match row_tensors().find(|(index, _)| index.is_none()) {
        Some((_, t)) => t.rows(),
        // Every Row tensor is indexed: the index vector has one entry per row.
        None => match args.get(first_index.unwrap_or(0) as usize) {
            Some(Arg::Tensor(t)) => t.vector_len().unwrap_or(0),
            _ => 0,
        },
    };
    Ok((rows, first.cols()))
}

fn check_shapes(
    name: &'static str,
    k: &Kernel,
    args: &[Arg<'_>],
    outs: &[&mut Tensor],
    rows: usize,
    width: usize,
) -> Result<(), FusedError> {
    let shape_err = |param: &str, what: String| FusedError::Shape { kernel: name, param: param.to_string(), what };
    let row = |param: &str, t: &Tensor| {
        if t.rows() != rows || t.cols() != width {
            return Err(shape_err(
                param,
                format!("is {}x{}, expected {rows}x{width} (rows x width)", t.rows(), t.cols()),
            ));
        }
        Ok(())
    };
    let vector = |param: &str, t: &Tensor, want: usize, what: &str| match t.vector_len() {
        Some(n) if n == want => Ok(()),
        Some(n) => Err(shape_err(param, format!("has {n} elements, expected {want} ({what})"))),
        None => Err(shape_err(param, format!("is {}x{}, expected a vector of {want} ({what})", t.rows(), t.cols()))),
    };
    // A gathered or scattered tensor has any number of rows; its indices are the caller's
    // contract on the GPU (the CPU backend checks each one).
    let indexed = |param: &str, t: &Tensor| {
        if t.cols() != width || t.rows() == 0 {
            return Err(shape_err(param, format!("is {}x{}, expected some rows of width {width}", t.rows(), t.cols())));
        }
        Ok(())
    };
    for (p, a) in k.params.iter().zip(args) {
        if let Arg::Tensor(t) = a {
            match p.kind {
                ParamKind::Row(_) if p.index.is_some() => indexed(&p.name, t)?,
                ParamKind::Row(_) => row(&p.name, t)?,
                ParamKind::Bcast(_) => vector(&p.name, t, width, "width")?,
                ParamKind::PerRow(_) => vector(&p.name, t, rows, "rows")?,
                ParamKind::Comptime(_) => {}
            }
        }
    }
    for (o, t) in k.outputs.iter().zip(outs) {
        match o.kind {
            OutputKind::Row(_) if o.index.is_some() => indexed(&o.name, t)?,
            OutputKind::Row(_) => row(&o.name, t)?,
            OutputKind::PerRow(_) => vector(&o.name, t, rows, "rows")?,
        }
    }
    Ok(())
}

fn kind_text(k: ParamKind) -> String {
    match k {
        ParamKind::Row(d) => format!("a Row {d} tensor"),
        ParamKind::Bcast(d) => format!("a Bcast {d} vector"),
        ParamKind::PerRow(d) => format!("a PerRow {d} vector"),
        ParamKind::Comptime(DType::Bool) => "a comptime bool (Arg::Bool)".into(),
        ParamKind::Comptime(DType::I32) => "a comptime i32 (Arg::I32)".into(),
        ParamKind::Comptime(d) => format!("a comptime {d} (Arg::F32)"),
    }
}
