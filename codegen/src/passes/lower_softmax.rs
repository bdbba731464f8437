//! `lower_softmax`: `y = softmax(x)` becomes the numerically safe form
//! `m = max(x); e = exp(x - m); y = e / sum(e)`.
//! Subtracting the row max keeps `exp` from overflowing; it is what every backend runs (the
//! schedule turns the two reductions into three stages). The result node keeps the softmax
//! node's name; the intermediates are unnamed.

use super::rewrite::Rewriter;
use crate::ir::{BinaryOp, Kernel, Node, Op, ReduceOp, Shape, Ty, UnaryOp};

pub fn lower_softmax(k: Kernel) -> Kernel {
    let mut r = Rewriter::new(k.nodes.len());
    for (i, node) in k.nodes.iter().enumerate() {
        let op = r.remap(&node.op);
        let new = match op {
            Op::Softmax(x) => {
                let elem = node.ty;
                let uni = Ty::new(elem.dtype, Shape::Uniform);
                let mut push = |op, ty, name: Option<String>| r.push(Node { op, ty, name });
                let m = push(Op::Reduce(ReduceOp::Max, x), uni, None);
                let d = push(Op::Binary(BinaryOp::Sub, x, m), elem, None);
                let e = push(Op::Unary(UnaryOp::Exp, d), elem, None);
                let s = push(Op::Reduce(ReduceOp::Sum, e), uni, None);
                push(Op::Binary(BinaryOp::Div, e, s), elem, node.name.clone())
            }
            op => r.push(Node { op, ty: node.ty, name: node.name.clone() }),
        };
        r.bind(i, new);
    }
    r.finish(k)
}
