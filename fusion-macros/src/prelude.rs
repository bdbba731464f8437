//! The functions a `#[fused]` body may call, and how each lowers to IR.
//!
//! - elementwise, one argument: `exp log sqrt rsqrt tanh sigmoid erf sin cos abs`;
//! - elementwise, two arguments: `pow(a, b)`, `min(a, b)`, `max(a, b)`;
//! - row reductions (one value per row): `sum(x)`, `mean(x)`, `max(x)`, `argmax(x)` (the
//!   lowest column of the largest value, an `i32`);
//! - `column()`: the column index, an `i32` per column (`select(column() == j, ..)` masks a
//!   column an `argmax` chose);
//! - `select(cond, if_true, if_false)`, `softmax(x)`;
//! - `neg_inf()`: the f32 `-inf` (an attention score modifier returns it to mask a key);
//! - RoPE: `rope_half(x, pos, theta, head_dim)`, `rope_interleaved(x, pos, theta, head_dim)`,
//!   `rope_half_llama3(x, pos, theta, head_dim, factor, low_freq_factor, high_freq_factor,
//!   original_max_position)`. `x` must be a `Row` parameter (RoPE reads the partner column from
//!   memory); `theta`, `head_dim` and the scaling factors must be `#[comptime]` parameters or
//!   literals (they are the same for the whole launch).
//! - RoPE from a frequency table: `rope_half_table(x, pos, inv_freq, head_dim)`,
//!   `rope_interleaved_table(x, pos, inv_freq, head_dim)`: `inv_freq` must be a `Bcast<f32>`
//!   parameter, read at each pair's first column of head 0 (LongRoPE, partial rotary).
//!
//! Invariant: [`NAMES`] lists exactly the names [`call`] accepts (used in error advice).

use crate::lower::{build_err, Cx, Val};
use kiln_codegen::builder::BuildError;
use kiln_codegen::ir::{BinaryOp, DType, Llama3Scaling, ReduceOp, RopeStyle, UnaryOp, ValueId};
use kiln_codegen::typeck::TypeError;
use syn::{Expr, ExprCall};

#[derive(Clone, Copy)]
enum Prim {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Reduce(ReduceOp),
    /// `max`: a reduction with one argument, elementwise with two.
    Max,
    Select,
    Softmax,
    NegInf,
    Column,
    Rope(RopeStyle, bool),
    RopeTable(RopeStyle),
}

const TABLE: &[(&str, Prim, &str)] = &[
    ("exp", Prim::Unary(UnaryOp::Exp), "exp(x)"),
    ("log", Prim::Unary(UnaryOp::Log), "log(x)"),
    ("sqrt", Prim::Unary(UnaryOp::Sqrt), "sqrt(x)"),
    ("rsqrt", Prim::Unary(UnaryOp::Rsqrt), "rsqrt(x)"),
    ("tanh", Prim::Unary(UnaryOp::Tanh), "tanh(x)"),
    ("sigmoid", Prim::Unary(UnaryOp::Sigmoid), "sigmoid(x)"),
    ("erf", Prim::Unary(UnaryOp::Erf), "erf(x)"),
    ("sin", Prim::Unary(UnaryOp::Sin), "sin(x)"),
    ("cos", Prim::Unary(UnaryOp::Cos), "cos(x)"),
    ("abs", Prim::Unary(UnaryOp::Abs), "abs(x)"),
    ("pow", Prim::Binary(BinaryOp::Pow), "pow(a, b)"),
    ("min", Prim::Binary(BinaryOp::Min), "min(a, b)"),
    ("max", Prim::Max, "max(x) (row maximum) or max(a, b)"),
    ("sum", Prim::Reduce(ReduceOp::Sum), "sum(x)"),
    ("mean", Prim::Reduce(ReduceOp::Mean), "mean(x)"),
    ("argmax", Prim::Reduce(ReduceOp::ArgMax), "argmax(x)"),
    ("column", Prim::Column, "column()"),
    ("select", Prim::Select, "select(cond, if_true, if_false)"),
    ("softmax", Prim::Softmax, "softmax(x)"),
    ("neg_inf", Prim::NegInf, "neg_inf()"),
    ("rope_half", Prim::Rope(RopeStyle::HalfSplit, false), "rope_half(x, pos, theta, head_dim)"),
    ("rope_interleaved", Prim::Rope(RopeStyle::Interleaved, false), "rope_interleaved(x, pos, theta, head_dim)"),
    (
        "rope_half_llama3",
        Prim::Rope(RopeStyle::HalfSplit, true),
        "rope_half_llama3(x, pos, theta, head_dim, factor, low_freq_factor, high_freq_factor, original_max_position)",
    ),
    ("rope_half_table", Prim::RopeTable(RopeStyle::HalfSplit), "rope_half_table(x, pos, inv_freq, head_dim)"),
    (
        "rope_interleaved_table",
        Prim::RopeTable(RopeStyle::Interleaved),
        "rope_interleaved_table(x, pos, inv_freq, head_dim)",
    ),
];

