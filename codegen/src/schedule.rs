//! The staging pass: split a kernel into stages at row reductions and fuse each stage's
//! elementwise chain into one loop over the row's columns.
//!
//! Levels: params and constants are level 0; a reduction's result is one level above its
//! operand; any other node sits at the highest level of its operands. A node can be computed
//! no earlier than its level's stage.
//!
//! Placement (the invariants the backends rely on):
//! - a `Uniform` node is computed in the prologue of the stage of its level (once per row,
//!   before that stage's column loop);
//! - an `Elem` node is computed inside the column loop of the *first stage that needs it*
//!   (never before its level): a broadcast weight used only after a norm's reduction is
//!   loaded after it, not carried across;
//! - a reduction is accumulated in the loop of the stage where its operand is computed and
//!   finished (block-wide) after that loop;
//! - an `Elem` value computed in one stage and used in a later one is **cached** (registers on
//!   the GPU), so the row is read from memory once; a rope's rotated source is the exception
//!   (the backend evaluates it at each column and its partner, see `Op::value_operands`);
//! - `Row` outputs are stored in the loop of the stage where their value is computed;
//!   `PerRow` outputs after the prologue of the stage of their level.
//!
//! Every stage's node lists are in SSA order.

use crate::ir::{Kernel, Op, OutputKind, Shape, ValueId};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stage {
    /// `Uniform` nodes computed once per row before the loop.
    pub uniform: Vec<ValueId>,
    /// `Elem` nodes computed inside the column loop.
    pub elem: Vec<ValueId>,
    /// Reductions accumulated in the loop and finished after it.
    pub reductions: Vec<ValueId>,
    /// Indices into `Kernel::outputs` of `Row` outputs stored in this stage's loop.
    pub row_outputs: Vec<usize>,
    /// Indices into `Kernel::outputs` of `PerRow` outputs stored after this stage's prologue.
    pub per_row_outputs: Vec<usize>,
}

impl Stage {
    /// Whether this stage needs a column loop at all.
    pub fn has_loop(&self) -> bool {
        !self.elem.is_empty() || !self.reductions.is_empty() || !self.row_outputs.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    pub stages: Vec<Stage>,
    /// `Elem` values computed in one stage and read in a later one, in SSA order.
    pub cached: Vec<ValueId>,
    /// The stage that computes each node (indexed by node id).
    pub stage_of: Vec<usize>,
}

impl Schedule {
    pub fn is_cached(&self, v: ValueId) -> bool {
        self.cached.binary_search(&v).is_ok()
    }
}

/// Compute the schedule of a verified kernel (softmax must already be lowered).
pub fn schedule(k: &Kernel) -> Schedule {
    let n = k.nodes.len();
    // 1. levels
    let mut level = vec![0usize; n];
    for (i, node) in k.nodes.iter().enumerate() {
        let base = node.op.operands().iter().map(|o| level[o.index()]).max().unwrap_or(0);
        level[i] = match node.op {
            Op::Reduce(..) => base + 1,
            _ => base,
        };
    }
    // 2. the stage where each node is needed: uses by ordinary nodes need the value in the
    //    user's stage; a reduction needs its operand in the operand's own stage (it
    //    accumulates there); an output needs its value where it is stored.
    let mut stage_of = level.clone();
    // Elem nodes sink to their first use. Walk users in reverse SSA order so a user's stage
    // is final before its operands look at it.
    let mut first_use: Vec<Option<usize>> = vec![None; n];
    for o in &k.outputs {
        let s = level[o.value.index()];
        let slot = &mut first_use[o.value.index()];
        *slot = Some(slot.map_or(s, |x| x.min(s)));
    }
    for i in (0..n).rev() {
        let node = &k.nodes[i];
        if node.ty.shape == Shape::Elem && !matches!(node.op, Op::Reduce(..)) {
            if let Some(u) = first_use[i] {
                stage_of[i] = u.max(level[i]);
            }
        }
        let my_stage = stage_of[i];
        for o in node.op.operands() {
            let need = match node.op {
                Op::Reduce(..) => level[o.index()],
                _ => my_stage,
            };
            let slot = &mut first_use[o.index()];
            *slot = Some(slot.map_or(need, |x| x.min(need)));
        }
    }
    // A reduction lives in the stage of its operand (where it accumulates).
    for (i, node) in k.nodes.iter().enumerate() {
        if let Op::Reduce(_, a) = node.op {
            stage_of[i] = stage_of[a.index()];
        }
    }
    let n_stages = stage_of.iter().copied().max().unwrap_or(0).max(level.iter().copied().max().unwrap_or(0)) + 1;
    let mut stages = vec![Stage::default(); n_stages];
    for (i, node) in k.nodes.iter().enumerate() {
        let v = ValueId(i as u32);
        match (&node.op, node.ty.shape) {
            (Op::Reduce(..), _) => stages[stage_of[i]].reductions.push(v),
            (_, Shape::Uniform) => stages[stage_of[i]].uniform.push(v),
            (_, Shape::Elem) => stages[stage_of[i]].elem.push(v),
        }
    }
    for (oi, o) in k.outputs.iter().enumerate() {
        let s = stage_of[o.value.index()];
        match o.kind {
            OutputKind::Row(_) => stages[s].row_outputs.push(oi),
            OutputKind::PerRow(_) => stages[level[o.value.index()].max(s)].per_row_outputs.push(oi),
        }
    }
    // 3. cached values: Elem nodes read by a node (or output) in a later stage. A rope's
    //    source is not read from registers: the backend evaluates it at both columns of a pair.
    let mut cached = vec![];
    let mut read_later = vec![false; n];
    let rope_only = rope_source_only(k);
    for (j, u) in k.nodes.iter().enumerate() {
        // A reduction reads its operand in the operand's own stage; a node only inside rope
        // sources is evaluated by its rope, from memory.
        if matches!(u.op, Op::Reduce(..)) || rope_only[j] {
            continue;
        }
        for o in u.op.value_operands() {
            if stage_of[j] > stage_of[o.index()] {
                read_later[o.index()] = true;
            }
        }
    }
    for (i, node) in k.nodes.iter().enumerate() {
        if node.ty.shape == Shape::Elem && read_later[i] {
            cached.push(ValueId(i as u32));
        }
    }
    Schedule { stages, cached, stage_of }
}

/// The `Elem` nodes used only inside ropes' sources (by a rope as the value it rotates, or by
/// such nodes): the backend evaluates them at each column itself, so they read nothing from
/// registers. Users come after their operands, so one reverse pass sees every use first.
fn rope_source_only(k: &Kernel) -> Vec<bool> {
    let n = k.nodes.len();
    let (mut only, mut rope_use, mut other_use) = (vec![false; n], vec![false; n], vec![false; n]);
    for o in &k.outputs {
        other_use[o.value.index()] = true;
    }
    for i in (0..n).rev() {
        let node = &k.nodes[i];
        only[i] = rope_use[i] && !other_use[i] && node.ty.shape == Shape::Elem;
        let x = match node.op {
            Op::Rope { x, .. } | Op::RopeTable { x, .. } => Some(x),
            _ => None,
        };
        for o in node.op.operands() {
            if only[i] || Some(o) == x {
                rope_use[o.index()] = true;
            } else {
                other_use[o.index()] = true;
            }
        }
    }
    only
}
