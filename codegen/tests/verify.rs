//! The verifier accepts every test kernel (before and after lowering) and rejects hand-broken
//! ones with the right error, naming the node and showing its text.

mod common;

use common::kernels;
use kiln_codegen::builder::{BuildError, Builder};
use kiln_codegen::ir::{
    BinaryOp, DType, Kernel, Node, Op, Output, OutputKind, Param, ParamKind, RopeStyle, Shape, Ty, UnaryOp, ValueId,
};
use kiln_codegen::passes::lower;
use kiln_codegen::typeck::TypeError;
use kiln_codegen::verify::{verify, verify_lowered, VerifyError};
use kiln_codegen::CompileError;

fn all_kernels(d: DType) -> Vec<Kernel> {
    let mut v = vec![
        kernels::rms_norm(d),
        kernels::add_rms_norm(d),
        kernels::layer_norm(d),
        kernels::softmax(d),
        kernels::silu_mul(d),
        kernels::gelu_tanh_mul(d),
        kernels::rope(d, RopeStyle::HalfSplit, false),
        kernels::rope(d, RopeStyle::Interleaved, false),
        kernels::rope(d, RopeStyle::HalfSplit, true),
        kernels::logsumexp(d),
        kernels::select_cmp(d),
        kernels::pow(d),
        kernels::int_ops(d),
    ];
    v.extend(kernels::FLOAT_UNARY.map(|op| kernels::unary(d, op)));
    v
}

#[test]
fn every_test_kernel_verifies_before_and_after_lowering() {
    for d in DType::STORAGE {
        for k in all_kernels(d) {
            verify(&k).unwrap_or_else(|e| panic!("{}: {e}", k.spec_name()));
            let l = lower(k.clone()).unwrap_or_else(|e| panic!("{}: {e}", k.spec_name()));
            verify_lowered(&l).unwrap();
        }
    }
}

/// `y = neg(x)` over an f32 row, for hand-breaking.
fn small() -> Kernel {
    let mut b = Builder::new("small", "test", DType::F32);
    let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
    let y = b.unary(UnaryOp::Neg, x).unwrap();
    b.output("y", OutputKind::Row(DType::F32), y).unwrap();
    b.finish().unwrap()
}