pub const NAMES: &str = "exp, log, sqrt, rsqrt, tanh, sigmoid, erf, sin, cos, abs, pow, min, max, sum, mean, argmax, column, select, softmax, neg_inf, rope_half, rope_interleaved, rope_half_llama3, rope_half_table, rope_interleaved_table";

pub fn is_prelude(name: &str) -> bool {
    TABLE.iter().any(|(n, ..)| *n == name)
}

fn err(tokens: impl quote::ToTokens, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new_spanned(tokens, msg)
}

/// Lower a call `c` (the whole expression `e`).
pub fn call(cx: &mut Cx, c: &ExprCall, e: &Expr) -> syn::Result<Val> {
    let name = match &*c.func {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(|i| i.to_string()),
        _ => None,
    };
    let Some(name) = name else {
        return Err(err(
            &c.func,
            format!("only #[fused] prelude functions can be called, by their plain name: {NAMES}"),
        ));
    };
    let Some(&(_, prim, usage)) = TABLE.iter().find(|(n, ..)| *n == name) else {
        return Err(err(&c.func, format!("`{name}` is not in the #[fused] prelude; available: {NAMES}")));
    };
    let args: Vec<&Expr> = c.args.iter().collect();
    // (A score modifier sees one score, not a row of columns: `column()` means nothing there.)
    let row_wide = matches!(prim, Prim::Reduce(_) | Prim::Softmax | Prim::Rope(..) | Prim::RopeTable(_) | Prim::Column)
        || (matches!(prim, Prim::Max) && args.len() == 1);
    if cx.elementwise_only() && row_wide {
        return Err(err(
            e,
            format!("`{name}` works on a whole row, but a score modifier sees one score at a time: use elementwise arithmetic, `select` and `neg_inf()`"),
        ));
    }
    let arity = |n: usize| -> syn::Result<()> {
        if args.len() == n {
            Ok(())
        } else {
            Err(err(
                e,
                format!("`{name}` takes {n} argument{}: {usage}; got {}", if n == 1 { "" } else { "s" }, args.len()),
            ))
        }
    };
    let id = match prim {
        Prim::Unary(op) => {
            arity(1)?;
            let a = operand(cx, args[0], Some(DType::F32))?;
            cx.b.unary(op, a)
        }
        Prim::Binary(op) => {
            arity(2)?;
            binary(cx, op, args[0], args[1])?
        }
        Prim::Max if args.len() == 2 => binary(cx, BinaryOp::Max, args[0], args[1])?,
        Prim::Max => {
            if args.len() != 1 {
                return Err(err(
                    e,
                    format!("`max` takes 1 argument (row maximum) or 2 (elementwise): {usage}; got {}", args.len()),
                ));
            }
            let a = operand(cx, args[0], Some(DType::F32))?;
            cx.b.reduce(ReduceOp::Max, a)
        }
        Prim::Reduce(op) => {
            arity(1)?;
            let a = operand(cx, args[0], Some(DType::F32))?;
            cx.b.reduce(op, a)
        }
        Prim::Select => {
            arity(3)?;
            let c0 = operand(cx, args[0], Some(DType::Bool))?;
            let (t, f) = (cx.expr(args[1])?, cx.expr(args[2])?);
            let (t, f) = cx.pair(t, f, args[1], args[2])?;
            cx.no_half(&[t, f], e)?;
            cx.b.select(c0, t, f)
        }
        Prim::NegInf => {
            arity(0)?;
            Ok(cx.b.f32(f32::NEG_INFINITY))
        }
        Prim::Column => {
            arity(0)?;
            Ok(cx.b.column())
        }
        Prim::Softmax => {
            arity(1)?;
            let a = operand(cx, args[0], Some(DType::F32))?;
            cx.b.softmax(a)
        }
        Prim::Rope(style, llama3) => {
            arity(if llama3 { 8 } else { 4 })?;
            return rope(cx, &args, style, llama3, &name, e).map(Val::Node);
        }
        Prim::RopeTable(style) => {
            arity(4)?;
            return rope_table(cx, &args, style, &name, e).map(Val::Node);
        }
    };
    Ok(Val::Node(id.map_err(|be| build_err(e, be))?))
}

