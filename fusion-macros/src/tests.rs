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
        if matches!(
            n.op,
            kiln_codegen::ir::Op::Binary(..) | kiln_codegen::ir::Op::Unary(..) | kiln_codegen::ir::Op::Reduce(..)
        ) {
            assert_eq!(n.ty.dtype, DType::F32, "{text}");
        }
    }
}

#[test]
fn literals_take_the_type_they_meet() {
    let k = build(
        "fn f(x: Row, #[comptime] n: i32) -> Row { let a = x * 2; let b = n + 1; a * (b as f32) + 0.5 }",
        DType::F32,
    )
    .unwrap();
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
fn rope_rotates_a_parameter_or_column_local_arithmetic() {
    let k = build(
        "fn r(x: Row, pos: PerRow<i32>, #[comptime] theta: f32) -> Row { rope_half(x, pos, theta, 64) }",
        DType::BF16,
    )
    .unwrap();
    assert!(k.to_string().contains("rope.half_split %"), "{k}");
    // A bias add before the rotation is part of the rope's source.
    let k =
        build("fn r(x: Row, b: Bcast, pos: PerRow<i32>) -> Row { rope_half(x + b, pos, 10000.0, 64) }", DType::BF16)
            .unwrap();
    assert!(k.to_string().contains("rope.half_split %"), "{k}");
    let e = error("fn r(x: Row, pos: PerRow<i32>) -> Row { rope_half(softmax(x), pos, 10000.0, 64) }");
    assert!(e.contains("a softmax, which needs the whole row"), "{e}");
    let e = error("fn r(x: Row, pos: PerRow<i32>, t: Row) -> Row { rope_half(x, pos, mean(t), 64) }");
    assert!(e.contains("#[comptime] parameter or a literal"), "{e}");
}

#[test]
fn rope_table_takes_a_bcast_f32_table() {
    let src =
        "fn r(x: Row, pos: PerRow<i32>, t: Bcast<f32>, #[comptime] hd: i32) -> Row { rope_half_table(x, pos, t, hd) }";
    let k = build(src, DType::BF16).unwrap();
    assert!(k.to_string().contains("rope.half_split %"), "{k}");
    assert!(k.to_string().contains("inv_freq=t"), "{k}");
    let e = error("fn r(x: Row, pos: PerRow<i32>, t: Bcast) -> Row { rope_half_table(x, pos, t * 2.0, 64) }");
    assert!(e.contains("must be a `Bcast<f32>` parameter itself"), "{e}");
    let e = error("fn r(x: Row, pos: PerRow<i32>, t: Bcast<bf16>) -> Row { rope_half_table(x, pos, t, 64) }");
    assert!(e.contains("must be a Bcast<f32>"), "{e}");
    let e =
        error("fn r(x: Row, pos: PerRow<i32>, t: Bcast<f32>, h: PerRow<i32>) -> Row { rope_half_table(x, pos, t, h) }");
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
        ("fn f(x: Row, s: PerRow<f32>, p: PerRow<i32>) -> Row { x * rope_half(s, p, 1.0, 64) }", "not one per column"),
    ] {
        let e = error(src);
        assert!(e.contains(want), "{src}\n  gave: {e}\n  want: {want}");
    }
}

#[test]
fn logic_comparisons_and_elementwise_calls_build() {
    let k = build(
        "fn f(x: Row, y: Row<f32>, #[comptime] on: bool, #[comptime] lim: f32) -> (Row, PerRow<f32>) {
            let keep = (x > 0.0 && !(y <= -1.0)) || !on;
            let z = select(keep, min(abs(x), lim), pow(max(x, y), 2.0));
            let s = -sum(exp(z) * 0.5) / max(z);
            (z, s)
        }",
        DType::F16,
    )
    .unwrap();
    let text = k.to_string();
    for op in [
        "cmp.gt",
        "cmp.le",
        "and",
        "or",
        "not",
        "select",
        "min",
        "abs",
        "pow",
        "max",
        "reduce.sum",
        "reduce.max",
        "neg",
        "exp",
    ] {
        assert!(text.contains(op), "missing {op}:\n{text}");
    }
    assert!(text.contains("output s: per_row<f32>"), "{text}");
}