#[test]
fn forward_reference_is_rejected() {
    let mut k = small();
    k.nodes[1].op = Op::Unary(UnaryOp::Neg, ValueId(1)); // itself
    let e = verify(&k).unwrap_err();
    assert!(matches!(e, VerifyError::ForwardRef { node: ValueId(1), operand: ValueId(1), .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("%1") && msg.contains("neg %1"), "{msg}");

    let mut k = small();
    k.nodes.push(Node { op: Op::Unary(UnaryOp::Exp, ValueId(7)), ty: Ty::new(DType::F32, Shape::Elem), name: None });
    assert!(matches!(verify(&k), Err(VerifyError::ForwardRef { node: ValueId(2), operand: ValueId(7), .. })));
}

#[test]
fn wrong_stored_type_is_rejected() {
    let mut k = small();
    k.nodes[1].ty = Ty::new(DType::F32, Shape::Uniform);
    let e = verify(&k).unwrap_err();
    match &e {
        VerifyError::StoredType { node, stored, inferred, .. } => {
            assert_eq!(*node, ValueId(1));
            assert_eq!(stored.shape, Shape::Uniform);
            assert_eq!(inferred.shape, Shape::Elem);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().starts_with("%1 = neg %0"), "{e}");
}

#[test]
fn ill_typed_op_is_rejected_with_the_type_error() {
    let mut k = small();
    k.nodes[1].op = Op::Unary(UnaryOp::Not, ValueId(0));
    assert!(matches!(verify(&k), Err(VerifyError::Type { node: ValueId(1), source: TypeError::Wrong { .. }, .. })));
}

#[test]
fn bad_outputs_are_rejected() {
    // Row output of a Uniform value
    let mut b = Builder::new("bad", "test", DType::F32);
    let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
    let s = b.reduce(kiln_codegen::ir::ReduceOp::Sum, x).unwrap();
    b.output("y", OutputKind::Row(DType::F32), x).unwrap();
    let mut k = b.finish().unwrap();
    k.outputs[0].value = s;
    assert!(matches!(verify(&k), Err(VerifyError::OutputShape { kind: "Row", .. })));
    // PerRow output of an Elem value
    k.outputs[0] = Output { name: "y".into(), kind: OutputKind::PerRow(DType::F32), value: x, index: None };
    assert!(matches!(verify(&k), Err(VerifyError::OutputShape { kind: "PerRow", .. })));
    // dtype differs from the output kind's
    k.outputs[0] = Output { name: "y".into(), kind: OutputKind::Row(DType::BF16), value: x, index: None };
    assert!(matches!(verify(&k), Err(VerifyError::OutputDtype { want: DType::BF16, got: DType::F32, .. })));
    // a value that does not exist
    k.outputs[0] = Output { name: "y".into(), kind: OutputKind::Row(DType::F32), value: ValueId(99), index: None };
    assert!(matches!(verify(&k), Err(VerifyError::OutputMissing { .. })));
    // bool storage
    let c = k.nodes.len() as u32;
    k.nodes.push(Node {
        op: Op::Cmp(kiln_codegen::ir::CmpOp::Gt, x, x),
        ty: Ty::new(DType::Bool, Shape::Elem),
        name: None,
    });
    k.outputs[0] = Output { name: "y".into(), kind: OutputKind::Row(DType::Bool), value: ValueId(c), index: None };
    assert!(matches!(verify(&k), Err(VerifyError::BoolStorage { .. })));
    // none at all
    k.outputs.clear();
    assert_eq!(verify(&k), Err(VerifyError::NoOutputs));
}

#[test]
fn duplicate_names_are_rejected() {
    let mut k = small();
    k.params.push(Param { name: "x".into(), kind: ParamKind::Bcast(DType::F32), index: None });
    assert_eq!(verify(&k), Err(VerifyError::DuplicateName("x".into())));
    let mut k = small();
    k.outputs[0].name = "x".into();
    assert_eq!(verify(&k), Err(VerifyError::DuplicateName("x".into())));
}

#[test]
fn missing_param_is_rejected_without_panicking() {
    let mut k = small();
    k.nodes[0].op = Op::Param(5);
    let e = verify(&k).unwrap_err();
    assert!(matches!(e, VerifyError::NoSuchParam { node: ValueId(0), param: 5, count: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("Param(5)"), "{e}");
}

#[test]
fn rope_source_must_be_a_column_local_f32_value() {
    let build = |pick: &dyn Fn(&mut Builder, [ValueId; 3]) -> ValueId| {
        let mut b = Builder::new("rope_src", "test", DType::F32);
        let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
        let w = b.param("w", ParamKind::Bcast(DType::F32)).unwrap();
        let h = b.param("h", ParamKind::Row(DType::BF16)).unwrap();
        let pos = b.param("pos", ParamKind::PerRow(DType::I32)).unwrap();
        let theta = b.f32(10000.0);
        let hd = b.constant(kiln_codegen::ir::Const::I32(2));
        let src = pick(&mut b, [x, w, h]);
        b.rope(src, pos, theta, hd, RopeStyle::HalfSplit, None).map(|_| ())
    };
    // Loads and elementwise arithmetic on them, uniform values included: accepted.
    build(&|_, [x, ..]| x).unwrap();
    build(&|_, [_, w, _]| w).unwrap();
    build(&|b, [x, w, _]| {
        let s = b.binary(BinaryOp::Mul, x, x).unwrap();
        let ms = b.reduce(kiln_codegen::ir::ReduceOp::Mean, s).unwrap();
        let inv = b.unary(UnaryOp::Rsqrt, ms).unwrap();
        let xn = b.binary(BinaryOp::Mul, x, inv).unwrap();
        b.binary(BinaryOp::Mul, xn, w).unwrap()
    })
    .unwrap();
    // A half that is not widened, a uniform, a rope of a rope, a softmax: rejected, named.
    let rejected = |pick: &dyn Fn(&mut Builder, [ValueId; 3]) -> ValueId, why: &str| {
        let e = build(pick).unwrap_err();
        assert!(matches!(e, BuildError::Type(TypeError::RopeOperand(_))), "{e:?}");
        assert!(e.to_string().contains(why), "{e}");
    };
    rejected(&|_, [_, _, h]| h, "widen it to f32");
    rejected(&|b, [x, ..]| b.reduce(kiln_codegen::ir::ReduceOp::Max, x).unwrap(), "not one per column");
    rejected(
        &|b, [x, ..]| {
            let (p, t, hd) = (b.f32(0.0), b.f32(10.0), b.constant(kiln_codegen::ir::Const::I32(2)));
            let p = b.cast(p, DType::I32).unwrap();
            let r = b.rope(x, p, t, hd, RopeStyle::HalfSplit, None).unwrap();
            b.binary(BinaryOp::Add, r, x).unwrap()
        },
        "a rope",
    );
    rejected(&|b, [x, ..]| b.softmax(x).unwrap(), "a softmax");
}

#[test]
fn rope_table_must_be_a_bcast_f32_param() {
    for (kind, ok) in [
        (ParamKind::Bcast(DType::F32), true),
        (ParamKind::Bcast(DType::BF16), false),
        (ParamKind::Row(DType::F32), false),
        (ParamKind::PerRow(DType::F32), false),
    ] {
        let mut b = Builder::new("rope_table", "test", DType::F32);
        let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
        b.param("t", kind).unwrap();
        let pos = b.param("pos", ParamKind::PerRow(DType::I32)).unwrap();
        let hd = b.constant(kiln_codegen::ir::Const::I32(2));
        let y = b.rope_table(x, pos, 1, hd, RopeStyle::HalfSplit);
        match (y, ok) {
            (Ok(y), true) => {
                b.output("y", OutputKind::Row(DType::F32), y).unwrap();
                verify(&b.finish().unwrap()).unwrap();
            }
            (Err(e), false) => assert!(e.to_string().contains("must be a Bcast<f32>"), "{kind:?}: {e}"),
            (r, _) => panic!("{kind:?}: {r:?}"),
        }
    }
    // A table index past the parameters is caught by the verifier, not a panic.
    let mut b = Builder::new("rope_table", "test", DType::F32);
    let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
    b.param("t", ParamKind::Bcast(DType::F32)).unwrap();
    let pos = b.param("pos", ParamKind::PerRow(DType::I32)).unwrap();
    let hd = b.constant(kiln_codegen::ir::Const::I32(2));
    let y = b.rope_table(x, pos, 1, hd, RopeStyle::HalfSplit).unwrap();
    b.output("y", OutputKind::Row(DType::F32), y).unwrap();
    let mut k = b.finish().unwrap();
    let Op::RopeTable { table, .. } = &mut k.nodes[y.index()].op else { unreachable!() };
    *table = 9;
    let e = verify(&k).unwrap_err();
    assert!(matches!(e, VerifyError::NoSuchParam { param: 9, .. }), "{e:?}");
}

#[test]
fn half_arithmetic_is_rejected_after_lowering() {
    // bf16 arithmetic without widening: a valid frontend kernel, but not a lowered one.
    let mut b = Builder::new("unwidened", "test", DType::BF16);
    let x = b.param("x", ParamKind::Row(DType::BF16)).unwrap();
    let y = b.binary(BinaryOp::Add, x, x).unwrap();
    b.output("y", OutputKind::Row(DType::BF16), y).unwrap();
    let k = b.finish().unwrap();
    verify(&k).unwrap();
    let e = verify_lowered(&k).unwrap_err();
    assert!(matches!(e, VerifyError::HalfArithmetic { node: ValueId(1), dtype: DType::BF16, .. }), "{e:?}");
    assert!(e.to_string().contains("%1 = add %0, %0"), "{e}");
    // `lower` reports it as the first pass's failure
    match lower(k) {
        Err(CompileError::Pass { pass, kernel, msg }) => {
            assert_eq!(pass, "lower_softmax");
            assert_eq!(kernel, "unwidened_bf16");
            assert!(msg.contains("bf16"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn half_compare_and_reduce_are_rejected_after_lowering() {
    let mut b = Builder::new("half_cmp", "test", DType::F16);
    let x = b.param("x", ParamKind::Row(DType::F16)).unwrap();
    let s = b.reduce(kiln_codegen::ir::ReduceOp::Max, x).unwrap();
    let c = b.cmp(kiln_codegen::ir::CmpOp::Gt, x, s).unwrap();
    let cf = b.cast(c, DType::F16).unwrap();
    b.output("y", OutputKind::Row(DType::F16), cf).unwrap();
    let k = b.finish().unwrap();
    verify(&k).unwrap();
    assert!(matches!(verify_lowered(&k), Err(VerifyError::HalfArithmetic { node: ValueId(1), .. })));
}

#[test]
fn softmax_is_rejected_after_lowering() {
    let k = kernels::softmax(DType::F32);
    verify(&k).unwrap();
    let e = verify_lowered(&k).unwrap_err();
    assert!(matches!(e, VerifyError::Softmax { .. }), "{e:?}");
    assert_eq!(e.node(), Some(ValueId(1)));
}

#[test]
fn an_invalid_input_kernel_fails_lower_at_the_input_check() {
    let mut k = small();
    k.nodes[1].ty = Ty::new(DType::I32, Shape::Elem);
    match lower(k) {
        Err(CompileError::Pass { pass: "input", msg, .. }) => assert!(msg.contains("stored type"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn row_indices_must_name_a_per_row_i32_param() {
    use kiln_codegen::builder::Builder;
    let build = |index_kind: ParamKind, on_output: bool| {
        let mut b = Builder::new("t", "test", DType::F32);
        b.param("x", ParamKind::Row(DType::F32)).unwrap();
        b.param("idx", index_kind).unwrap();
        let x = kiln_codegen::ir::ValueId(0);
        if on_output {
            b.output_at("y", OutputKind::Row(DType::F32), x, 1).unwrap();
        } else {
            b.gather(0, 1).unwrap();
            b.output("y", OutputKind::Row(DType::F32), x).unwrap();
        }
        b.finish().unwrap()
    };
    for on_output in [false, true] {
        assert_eq!(verify(&build(ParamKind::PerRow(DType::I32), on_output)), Ok(()));
        assert!(matches!(verify(&build(ParamKind::PerRow(DType::F32), on_output)), Err(VerifyError::RowIndex { .. })));
        assert!(matches!(verify(&build(ParamKind::Row(DType::I32), on_output)), Err(VerifyError::RowIndex { .. })));
    }
    // Only Row tensors are indexed; an index that points nowhere is an error, not a panic.
    let mut k = build(ParamKind::PerRow(DType::I32), false);
    k.params[0].index = Some(9);
    assert!(matches!(verify(&k), Err(VerifyError::RowIndex { .. })));
    let mut k = build(ParamKind::PerRow(DType::I32), false);
    k.params[1].index = Some(1);
    assert!(matches!(verify(&k), Err(VerifyError::RowIndex { .. })));
    let text = build(ParamKind::PerRow(DType::I32), true).to_string();
    assert!(text.contains("output y: row<f32> scattered by idx"), "{text}");
}

#[test]
fn infinite_constants_survive_the_embedded_json() {
    use kiln_codegen::ir::Const;
    for c in [Const::F32(f32::NEG_INFINITY), Const::F32(f32::INFINITY), Const::F32(1.5), Const::I32(-3)] {
        let json = serde_json::to_string(&c).unwrap();
        let back: Const = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c, "{json}");
    }
    let nan: Const = serde_json::from_str(&serde_json::to_string(&Const::F32(f32::NAN)).unwrap()).unwrap();
    assert!(matches!(nan, Const::F32(x) if x.is_nan()));
}
