//! `cse`: merge nodes that compute the same op on the same operands with the same type.
//! Every op in the IR is pure, so two such nodes always hold the same value. The first node
//! survives and keeps its name (or takes the duplicate's name when it had none); later uses
//! of the duplicate point at it and the duplicate is dropped (renumbering the rest).
//!
//! The key is the op's debug text after operand renumbering, plus the type: `{:?}` of an f32
//! is its shortest round-tripping form, so distinct constants (0.0 and -0.0 too) never
//! merge, which `PartialEq` on `f32` would get wrong. Operands of commutative ops are put in
//! order first (`add`, `mul`, `and`, `or`, `cmp.eq`, `cmp.ne`); `min`/`max` are left alone
//! because `fminf(-0, +0)` may depend on operand order.

use super::rewrite::Rewriter;
use crate::ir::{BinaryOp, CmpOp, Kernel, Node, Op, Ty};
use std::collections::HashMap;

pub fn cse(k: Kernel) -> Kernel {
    let mut r = Rewriter::new(k.nodes.len());
    let mut seen: HashMap<(String, Ty), crate::ir::ValueId> = HashMap::new();
    for (i, node) in k.nodes.iter().enumerate() {
        let op = r.remap(&node.op);
        let key = (format!("{:?}", canonical(&op)), node.ty);
        let id = match seen.get(&key) {
            Some(&first) => {
                let kept = &mut r.nodes[first.index()];
                if kept.name.is_none() {
                    kept.name = node.name.clone();
                }
                first
            }
            None => {
                let id = r.push(Node { op, ty: node.ty, name: node.name.clone() });
                seen.insert(key, id);
                id
            }
        };
        r.bind(i, id);
    }
    r.finish(k)
}

/// The op with the operands of commutative ops sorted (only used as a key).
fn canonical(op: &Op) -> Op {
    match *op {
        Op::Binary(b @ (BinaryOp::Add | BinaryOp::Mul | BinaryOp::And | BinaryOp::Or), x, y) => {
            Op::Binary(b, x.min(y), x.max(y))
        }
        Op::Cmp(c @ (CmpOp::Eq | CmpOp::Ne), x, y) => Op::Cmp(c, x.min(y), x.max(y)),
        ref other => other.clone(),
    }
}
