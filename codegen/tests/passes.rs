//! What each pass does, on small kernels built for it; and that the pipeline is idempotent
//! and never panics on broken input.

mod common;

use common::kernels;
use kiln_codegen::builder::Builder;
use kiln_codegen::ir::{
    BinaryOp, Const, DType, Kernel, Node, Op, OutputKind, ParamKind, ReduceOp, Shape, Ty, UnaryOp, ValueId,
};
use kiln_codegen::passes::{const_fold, cse, dce, lower, lower_softmax, PASSES};
use kiln_codegen::verify::verify_lowered;

fn ops(k: &Kernel) -> Vec<Op> {
    k.nodes.iter().map(|n| n.op.clone()).collect()
}

#[test]
fn lower_softmax_expands_into_max_exp_sum_div() {
    for d in DType::STORAGE {
        let k = lower_softmax(kernels::softmax(d));
        verify_lowered(&k).unwrap();
        let n = k.nodes.len();
        let x = k.nodes.iter().position(|n| matches!(n.op, Op::Reduce(ReduceOp::Max, _))).unwrap();
        let Op::Reduce(_, src) = k.nodes[x].op else { unreachable!() };
        let tail: Vec<Op> = ops(&k)[x..x + 5].to_vec();
        let v = |i: usize| ValueId((x + i) as u32);
        assert_eq!(
            tail,
            vec![
                Op::Reduce(ReduceOp::Max, src),
                Op::Binary(BinaryOp::Sub, src, v(0)),
                Op::Unary(UnaryOp::Exp, v(1)),
                Op::Reduce(ReduceOp::Sum, v(2)),
                Op::Binary(BinaryOp::Div, v(2), v(3)),
            ]
        );
        assert_eq!(k.nodes[x + 4].name.as_deref(), Some("probs"));
        assert!(!ops(&k).iter().any(|o| matches!(o, Op::Softmax(_))));
        // the output now reads the division (through the cast back for halves)
        assert!(k.outputs[0].value.index() >= x + 4 && k.outputs[0].value.index() < n);
    }
}

/// A kernel with foldable constant arithmetic next to things that must not fold.
fn folding_kernel() -> (Kernel, Vec<ValueId>) {
    let mut b = Builder::new("fold", "test", DType::F32);
    let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
    let c = b.param("c", ParamKind::Comptime(DType::F32)).unwrap();
    let two = b.f32(2.0);
    let pi = b.f32(std::f32::consts::PI);
    let r = b.binary(BinaryOp::Div, two, pi).unwrap(); // folds
    let k = b.unary(UnaryOp::Sqrt, r).unwrap(); // folds (chain)
    let seven = b.constant(Const::I32(7));
    let sevenf = b.cast(seven, DType::F32).unwrap(); // cast folds
    let sevenh = b.cast(sevenf, DType::F16).unwrap(); // cast to half: not foldable
    let back = b.cast(sevenh, DType::F32).unwrap();
    let cc = b.binary(BinaryOp::Mul, c, two).unwrap(); // comptime param: not folded
    let zero = b.constant(Const::I32(0));
    let div0 = b.binary(BinaryOp::Div, seven, zero).unwrap(); // i32 / 0: not folded
    let div0f = b.cast(div0, DType::F32).unwrap();
    let z = b.f32(0.0);
    let ninf = b.unary(UnaryOp::Log, z).unwrap(); // -inf: not folded
    let cmp = b.cmp(kiln_codegen::ir::CmpOp::Lt, two, pi).unwrap(); // folds to true
    let sel = b.select(cmp, k, two).unwrap(); // folds
    let mut acc = b.binary(BinaryOp::Mul, x, sel).unwrap();
    for v in [sevenf, back, cc, div0f, ninf] {
        acc = b.binary(BinaryOp::Add, acc, v).unwrap();
    }
    b.output("y", OutputKind::Row(DType::F32), acc).unwrap();
    (b.finish().unwrap(), vec![r, k, sevenf, sevenh, cc, div0, ninf, cmp, sel])
}

#[test]
fn const_fold_folds_constant_ops_and_nothing_else() {
    let (k, ids) = folding_kernel();
    let [r, sq, sevenf, sevenh, cc, div0, ninf, cmp, sel] = ids[..] else { unreachable!() };
    let f = const_fold(k.clone());
    assert_eq!(f.nodes.len(), k.nodes.len(), "folding rewrites in place");
    let want_k = (2.0f32 / std::f32::consts::PI).sqrt();
    assert_eq!(f.nodes[r.index()].op, Op::Const(Const::F32(2.0 / std::f32::consts::PI)));
    assert_eq!(f.nodes[sq.index()].op, Op::Const(Const::F32(want_k)));
    assert_eq!(f.nodes[sevenf.index()].op, Op::Const(Const::F32(7.0)));
    assert_eq!(f.nodes[cmp.index()].op, Op::Const(Const::Bool(true)));
    assert_eq!(f.nodes[sel.index()].op, Op::Const(Const::F32(want_k)));
    for kept in [sevenh, cc, div0, ninf] {
        assert_eq!(f.nodes[kept.index()].op, k.nodes[kept.index()].op, "{kept} must not fold");
    }
    assert_eq!(f.nodes[0].op, Op::Param(0));
    assert_eq!(f.nodes[1].op, Op::Param(1));
}

