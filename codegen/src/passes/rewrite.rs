//! Rebuilding a kernel's node list with renumbering: the shared mechanics of passes that
//! insert or drop nodes. Old ids map to new ids as nodes are emitted in SSA order, so every
//! operand is remapped before its user is emitted.

use crate::ir::{Kernel, Node, Op, ValueId};

pub(crate) struct Rewriter {
    pub nodes: Vec<Node>,
    /// New id of each old node emitted so far (`None`: dropped, or not reached yet).
    map: Vec<Option<ValueId>>,
}

impl Rewriter {
    pub fn new(old_len: usize) -> Rewriter {
        Rewriter { nodes: Vec::with_capacity(old_len), map: vec![None; old_len] }
    }

    /// The new id of an old value. An id with no mapping (an invalid kernel) is kept as it
    /// is, so the verifier after the pass reports it instead of this pass panicking.
    pub fn get(&self, old: ValueId) -> ValueId {
        self.map.get(old.index()).copied().flatten().unwrap_or(old)
    }

    /// `op` with every operand remapped to new ids.
    pub fn remap(&self, op: &Op) -> Op {
        op.map_operands(|v| self.get(v))
    }

    /// Append a new node; returns its id.
    pub fn push(&mut self, node: Node) -> ValueId {
        self.nodes.push(node);
        ValueId((self.nodes.len() - 1) as u32)
    }

    /// Record that old node `old` is now `new`.
    pub fn bind(&mut self, old: usize, new: ValueId) {
        if let Some(slot) = self.map.get_mut(old) {
            *slot = Some(new);
        }
    }

    /// Install the new nodes in `k` and remap its outputs.
    pub fn finish(self, mut k: Kernel) -> Kernel {
        for o in &mut k.outputs {
            o.value = self.get(o.value);
        }
        k.nodes = self.nodes;
        k
    }
}