/// An operand of an arithmetic prelude function (never a half: see `Cx::no_half`).
fn operand(cx: &mut Cx, a: &Expr, hint: Option<DType>) -> syn::Result<ValueId> {
    let v = cx.expr(a)?;
    let id = cx.value(v, hint, a)?;
    cx.no_half(&[id], a)?;
    Ok(id)
}

fn binary(cx: &mut Cx, op: BinaryOp, a: &Expr, b: &Expr) -> syn::Result<Built> {
    let (va, vb) = (cx.expr(a)?, cx.expr(b)?);
    let (x, y) = cx.pair(va, vb, a, b)?;
    cx.no_half(&[x, y], quote::quote!(#a, #b))?;
    Ok(cx.b.binary(op, x, y))
}

type Built = Result<ValueId, BuildError>;

/// The value a RoPE call rotates: a parameter or per-column arithmetic on parameters (a bias
/// add, a norm's scale), which the backends evaluate again at each column's partner; the type
/// rules reject what they cannot (see `kiln_codegen::typeck`).
fn rope_x(cx: &mut Cx, a: &Expr) -> syn::Result<ValueId> {
    operand(cx, a, Some(DType::F32))
}

fn rope_table(cx: &mut Cx, args: &[&Expr], style: RopeStyle, name: &str, call: &Expr) -> syn::Result<ValueId> {
    let x = rope_x(cx, args[0])?;
    let pos = operand(cx, args[1], Some(DType::I32))?;
    let table = match cx.expr(args[2])? {
        Val::Param { index, .. } => index,
        _ => {
            return Err(err(
                args[2],
                format!(
                "`{name}`'s `inv_freq` must be a `Bcast<f32>` parameter itself: it is read at each pair's first column"
            ),
            ))
        }
    };
    let v = cx.expr(args[3])?;
    if !matches!(v, Val::Int(_)) && !cx.is_comptime(v) {
        return Err(err(args[3], format!("`{name}`'s `head_dim` must be a #[comptime] parameter or a literal: it is the same for the whole launch")));
    }
    let head_dim = cx.value(v, Some(DType::I32), args[3])?;
    cx.b.rope_table(x, pos, table, head_dim, style).map_err(|be| match be {
        BuildError::Type(TypeError::RopeOperand(_)) => build_err(args[0], be),
        BuildError::Type(TypeError::RopeTable(_)) => build_err(args[2], be),
        other => build_err(call, other),
    })
}

fn rope(cx: &mut Cx, args: &[&Expr], style: RopeStyle, llama3: bool, name: &str, call: &Expr) -> syn::Result<ValueId> {
    let x = rope_x(cx, args[0])?;
    let pos = operand(cx, args[1], Some(DType::I32))?;
    let mut uniform = |i: usize, what: &str, d: DType| -> syn::Result<ValueId> {
        let v = cx.expr(args[i])?;
        if !matches!(v, Val::Float(_) | Val::Int(_)) && !cx.is_comptime(v) {
            return Err(err(
                args[i],
                format!("`{name}`'s `{what}` must be a #[comptime] parameter or a literal: it is the same for the whole launch"),
            ));
        }
        cx.value(v, Some(d), args[i])
    };
    let theta = uniform(2, "theta", DType::F32)?;
    let head_dim = uniform(3, "head_dim", DType::I32)?;
    let scaling = if llama3 {
        Some(Llama3Scaling {
            factor: uniform(4, "factor", DType::F32)?,
            low_freq_factor: uniform(5, "low_freq_factor", DType::F32)?,
            high_freq_factor: uniform(6, "high_freq_factor", DType::F32)?,
            original_max_position: uniform(7, "original_max_position", DType::F32)?,
        })
    } else {
        None
    };
    cx.b.rope(x, pos, theta, head_dim, style, scaling).map_err(|be| match be {
        // Point at the tensor operand, the part the user has to change.
        BuildError::Type(TypeError::RopeOperand(_)) => build_err(args[0], be),
        other => build_err(call, other),
    })
}
