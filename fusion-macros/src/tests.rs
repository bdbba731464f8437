//! Unit tests of the frontend on proc_macro2 tokens: the IR it builds and the errors it gives
//! (message and the tokens they point at). The compile-fail tests check the same through rustc.

use crate::{lower, sig};
use kiln_codegen::ir::DType;

fn build(src: &str, dtype: DType) -> syn::Result<kiln_codegen::ir::Kernel> {
    let f: syn::ItemFn = syn::parse_str(src).expect("test source parses");
    let s = sig::parse(&f)?;
    lower::build(&f, &s, "test.rs:1", dtype)
}

fn error(src: &str) -> String {
    match build(src, DType::BF16) {
        Ok(k) => panic!("expected an error, built:\n{k}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn add_rms_norm_builds_widened_f32_arithmetic() {
    let k = build(
        "fn add_rms_norm(x: Row, residual: Row, w: Bcast, #[comptime] eps: f32) -> (Row, Row) {
            let h = x + residual;
            let inv = rsqrt(mean(h * h) + eps);
            let y = h * inv * w;
            (h, y)
        }",
        DType::BF16,
    )
    .unwrap();
    let text = k.to_string();
    assert!(text.contains("param x: row<bf16>"), "{text}");
    assert!(text.contains("param eps: comptime<f32>"), "{text}");
    assert!(text.contains("reduce.mean"), "{text}");
    assert!(text.contains("output h: row<bf16>"), "{text}");
    assert!(text.contains("output y: row<bf16>"), "{text}");
    // every arithmetic node is f32: halves are only loaded and stored
    for n in &k.nodes {
        if matches!(n.op, kiln_codegen::ir::Op::Binary(..) | kiln_codegen::ir::Op::Unary(..) | kiln_codegen::ir::Op::Reduce(..)) {
            assert_eq!(n.ty.dtype, DType::F32, "{text}");
        }
    }
}

#[test]
fn literals_take_the_type_they_meet() {
    let k = build("fn f(x: Row, #[comptime] n: i32) -> Row { let a = x * 2; let b = n + 1; a * (b as f32) + 0.5 }", DType::F32).unwrap();
    let text = k.to_string();
    assert!(text.contains("const 2.0f32"), "{text}");
    assert!(text.contains("const 1i32"), "{text}");
    assert!(text.contains("const 0.5f32"), "{text}");
}

#[test]
fn unnamed_outputs_are_numbered_and_params_are_not_output_names() {
    let k = build("fn f(x: Row) -> (Row, Row<f32>) { (x, x * 2.0) }", DType::F16).unwrap();
    let names: Vec<_> = k.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["out0", "out1"]);
}

#[test]
fn rope_takes_the_parameter_itself() {
    let k = build(
        "fn r(x: Row, pos: PerRow<i32>, #[comptime] theta: f32) -> Row { rope_half(x, pos, theta, 64) }",
        DType::BF16,
    )
    .unwrap();
    assert!(k.to_string().contains("rope.half_split x"), "{k}");
    let e = error("fn r(x: Row, pos: PerRow<i32>) -> Row { rope_half(x * 2.0, pos, 10000.0, 64) }");
    assert!(e.contains("takes a `Row` parameter itself"), "{e}");
    let e = error("fn r(x: Row, pos: PerRow<i32>, t: Row) -> Row { rope_half(x, pos, mean(t), 64) }");
    assert!(e.contains("#[comptime] parameter or a literal"), "{e}");
}

#[test]
fn errors_name_the_problem() {
    for (src, want) in [
        ("fn f(x: Row) -> Row { foo(x) }", "`foo` is not in the #[fused] prelude"),
        ("fn f(x: Row) -> Row { x.exp() }", "write `exp(...)`"),
        ("fn f(x: Row) -> Row { if true { x } else { x } }", "select(cond"),
        ("fn f(x: Row) -> Row { for _ in 0..2 {} x }", "loops are not supported"),
        ("fn f(x: Row) -> Row { exp(x, x) }", "`exp` takes 1 argument"),
        ("fn f(x: Vec<f32>) -> Row { x }", "unsupported #[fused] parameter type"),
        ("fn f(x: Row) -> Row { mean(x) }", "return it as `PerRow<f32>`"),
        ("fn f(x: Row, p: PerRow<i32>) -> Row { x + p }", "operand types differ"),
        ("fn f(x: Row) { }", "must return its outputs"),
        ("fn f(x: Row) -> Row { let y = x; }", "must end with the value"),
        ("fn f(x: Row) -> (Row, Row) { let y = x * 2.0; (y, y) }", "returned twice"),
        ("fn f(x: Row) -> Row { y }", "unknown name `y`; in scope: x"),
        ("fn f(x: Row, w: Bcast, p: PerRow<i32>) -> Row { rope_half(w, p, 1.0, 64) }", "must be a Row tensor"),
    ] {
        let e = error(src);
        assert!(e.contains(want), "{src}\n  gave: {e}\n  want: {want}");
    }
}
