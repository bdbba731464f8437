//! Where each value of a lowered kernel lives while the CPU backend runs a row, decided once
//! per kernel.
//!
//! - `Uniform` values are scalars in a per-worker table indexed by node id. Those that depend
//!   only on constants and comptime parameters are *invariant*: computed once per call.
//! - `Elem` values are rows of `width` values in typed slot arenas (f32 for every float
//!   dtype, i32, bool). Slots are reused: a slot is freed after the last node that reads it
//!   (linear scan over the SSA order), and a node's slot is allocated before its operands'
//!   slots are freed, so a node never writes a slot it reads.
//! - Some `Elem` values need no slot: f32/i32 `Row` parameters are read in place, `Bcast`
//!   parameters too (halves are widened once per call), and casts that do not change the f32
//!   carrier (a half to f32, a dtype to itself) share their operand's location.
//!
//! Output values stay live to the end of the row (outputs are stored after the last node).

use crate::ir::{DType, Kernel, Op, ParamKind, Shape};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// A scalar in the per-row table, at the node's own index.
    Uniform,
    /// Parameter `n` read in place (an f32/i32 `Row` tensor's current row, or a `Bcast` tensor).
    Input(usize),
    /// Slot `n` of the f32 arena (every float dtype).
    F(usize),
    /// Slot `n` of the i32 arena.
    I(usize),
    /// Slot `n` of the bool arena.
    B(usize),
}

#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub loc: Vec<Loc>,
    /// Uniform nodes computed once per call, in SSA order.
    pub invariant: Vec<usize>,
    /// Nodes computed for every row, in SSA order.
    pub steps: Vec<usize>,
    /// Slots in the f32, i32 and bool arenas.
    pub slots: [usize; 3],
}

/// Arena index of a dtype's carrier: 0 f32 (all floats), 1 i32, 2 bool.
fn arena(d: DType) -> usize {
    match d {
        DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8 => 0,
        DType::I32 => 1,
        DType::Bool => 2,
    }
}

/// A cast whose result has the same carrier values as its operand.
pub(crate) fn is_identity_cast(from: DType, to: DType) -> bool {
    from == to || (from.is_float() && to == DType::F32)
}

/// Plan a kernel that passed `verify_lowered` (operands are earlier nodes, params exist).
pub(crate) fn plan(k: &Kernel) -> Plan {
    let n = k.nodes.len();
    let mut loc = vec![Loc::Uniform; n];
    let mut invariant_flag = vec![false; n];
    let mut root: Vec<usize> = (0..n).collect();
    let mut needs_slot = vec![false; n];
    let mut steps = vec![];
    let mut invariant = vec![];

    for (i, node) in k.nodes.iter().enumerate() {
        if node.ty.shape == Shape::Uniform {
            let inv = match node.op {
                Op::Const(_) => true,
                Op::Param(p) => matches!(k.params[p as usize].kind, ParamKind::Comptime(_)),
                Op::Reduce(..) => false,
                ref op => op.operands().iter().all(|o| invariant_flag[o.index()]),
            };
            invariant_flag[i] = inv;
            if inv {
                invariant.push(i);
            } else {
                steps.push(i);
            }
            continue;
        }
        match node.op {
            Op::Param(p) => match k.params[p as usize].kind {
                ParamKind::Row(DType::F32 | DType::I32) | ParamKind::Bcast(_) => loc[i] = Loc::Input(p as usize),
                _ => needs_slot[i] = true,
            },
            Op::Cast(a, to) if is_identity_cast(k.ty(a).dtype, to) && k.ty(a).shape == Shape::Elem => {
                root[i] = root[a.index()];
            }
            _ => needs_slot[i] = true,
        }
        if needs_slot[i] {
            steps.push(i);
        }
    }

    // Last reader of each root (the row's end for outputs; itself when never read).
    let mut last_use: Vec<usize> = (0..n).collect();
    for (j, node) in k.nodes.iter().enumerate() {
        for o in node.op.operands() {
            let r = root[o.index()];
            last_use[r] = last_use[r].max(j);
        }
    }
    for o in &k.outputs {
        last_use[root[o.value.index()]] = usize::MAX;
    }

    let mut free: [Vec<usize>; 3] = [vec![], vec![], vec![]];
    let mut count = [0usize; 3];
    for (i, node) in k.nodes.iter().enumerate() {
        if needs_slot[i] {
            let a = arena(node.ty.dtype);
            let s = free[a].pop().unwrap_or_else(|| {
                count[a] += 1;
                count[a] - 1
            });
            loc[i] = match a {
                0 => Loc::F(s),
                1 => Loc::I(s),
                _ => Loc::B(s),
            };
        } else if root[i] != i {
            loc[i] = loc[root[i]];
        }
        // Release every root whose last reader is this node (each once), then this node if
        // nothing reads it at all.
        let mut released: Vec<usize> = vec![];
        for r in node.op.operands().into_iter().map(|o| root[o.index()]).chain(std::iter::once(root[i])) {
            if last_use[r] == i && needs_slot[r] && !released.contains(&r) {
                released.push(r);
                match loc[r] {
                    Loc::F(s) => free[0].push(s),
                    Loc::I(s) => free[1].push(s),
                    Loc::B(s) => free[2].push(s),
                    Loc::Uniform | Loc::Input(_) => {}
                }
            }
        }
    }
    Plan { loc, invariant, steps, slots: count }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Builder;
    use crate::ir::{BinaryOp, OutputKind, UnaryOp};

    #[test]
    fn slots_are_reused_along_a_chain() {
        let mut b = Builder::new("chain", "test", DType::BF16);
        let x = b.param("x", ParamKind::Row(DType::BF16)).unwrap();
        let mut v = b.widen(x).unwrap();
        for _ in 0..10 {
            v = b.unary(UnaryOp::Exp, v).unwrap();
        }
        b.output("y", OutputKind::Row(DType::BF16), v).unwrap();
        let k = b.finish().unwrap();
        let p = plan(&k);
        // the widened input, then ping-pong between two slots, then the rounded output
        assert!(p.slots[0] <= 3, "{:?}", p.slots);
        // the widening cast shares the loaded row's slot
        assert_eq!(p.loc[0], p.loc[1]);
    }

    #[test]
    fn f32_inputs_are_read_in_place_and_constants_are_invariant() {
        let mut b = Builder::new("scale", "test", DType::F32);
        let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
        let c = b.f32(2.0);
        let y = b.binary(BinaryOp::Mul, x, c).unwrap();
        b.output("y", OutputKind::Row(DType::F32), y).unwrap();
        let k = b.finish().unwrap();
        let p = plan(&k);
        assert_eq!(p.loc[0], Loc::Input(0));
        assert_eq!(p.invariant, vec![1]);
        assert_eq!(p.steps, vec![2]);
        assert_eq!(p.slots, [1, 0, 0]);
    }
}
