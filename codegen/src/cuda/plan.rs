//! What the emitter needs to know before writing a line: the input checks, which nodes are
//! live, which values are cached across stages, and what each stage contains.
//!
//! Invariants of a [`Plan`] (the emitter relies on them):
//! - the kernel is lowered (no `Softmax`; unary/binary/compare/select/reduce never see a half;
//!   reductions are f32), no tensor is `Bool`, and every output's value has its dtype;
//! - only live nodes (reachable from an output) are emitted: a dead node would become an unused
//!   variable, which NVRTC warns about;
//! - a kernel runs the fixed loop exactly when the schedule's live cached values are not
//!   empty (`fixed_loop`), so the launch rules (which size the block from the schedule) always
//!   cover the loop the emitter writes;
//! - `cached` holds what is actually kept in registers: the live `Elem` values that a live
//!   node of a later stage reads, except that elementwise arithmetic built from uniforms and
//!   params (`remat`) is recomputed in each stage that reads it and the params it needs are
//!   cached instead, as packed raw bits: the registers hold the row's inputs once, not every
//!   intermediate (half the bytes of f32 values for f16/bf16);
//! - within a stage every list is in SSA order, and every operand is computed in the same or
//!   an earlier stage.

use super::prelude::Sections;
use crate::ir::{elem_cone, DType, Kernel, Op, OutputKind, ParamKind, ReduceOp, Shape, ValueId};
use crate::schedule::Schedule;

#[derive(Clone, Debug, Default)]
pub struct StagePlan {
    /// Live `Uniform` nodes of the prologue.
    pub uniform: Vec<ValueId>,
    /// Live `Elem` param nodes: vector loads at the top of the loop body.
    pub loads: Vec<ValueId>,
    /// Live `Elem` nodes computed element by element.
    pub elem: Vec<ValueId>,
    /// Live reductions accumulated in this stage's loop, with their op and operand.
    pub reductions: Vec<(ValueId, ReduceOp, ValueId)>,
    pub row_outputs: Vec<usize>,
    pub per_row_outputs: Vec<usize>,
}

