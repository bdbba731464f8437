//! The IR verifier: the structural rules every kernel obeys, checked before and after every
//! pass and before any backend runs a kernel.
//!
//! Rules ([`verify`], for any kernel a frontend may hand to the passes):
//! - SSA order: every operand names an earlier node (no forward or self references);
//! - every parameter an op reads (`Param(n)`, `Rope { x: n }`, `RopeTable { x, table }`) exists;
//! - every node's stored type equals [`crate::typeck::infer`] of its op;
//! - there is at least one output; each names an existing node; a `Row` output's value is
//!   `Elem`, a `PerRow` output's value is `Uniform`, and the value's dtype equals the output
//!   kind's dtype (the frontend casts; nothing downstream does);
//! - tensors (params other than `Comptime`, and outputs) are never `Bool`: bool is not a storage type;
//! - parameter names are unique, output names are unique and differ from parameter names
//!   (they become argument names in generated code). Node names may repeat (Rust shadowing);
//! - a row index (gather on a param, scatter on an output) is only on a `Row` param / output
//!   and names a `PerRow(I32)` parameter.
//!
//! Extra rules for lowered kernels ([`verify_lowered`], what the backends accept):
//! - no `Softmax` (the `lower_softmax` pass expands it);
//! - half precision only as storage: a node that produces or reads an `F16`/`BF16` value must be
//!   a parameter load or a `Cast`, so all arithmetic, comparisons, selects and reductions run in
//!   f32 / i32. There is no promotion pass: the frontend widens (`Builder::widen`).
//!
//! Every node error names the node (`%N`) and shows its text. The verifier never panics, even
//! on kernels whose indices point nowhere (the text falls back to the op's debug form).

use crate::ir::{DType, Kernel, Op, OutputKind, ParamKind, Shape, Ty, ValueId};
use crate::typeck::{infer, TypeError};
use std::collections::HashSet;
use thiserror::Error;

/// Which rule set to check.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Level {
    /// What a frontend may produce (softmax and half arithmetic allowed).
    Frontend,
    /// What the backends run: no softmax, halves only loaded and cast.
    Lowered,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum VerifyError {
    #[error("{node} = {text}: operand {operand} is not defined before this node")]
    ForwardRef { node: ValueId, text: String, operand: ValueId },
    #[error("{node} = {text}: parameter index {param} is out of range ({count} params)")]
    NoSuchParam { node: ValueId, text: String, param: u32, count: usize },
    #[error("{node} = {text}: {source}")]
    Type {
        node: ValueId,
        text: String,
        #[source]
        source: TypeError,
    },
    #[error("{node} = {text}: stored type {stored} but the op gives {inferred}")]
    StoredType { node: ValueId, text: String, stored: Ty, inferred: Ty },
    #[error("{node} = {text}: softmax must be expanded by `lower_softmax` before a backend runs it")]
    Softmax { node: ValueId, text: String },
    #[error(
        "{node} = {text}: {dtype} used by an op other than a load or a cast after lowering; \
         arithmetic runs in f32 (the frontend widens halves with casts)"
    )]
    HalfArithmetic { node: ValueId, text: String, dtype: DType },
    #[error("kernel has no outputs")]
    NoOutputs,
    #[error("output `{name}` names {value}, which does not exist ({count} nodes)")]
    OutputMissing { name: String, value: ValueId, count: usize },
    #[error("output `{name}`: a {kind} output needs {want}, but {value} is {got}")]
    OutputShape { name: String, kind: &'static str, want: &'static str, value: ValueId, got: Ty },
    #[error("output `{name}` is {want} but {value} is {got}; cast it first")]
    OutputDtype { name: String, want: DType, value: ValueId, got: DType },
    #[error("`{name}`: bool is not a storage type (tensors and outputs cannot be bool)")]
    BoolStorage { name: String },
    #[error("duplicate name `{0}` among parameters and outputs")]
    DuplicateName(String),
    #[error("`{name}`: {what}")]
    RowIndex { name: String, what: String },
}

impl VerifyError {
    /// The node the error is about, if it is about one.
    pub fn node(&self) -> Option<ValueId> {
        match self {
            VerifyError::ForwardRef { node, .. }
            | VerifyError::NoSuchParam { node, .. }
            | VerifyError::Type { node, .. }
            | VerifyError::StoredType { node, .. }
            | VerifyError::Softmax { node, .. }
            | VerifyError::HalfArithmetic { node, .. } => Some(*node),
            _ => None,
        }
    }
}

/// Check the frontend rules (see the module docs).
pub fn verify(k: &Kernel) -> Result<(), VerifyError> {
    verify_at(k, Level::Frontend)
}

/// Check the frontend rules plus the lowered-kernel rules (see the module docs).
pub fn verify_lowered(k: &Kernel) -> Result<(), VerifyError> {
    verify_at(k, Level::Lowered)
}