#[test]
fn half_arithmetic_is_rejected_at_the_expression() {
    let e = error("fn f(x: Row) -> Row { let r = x as bf16; r * 2.0 }");
    assert!(e.contains("halves are storage only"), "{e}");
    // rounding through a half and back is fine
    build("fn f(x: Row) -> Row { let r = (x as bf16) as f32; r * 2.0 }", DType::F32).unwrap();
}

#[test]
fn more_errors_name_the_problem() {
    for (src, want) in [
        ("fn f(x: Row) -> Row { let mut y = x; y }", "drop `mut`"),
        ("fn f(x: Row) -> Row { let y: Row = x; y }", "no type annotations"),
        ("fn f(x: Row) -> Row { return x; }", "no `return`"),
        ("fn f(x: Row) -> Row { let g = |v| v; x }", "closures"),
        ("fn f(x: Row) -> Row { &x }", "references"),
        ("fn f(x: Row) -> Row { x[0] }", "indexing"),
        ("fn f(x: Row) -> Row { x as u8 }", "`as` converts to"),
        ("fn f(p: PerRow<i32>) -> PerRow<i32> { p + 3000000000 }", "does not fit in i32"),
        ("fn f(x: Row) -> (Row, Row) { (x, x, x) }", "has 2 outputs but this tuple has 3"),
        ("fn f(x: Row) -> (Row, Row) { x }", "end the body with a tuple"),
        ("fn f(x: Row) -> Row { (x, x) }", "returns one output"),
        ("fn f(dev: Row) -> Row { dev }", "`dev` is the device argument"),
        ("fn f<T>(x: Row) -> Row { x }", "no generics"),
        ("#[inline] fn f(x: Row) -> Row { x }", "only doc comments"),
        ("fn f(x: Row, eps: f32) -> Row { x }", "must be marked `#[comptime]`"),
        ("fn f(x: Row, #[comptime] eps: f64) -> Row { x }", "`f32`, `i32` or `bool`"),
        ("fn f(x: Row<f64>) -> Row { x }", "`f32`, `f16`, `bf16`, `e4m3` or `i8`"),
        ("fn f(p: PerRow) -> Row { p }", "say what a `PerRow` holds"),
        ("fn f(x: Row) -> Row { x % 2.0 }", "`%` is not in"),
        ("fn f(x: Row) -> Row { max(x, x, x) }", "`max` takes 1 argument (row maximum) or 2"),
        ("fn f(x: Row) -> Row { sum(mean(x)) }", "one value per row"),
        ("fn f(x: Row, p: PerRow<i32>) -> Row { rope_half(x, p, 1.0, 64.0) }", "head_dim"),
        ("fn f(x: Row, p: PerRow<i32>) -> Row { std::f32::exp(x) }", "plain name"),
        ("fn f(x: Row) -> Row { exp }", "is a prelude function: call it"),
        ("fn f(x: Row) -> Row { x; x }", "has no effect"),
    ] {
        let e = error(src);
        assert!(e.contains(want), "{src}\n  gave: {e}\n  want: {want}");
    }
}

#[test]
fn expansion_is_a_module_with_the_fns_visibility_and_docs() {
    let item: proc_macro2::TokenStream =
        "/// Doubles.\npub(crate) fn twice(x: Row) -> Row { let y = x * 2.0; y }".parse().unwrap();
    let out = crate::expand(proc_macro2::TokenStream::new(), item, "here.rs:3").unwrap().to_string();
    assert!(out.contains("pub (crate) mod twice"), "{out}");
    assert!(out.contains("\" Doubles.\""), "{out}");
    for item in [
        "NAME",
        "SOURCE",
        "IR_F32",
        "IR_F16",
        "IR_BF16",
        "CUDA_F32",
        "CUDA_F16",
        "CUDA_BF16",
        "static DEF",
        "fn cpu",
        "fn run",
    ] {
        assert!(out.contains(item), "no {item} in the expansion");
    }
    assert!(out.contains("\"here.rs:3\""), "{out}");
    let e = crate::expand("oops".parse().unwrap(), "fn f(x: Row) -> Row { x }".parse().unwrap(), "").unwrap_err();
    assert!(e.to_string().contains("takes no arguments"), "{e}");
}