impl StagePlan {
    pub fn has_loop(&self) -> bool {
        !self.loads.is_empty() || !self.elem.is_empty() || !self.reductions.is_empty() || !self.row_outputs.is_empty()
    }
    pub fn is_empty(&self) -> bool {
        !self.has_loop() && self.uniform.is_empty() && self.per_row_outputs.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub cached: Vec<ValueId>,
    pub is_cached: Vec<bool>,
    /// Whether the schedule's cached values are live (the fixed loop is needed).
    fixed: bool,
    pub stages: Vec<StagePlan>,
    /// `Row` params whose row of this block is read (by a load or a rope).
    pub row_params: Vec<usize>,
    pub sections: Sections,
}

impl Plan {
    /// Kernels with cached values run the fixed `KILN_MAX_ITERS` loop in every stage.
    pub fn fixed_loop(&self) -> bool {
        self.fixed
    }
    pub fn any_loop(&self) -> bool {
        self.stages.iter().any(|s| s.has_loop())
    }
    pub fn any_reduction(&self) -> bool {
        self.stages.iter().any(|s| !s.reductions.is_empty())
    }
}

/// Check the kernel and schedule, and plan the emission. Errors are messages for
/// `CompileError::Emit`.
pub fn plan(k: &Kernel, s: &Schedule) -> Result<Plan, String> {
    check_lowered(k)?;
    let n = k.nodes.len();
    if s.stage_of.len() != n {
        return Err(format!("schedule covers {} nodes, the kernel has {n}", s.stage_of.len()));
    }
    // Liveness: outputs, then operands of live nodes (reverse SSA order). A rope's source is
    // not live through the rope: the rope evaluates it itself, at each column and its partner,
    // from memory (`rope_src`), reading the uniform values it is built from.
    let mut live = vec![false; n];
    let mut rope_src = vec![false; n];
    for o in &k.outputs {
        live[o.value.index()] = true;
    }
    for i in (0..n).rev() {
        if !live[i] {
            continue;
        }
        for o in k.nodes[i].op.value_operands() {
            live[o.index()] = true;
        }
        if let Op::Rope { x, .. } | Op::RopeTable { x, .. } = k.nodes[i].op {
            for c in elem_cone(&k.nodes, x) {
                rope_src[c.index()] = true;
                for o in k.node(c).op.operands().into_iter().filter(|o| k.ty(*o).shape == Shape::Uniform) {
                    live[o.index()] = true;
                }
            }
        }
    }
    // Cached values, and operands that would be read before they exist.
    let mut is_cached = vec![false; n];
    for (i, node) in k.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        for o in node.op.value_operands() {
            let (su, so) = (s.stage_of[i], s.stage_of[o.index()]);
            let is_reduce = matches!(node.op, Op::Reduce(..));
            if so > su || (is_reduce && so != su) {
                return Err(format!("schedule computes {o} in stage {so}, but its user %{i} needs it in stage {su}"));
            }
            // A reduction's result exists only after its stage's loop.
            if matches!(k.node(o).op, Op::Reduce(..)) && su <= so {
                return Err(format!("%{i} reads reduction {o} in stage {su}, before the reduction is finished"));
            }
            if k.ty(o).shape == Shape::Elem && su > so && !matches!(node.op, Op::Reduce(..)) {
                is_cached[o.index()] = true;
            }
        }
    }
    if let Some(i) = (0..n).find(|&i| is_cached[i] && !s.is_cached(ValueId(i as u32))) {
        return Err(format!("%{i} is read in a later stage but the schedule does not cache it"));
    }
    let fixed = is_cached.iter().any(|c| *c);
    // Recompute rather than cache: an elementwise node whose operands are uniform, params or
    // themselves recomputed is redone in each later stage that reads it, and the params it
    // needs are cached instead, as packed raw bits. Registers then hold the row's inputs once
    // (half the bytes of f32 values for f16/bf16) rather than every intermediate, which keeps
    // norms over bf16 rows from spilling and their occupancy up; the arithmetic is free next
    // to the memory traffic. RoPE is never recomputed (it reads memory).
    let mut remat = vec![false; n];
    for i in 0..n {
        let node = &k.nodes[i];
        let cheap = matches!(
            node.op,
            Op::Unary(..) | Op::Binary(..) | Op::Cmp(..) | Op::Select(..) | Op::Cast(..) | Op::Column
        );
        if !live[i] || node.ty.shape != Shape::Elem || !cheap {
            continue;
        }
        remat[i] = node
            .op
            .operands()
            .iter()
            .all(|o| k.ty(*o).shape == Shape::Uniform || remat[o.index()] || matches!(k.node(*o).op, Op::Param(_)));
    }
    // Which values later stages read, once recomputation is followed down to params.
    let mut needed_later = vec![false; n];
    for i in (0..n).rev() {
        if !live[i] {
            continue;
        }
        let read_later = is_cached[i] || needed_later[i];
        if read_later && remat[i] {
            for o in k.nodes[i].op.operands() {
                if k.ty(o).shape == Shape::Elem {
                    needed_later[o.index()] = true;
                }
            }
        }
    }
    for i in 0..n {
        if remat[i] {
            is_cached[i] = false;
        } else if needed_later[i] && matches!(k.nodes[i].op, Op::Param(_)) {
            is_cached[i] = true;
        }
    }
    let cached: Vec<ValueId> = (0..n).filter(|&i| is_cached[i]).map(|i| ValueId(i as u32)).collect();
    // Stage contents, from the schedule's lists, keeping live nodes.
    let mut stages = vec![StagePlan::default(); s.stages.len()];
    let mut placed = vec![false; n];
    for (si, st) in s.stages.iter().enumerate() {
        let p = &mut stages[si];
        for &v in st.uniform.iter().chain(&st.elem).chain(&st.reductions) {
            if v.index() >= n || placed[v.index()] || s.stage_of[v.index()] != si {
                return Err(format!("schedule places {v} twice or outside its stage"));
            }
            placed[v.index()] = true;
        }
        let keep = |l: &[ValueId]| -> Vec<ValueId> { l.iter().copied().filter(|v| live[v.index()]).collect() };
        p.uniform = keep(&st.uniform);
        let elem = keep(&st.elem);
        p.loads = elem.iter().copied().filter(|v| matches!(k.node(*v).op, Op::Param(_))).collect();
        p.elem = elem.iter().copied().filter(|v| !matches!(k.node(*v).op, Op::Param(_))).collect();
        for &v in st.reductions.iter().filter(|v| live[v.index()]) {
            match k.node(v).op {
                Op::Reduce(r, a) => p.reductions.push((v, r, a)),
                _ => return Err(format!("schedule lists {v} as a reduction")),
            }
        }
        let shape_ok = |l: &[ValueId], sh: Shape| {
            l.iter().all(|v| k.ty(*v).shape == sh && !matches!(k.node(*v).op, Op::Reduce(..)))
        };
        if !shape_ok(&p.uniform, Shape::Uniform) || !shape_ok(&elem, Shape::Elem) {
            return Err(format!("schedule stage {si} mixes up per-row and per-column nodes"));
        }
        if let Some(&oi) = st.row_outputs.iter().chain(&st.per_row_outputs).find(|&&oi| oi >= k.outputs.len()) {
            return Err(format!("schedule stores output {oi}, which does not exist"));
        }
        p.row_outputs = st.row_outputs.clone();
        p.per_row_outputs = st.per_row_outputs.clone();
        for l in [&mut p.uniform, &mut p.loads, &mut p.elem] {
            l.sort();
        }
        p.reductions.sort_by_key(|r| r.0);
    }
    if let Some(i) = (0..n).find(|&i| live[i] && !placed[i]) {
        return Err(format!("schedule does not place live node %{i}"));
    }
    // A recomputed value also appears in each later stage that reads it, with the recomputed
    // values it is made from (walk users in reverse SSA order so operands follow their users).
    let mut extra: Vec<Vec<bool>> = vec![vec![false; n]; stages.len()];
    for u in (0..n).rev() {
        let node = &k.nodes[u];
        if !live[u] || matches!(node.op, Op::Reduce(..)) {
            continue;
        }
        for (si, row) in extra.iter_mut().enumerate() {
            let here = s.stage_of[u] == si || row[u];
            if !here {
                continue;
            }
            for o in node.op.value_operands() {
                if remat[o.index()] && si > s.stage_of[o.index()] {
                    row[o.index()] = true;
                }
            }
        }
    }
    for (si, row) in extra.iter().enumerate() {
        for (v, &add) in row.iter().enumerate() {
            let v = ValueId(v as u32);
            if add && !stages[si].elem.contains(&v) {
                stages[si].elem.push(v);
            }
        }
        stages[si].elem.sort();
    }
    for (oi, o) in k.outputs.iter().enumerate() {
        let at: Vec<usize> = (0..stages.len())
            .filter(|&si| stages[si].row_outputs.contains(&oi) || stages[si].per_row_outputs.contains(&oi))
            .collect();
        if at.len() != 1 {
            return Err(format!("schedule stores output `{}` {} times", o.name, at.len()));
        }
        // A Row output is stored in the loop that computes its value; a PerRow output after
        // the prologue that has it (a reduction's result exists from the next stage on).
        let in_row_list = stages[at[0]].row_outputs.contains(&oi);
        if in_row_list != matches!(o.kind, OutputKind::Row(_)) {
            return Err(format!("schedule stores output `{}` as the wrong kind", o.name));
        }
        let v = o.value.index();
        let ready = match (o.kind, &k.nodes[v].op) {
            (OutputKind::Row(_), _) => at[0] == s.stage_of[v],
            (OutputKind::PerRow(_), Op::Reduce(..)) => at[0] > s.stage_of[v],
            (OutputKind::PerRow(_), _) => at[0] >= s.stage_of[v],
        };
        if !ready {
            return Err(format!(
                "schedule stores output `{}` in stage {} where {} is not at hand",
                o.name, at[0], o.value
            ));
        }
    }
    // Row params whose row pointer is needed (by a load or a rope's source).
    let mut row_params = vec![];
    for (i, node) in k.nodes.iter().enumerate() {
        let Op::Param(p) = node.op else { continue };
        if (live[i] || rope_src[i]) && matches!(k.params[p as usize].kind, ParamKind::Row(_)) {
            row_params.push(p as usize);
        }
    }
    row_params.sort();
    row_params.dedup();
    let rope = (0..n).any(|i| live[i] && matches!(k.nodes[i].op, Op::Rope { .. } | Op::RopeTable { .. }));
    let reductions = || stages.iter().flat_map(|s| &s.reductions);
    let sections =
        Sections { reduce: reductions().next().is_some(), argmax: reductions().any(|r| r.1 == ReduceOp::ArgMax), rope };
    Ok(Plan { cached, is_cached, fixed, stages, row_params, sections })
}

