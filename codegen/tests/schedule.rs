//! The staging pass on lowered test kernels: stage counts, what is cached across stages, and
//! where loads sit.

mod common;

use common::kernels;
use kiln_codegen::ir::{DType, Kernel, Op, ParamKind, RopeStyle, Shape, ValueId};
use kiln_codegen::passes::lower;
use kiln_codegen::schedule::{schedule, Schedule};

fn lowered(k: Kernel) -> Kernel {
    lower(k).unwrap()
}

/// The node that loads parameter `name`, widened to f32 if it is a half (what arithmetic reads).
fn loaded(k: &Kernel, name: &str) -> (ValueId, ValueId) {
    let p = k.params.iter().position(|p| p.name == name).unwrap() as u32;
    let load = k.nodes.iter().position(|n| n.op == Op::Param(p)).unwrap();
    let load = ValueId(load as u32);
    let widened = k
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::Cast(a, DType::F32) if a == load))
        .map_or(load, |i| ValueId(i as u32));
    (load, widened)
}

/// Structural invariants every schedule keeps.
fn check_invariants(k: &Kernel, s: &Schedule) {
    assert_eq!(s.stage_of.len(), k.nodes.len());
    for (i, n) in k.nodes.iter().enumerate() {
        for o in n.op.operands() {
            assert!(
                s.stage_of[o.index()] <= s.stage_of[i],
                "{}: %{i} reads %{} from a later stage",
                k.spec_name(),
                o.0
            );
            // a reduction's result exists only after its stage's loop
            if matches!(k.node(o).op, Op::Reduce(..)) {
                assert!(
                    s.stage_of[o.index()] < s.stage_of[i],
                    "{}: %{i} reads %{} in its own stage",
                    k.spec_name(),
                    o.0
                );
            }
        }
    }
    for st in &s.stages {
        for list in [&st.uniform, &st.elem, &st.reductions] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "stage lists are in SSA order");
        }
    }
    for &c in &s.cached {
        assert_eq!(k.ty(c).shape, Shape::Elem);
    }
}

#[test]
fn rms_norm_has_two_stages_caches_the_input_and_loads_the_weight_late() {
    for d in DType::STORAGE {
        let k = lowered(kernels::rms_norm(d));
        let s = schedule(&k);
        check_invariants(&k, &s);
        assert_eq!(s.stages.len(), 2, "{}", k.spec_name());
        let (_, x) = loaded(&k, "x");
        assert_eq!(s.cached, vec![x], "{}: the (widened) input is cached", k.spec_name());
        let (w_load, w) = loaded(&k, "w");
        assert_eq!(s.stage_of[w_load.index()], 1, "{}: weight load in stage 1", k.spec_name());
        assert_eq!(s.stage_of[w.index()], 1);
        assert!(s.stages[1].elem.contains(&w_load));
        assert!(!s.stages[0].elem.contains(&w_load));
        assert_eq!(s.stages[0].reductions.len(), 1);
        assert_eq!(s.stages[1].row_outputs, vec![0]);
    }
}

#[test]
fn add_rms_norm_stores_h_in_stage_0_and_y_in_stage_1() {
    let k = lowered(kernels::add_rms_norm(DType::BF16));
    let s = schedule(&k);
    check_invariants(&k, &s);
    assert_eq!(s.stages.len(), 2);
    assert_eq!(s.stages[0].row_outputs, vec![0]);
    assert_eq!(s.stages[1].row_outputs, vec![1]);
    // only h (f32) crosses the reduction
    assert_eq!(s.cached.len(), 1);
    assert_eq!(k.node(s.cached[0]).name.as_deref(), Some("h"));
}

#[test]
fn softmax_has_three_stages() {
    for d in DType::STORAGE {
        let k = lowered(kernels::softmax(d));
        let s = schedule(&k);
        check_invariants(&k, &s);
        assert_eq!(s.stages.len(), 3, "{}", k.spec_name());
        // x is read by max (stage 0) and by x - max (stage 1); exp by the division (stage 2)
        assert_eq!(s.cached.len(), 2);
        assert_eq!(s.stages[2].row_outputs, vec![0]);
    }
}

#[test]
fn layer_norm_has_three_stages() {
    let k = lowered(kernels::layer_norm(DType::F16));
    let s = schedule(&k);
    check_invariants(&k, &s);
    assert_eq!(s.stages.len(), 3);
}

#[test]
fn silu_mul_is_one_stage_with_nothing_cached() {
    for d in DType::STORAGE {
        let k = lowered(kernels::silu_mul(d));
        let s = schedule(&k);
        check_invariants(&k, &s);
        assert_eq!(s.stages.len(), 1);
        assert!(s.cached.is_empty());
        assert!(s.stages[0].reductions.is_empty());
    }
}

#[test]
fn per_row_output_is_stored_after_its_stage_prologue() {
    let k = lowered(kernels::logsumexp(DType::F32));
    let s = schedule(&k);
    check_invariants(&k, &s);
    assert_eq!(s.stages.len(), 3);
    assert_eq!(s.stages[2].per_row_outputs, vec![0]);
    assert!(s.stages[2].uniform.contains(&k.outputs[0].value));
}

#[test]
fn rope_is_one_stage() {
    let k = lowered(kernels::rope(DType::BF16, RopeStyle::HalfSplit, true));
    let s = schedule(&k);
    check_invariants(&k, &s);
    assert_eq!(s.stages.len(), 1);
    assert!(s.cached.is_empty());
    // the position is a per-row value, read in the prologue
    let pos = k.params.iter().position(|p| matches!(p.kind, ParamKind::PerRow(_))).unwrap() as u32;
    let pos_node = k.nodes.iter().position(|n| n.op == Op::Param(pos)).unwrap();
    assert!(s.stages[0].uniform.contains(&ValueId(pos_node as u32)));
}