pub fn verify_at(k: &Kernel, level: Level) -> Result<(), VerifyError> {
    check_names(k)?;
    for (i, node) in k.nodes.iter().enumerate() {
        let id = ValueId(i as u32);
        let text = || node_text(k, &node.op);
        for operand in node.op.operands() {
            if operand.index() >= i {
                return Err(VerifyError::ForwardRef { node: id, text: text(), operand });
            }
        }
        for p in node.op.params_read() {
            if p as usize >= k.params.len() {
                return Err(VerifyError::NoSuchParam { node: id, text: text(), param: p, count: k.params.len() });
            }
        }
        let inferred = infer(&k.params, &k.nodes[..i], &node.op).map_err(|source| VerifyError::Type {
            node: id,
            text: text(),
            source,
        })?;
        if inferred != node.ty {
            return Err(VerifyError::StoredType { node: id, text: text(), stored: node.ty, inferred });
        }
        if level == Level::Lowered {
            check_lowered(k, id)?;
        }
    }
    check_outputs(k)
}

/// Softmax is gone and halves are only loaded or cast.
fn check_lowered(k: &Kernel, id: ValueId) -> Result<(), VerifyError> {
    let node = k.node(id);
    if let Op::Softmax(_) = node.op {
        return Err(VerifyError::Softmax { node: id, text: node_text(k, &node.op) });
    }
    if matches!(node.op, Op::Param(_) | Op::Cast(..)) {
        return Ok(());
    }
    // Operands are in range here: the SSA check ran first.
    let half = std::iter::once(node.ty.dtype)
        .chain(node.op.operands().into_iter().map(|o| k.ty(o).dtype))
        .find(|d| d.is_narrow());
    match half {
        Some(dtype) => Err(VerifyError::HalfArithmetic { node: id, text: node_text(k, &node.op), dtype }),
        None => Ok(()),
    }
}

fn check_names(k: &Kernel) -> Result<(), VerifyError> {
    let mut seen = HashSet::new();
    for name in k.params.iter().map(|p| &p.name).chain(k.outputs.iter().map(|o| &o.name)) {
        if !seen.insert(name.as_str()) {
            return Err(VerifyError::DuplicateName(name.clone()));
        }
    }
    for p in &k.params {
        if p.kind.is_tensor() && p.kind.dtype() == DType::Bool {
            return Err(VerifyError::BoolStorage { name: p.name.clone() });
        }
    }
    let indexed = k
        .params
        .iter()
        .map(|p| (&p.name, matches!(p.kind, ParamKind::Row(_)), p.index, "gathered"))
        .chain(k.outputs.iter().map(|o| (&o.name, matches!(o.kind, OutputKind::Row(_)), o.index, "scattered")));
    for (name, is_row, index, how) in indexed {
        let Some(i) = index else { continue };
        let bad = |what: String| Err(VerifyError::RowIndex { name: name.clone(), what });
        if !is_row {
            return bad(format!("only Row tensors can be {how}"));
        }
        match k.params.get(i as usize) {
            Some(ip) if ip.kind == ParamKind::PerRow(DType::I32) => {}
            Some(ip) => return bad(format!("{how} by `{}`, which is not a PerRow<i32> parameter", ip.name)),
            None => return bad(format!("{how} by parameter #{i}, which does not exist")),
        }
    }
    Ok(())
}

fn check_outputs(k: &Kernel) -> Result<(), VerifyError> {
    if k.outputs.is_empty() {
        return Err(VerifyError::NoOutputs);
    }
    for o in &k.outputs {
        let name = || o.name.clone();
        let Some(node) = k.nodes.get(o.value.index()) else {
            return Err(VerifyError::OutputMissing { name: name(), value: o.value, count: k.nodes.len() });
        };
        let (kind, want_shape, want) = match o.kind {
            OutputKind::Row(_) => ("Row", Shape::Elem, "a per-column value"),
            OutputKind::PerRow(_) => ("PerRow", Shape::Uniform, "a per-row value"),
        };
        if node.ty.shape != want_shape {
            return Err(VerifyError::OutputShape { name: name(), kind, want, value: o.value, got: node.ty });
        }
        if o.kind.dtype() == DType::Bool {
            return Err(VerifyError::BoolStorage { name: name() });
        }
        if node.ty.dtype != o.kind.dtype() {
            return Err(VerifyError::OutputDtype {
                name: name(),
                want: o.kind.dtype(),
                value: o.value,
                got: node.ty.dtype,
            });
        }
    }
    Ok(())
}

/// The op's text, or its debug form when it names a parameter that does not exist
/// (`Kernel::op_text` indexes the parameter list and would panic).
fn node_text(k: &Kernel, op: &Op) -> String {
    match op {
        op if op.params_read().iter().any(|p| *p as usize >= k.params.len()) => format!("{op:?}"),
        _ => k.op_text(op),
    }
}