/// The input contract: a lowered kernel whose tensors the ABI can pass.
fn check_lowered(k: &Kernel) -> Result<(), String> {
    for p in &k.params {
        if p.kind.is_tensor() && p.kind.dtype() == DType::Bool {
            return Err(format!("param `{}` is a bool tensor; bools are never stored (pass an i32)", p.name));
        }
    }
    for o in &k.outputs {
        if o.kind.dtype() == DType::Bool {
            return Err(format!("output `{}` is bool; bools are never stored (cast to i32)", o.name));
        }
        if o.value.index() >= k.nodes.len() {
            return Err(format!("output `{}` names {} which does not exist", o.name, o.value));
        }
        let t = k.ty(o.value);
        let (want_shape, d) = match o.kind {
            OutputKind::Row(d) => (Shape::Elem, d),
            OutputKind::PerRow(d) => (Shape::Uniform, d),
        };
        if t.dtype != d || t.shape != want_shape {
            return Err(format!("output `{}` stores {} of type {t}, which does not match its kind", o.name, o.value));
        }
    }
    for (i, node) in k.nodes.iter().enumerate() {
        let ops = node.op.operands();
        if ops.iter().any(|o| o.index() >= i) {
            return Err(format!("%{i} uses a value that is not defined before it"));
        }
        let half_in = ops.iter().any(|o| k.ty(*o).dtype.is_narrow());
        let what = match &node.op {
            Op::Softmax(_) => return Err(format!("%{i}: softmax must be lowered before CUDA emission")),
            Op::Unary(..) | Op::Binary(..) | Op::Cmp(..) | Op::Select(..) => "arithmetic",
            Op::Reduce(r, a) => {
                if k.ty(*a).dtype != DType::F32 {
                    return Err(format!("%{i}: reduce.{r:?} of {} (reductions run in f32; widen first)", k.ty(*a)));
                }
                continue;
            }
            Op::Param(p) if *p as usize >= k.params.len() => return Err(format!("%{i}: no param {p}")),
            Op::RopeTable { table, .. }
                if k.params.get(*table as usize).map(|p| p.kind) != Some(ParamKind::Bcast(DType::F32)) =>
            {
                return Err(format!("%{i}: a rope table must be a Bcast<f32> param"))
            }
            _ => continue,
        };
        if half_in || node.ty.dtype.is_narrow() {
            return Err(format!(
                "%{i}: {what} on a half type ({}); lowering widens halves to f32",
                k.op_text(&node.op)
            ));
        }
    }
    Ok(())
}
