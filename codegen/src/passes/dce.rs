//! `dce`: drop every node no output depends on, renumbering the survivors in their original
//! (SSA) order. Names are kept. Parameters are never dropped from `Kernel::params` (they are
//! the ABI); only their unused load nodes go.

use super::rewrite::Rewriter;
use crate::ir::Kernel;

pub fn dce(k: Kernel) -> Kernel {
    let n = k.nodes.len();
    let mut live = vec![false; n];
    for o in &k.outputs {
        if let Some(l) = live.get_mut(o.value.index()) {
            *l = true;
        }
    }
    // Users come after their operands, so one reverse sweep marks everything.
    for i in (0..n).rev() {
        if live[i] {
            for v in k.nodes[i].op.operands() {
                if let Some(l) = live.get_mut(v.index()) {
                    *l = true;
                }
            }
        }
    }
    let mut r = Rewriter::new(n);
    for (i, node) in k.nodes.iter().enumerate() {
        if live[i] {
            let op = r.remap(&node.op);
            let new = r.push(crate::ir::Node { op, ty: node.ty, name: node.name.clone() });
            r.bind(i, new);
        }
    }
    r.finish(k)
}