#[test]
fn cse_merges_duplicates_and_keeps_the_first_name() {
    let mut b = Builder::new("cse", "test", DType::F32);
    let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
    let w = b.param("w", ParamKind::Bcast(DType::F32)).unwrap();
    let a1 = b.binary(BinaryOp::Add, x, w).unwrap();
    b.name(a1, "first");
    let a2 = b.binary(BinaryOp::Add, w, x).unwrap(); // commutative duplicate
    b.name(a2, "second");
    let m1 = b.binary(BinaryOp::Min, x, w).unwrap();
    let m2 = b.binary(BinaryOp::Min, w, x).unwrap(); // min is left alone
    let p0 = b.f32(0.0);
    let n0 = b.f32(-0.0); // distinct constant
    let p0b = b.f32(0.0); // duplicate constant
    let e1 = b.unary(UnaryOp::Exp, a1).unwrap();
    let e2 = b.unary(UnaryOp::Exp, a2).unwrap(); // duplicate once a2 merges
    b.name(e2, "e");
    let mut acc = b.binary(BinaryOp::Mul, e1, e2).unwrap();
    for v in [m1, m2, p0, n0, p0b] {
        acc = b.binary(BinaryOp::Add, acc, v).unwrap();
    }
    b.output("y", OutputKind::Row(DType::F32), acc).unwrap();
    let k = b.finish().unwrap();
    let c = cse(k.clone());
    verify_lowered(&c).unwrap();
    // removed: a2, p0b, e2
    assert_eq!(c.nodes.len(), k.nodes.len() - 3);
    let names: Vec<Option<&str>> = c.nodes.iter().map(|n| n.name.as_deref()).collect();
    assert!(names.contains(&Some("first")) && !names.contains(&Some("second")));
    // the surviving exp took the duplicate's name, having none
    let exp = c.nodes.iter().find(|n| matches!(n.op, Op::Unary(UnaryOp::Exp, _))).unwrap();
    assert_eq!(exp.name.as_deref(), Some("e"));
    assert_eq!(c.nodes.iter().filter(|n| matches!(n.op, Op::Binary(BinaryOp::Min, ..))).count(), 2);
    let consts: Vec<u32> = c
        .nodes
        .iter()
        .filter_map(|n| if let Op::Const(Const::F32(v)) = n.op { Some(v.to_bits()) } else { None })
        .collect();
    assert_eq!(consts, vec![0.0f32.to_bits(), (-0.0f32).to_bits()]);
    // e1 * e2 became e * e
    let mul = c.nodes.iter().find(|n| matches!(n.op, Op::Binary(BinaryOp::Mul, ..))).unwrap();
    let Op::Binary(_, p, q) = mul.op else { unreachable!() };
    assert_eq!(p, q);
}

#[test]
fn dce_drops_dead_nodes_renumbers_and_keeps_names_and_params() {
    let mut b = Builder::new("dce", "test", DType::F32);
    let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
    let unused = b.param("unused", ParamKind::Bcast(DType::F32)).unwrap();
    let dead = b.unary(UnaryOp::Exp, unused).unwrap();
    b.name(dead, "dead");
    let y = b.unary(UnaryOp::Tanh, x).unwrap();
    b.name(y, "y");
    let s = b.reduce(ReduceOp::Sum, y).unwrap();
    b.name(s, "total");
    b.output("out", OutputKind::Row(DType::F32), y).unwrap();
    b.output("sum", OutputKind::PerRow(DType::F32), s).unwrap();
    let k = b.finish().unwrap();
    let d = dce(k.clone());
    verify_lowered(&d).unwrap();
    assert_eq!(d.params, k.params, "params are the ABI");
    assert_eq!(d.nodes.len(), 3);
    assert_eq!(
        ops(&d),
        vec![Op::Param(0), Op::Unary(UnaryOp::Tanh, ValueId(0)), Op::Reduce(ReduceOp::Sum, ValueId(1))]
    );
    let names: Vec<_> = d.nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(names, vec![Some("x".into()), Some("y".into()), Some("total".into())]);
    assert_eq!(d.outputs[0].value, ValueId(1));
    assert_eq!(d.outputs[1].value, ValueId(2));
}

#[test]
fn lowering_is_idempotent_and_deterministic() {
    for d in DType::STORAGE {
        for k in [kernels::softmax(d), kernels::gelu_tanh_mul(d), kernels::add_rms_norm(d), kernels::int_ops(d)] {
            let once = lower(k.clone()).unwrap();
            assert_eq!(lower(k.clone()).unwrap(), once);
            assert_eq!(lower(once.clone()).unwrap(), once, "{}", k.spec_name());
        }
    }
}

#[test]
fn passes_do_not_panic_on_broken_kernels() {
    let mut k = kernels::softmax(DType::F32);
    k.nodes
        .insert(0, Node { op: Op::Unary(UnaryOp::Exp, ValueId(40)), ty: Ty::new(DType::F32, Shape::Elem), name: None });
    k.nodes.push(Node { op: Op::Param(9), ty: Ty::new(DType::F32, Shape::Elem), name: None });
    k.outputs[0].value = ValueId(1000);
    for (_, pass) in PASSES {
        let _ = pass(k.clone());
    }
    assert!(lower(k).is_err());
}
