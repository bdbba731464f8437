//! `const_fold`: replace an op whose operands are all `Const` nodes by the constant it
//! computes, using the backends' scalar semantics ([`crate::cpu::math`]) so folding never
//! changes a result. Node ids do not change (a folded node is rewritten in place; `dce`
//! drops constants nobody reads any more).
//!
//! Not folded, on purpose:
//! - `Param` loads, comptime ones included: they are launch arguments, not constants;
//! - casts to `f16`/`bf16`: `Const` has no half variant, so the result is not expressible;
//! - results that are NaN or infinite: every literal stays printable as a plain decimal in
//!   every backend, and the op keeps its runtime meaning;
//! - i32 division by zero and `i32::MIN / -1`: undefined on the GPU, so never invented here.

use crate::cpu::math;
use crate::cpu::CpuScalar;
use crate::ir::{BinaryOp, Const, Kernel, Op, ValueId};

pub fn const_fold(mut k: Kernel) -> Kernel {
    for i in 0..k.nodes.len() {
        if let Some(c) = fold(&k, i) {
            if c.dtype() == k.nodes[i].ty.dtype {
                k.nodes[i].op = Op::Const(c);
            }
        }
    }
    k
}

fn fold(k: &Kernel, i: usize) -> Option<Const> {
    let op = &k.nodes[i].op;
    if matches!(op, Op::Param(_) | Op::Const(_)) {
        return None;
    }
    let arg = |v: ValueId| -> Option<CpuScalar> {
        match k.nodes.get(v.index()).filter(|_| v.index() < i)?.op {
            Op::Const(c) => Some(scalar(c)),
            _ => None,
        }
    };
    let out = match *op {
        Op::Unary(u, a) => math::unary(u, arg(a)?)?,
        Op::Binary(b, x, y) => {
            let (x, y) = (arg(x)?, arg(y)?);
            if b == BinaryOp::Div {
                if let (CpuScalar::I32(p), CpuScalar::I32(q)) = (x, y) {
                    if q == 0 || (p == i32::MIN && q == -1) {
                        return None;
                    }
                }
            }
            math::binary(b, x, y)?
        }
        Op::Cmp(c, x, y) => CpuScalar::Bool(math::cmp(c, arg(x)?, arg(y)?)?),
        Op::Select(c, a, b) => math::select(arg(c)?, arg(a)?, arg(b)?)?,
        Op::Cast(a, to) if !to.is_narrow() => {
            let from = k.nodes.get(a.index())?.ty.dtype;
            math::cast(arg(a)?, from, to)?
        }
        _ => return None,
    };
    match out {
        CpuScalar::F32(x) if !x.is_finite() => None,
        CpuScalar::F32(x) => Some(Const::F32(x)),
        CpuScalar::I32(x) => Some(Const::I32(x)),
        CpuScalar::Bool(x) => Some(Const::Bool(x)),
    }
}

fn scalar(c: Const) -> CpuScalar {
    match c {
        Const::F32(x) => CpuScalar::F32(x),
        Const::I32(x) => CpuScalar::I32(x),
        Const::Bool(x) => CpuScalar::Bool(x),
    }
}
