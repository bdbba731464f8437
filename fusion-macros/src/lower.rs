//! The body of a `#[fused]` fn, lowered into [`Builder`] calls for one storage dtype.
//!
//! A body is `let name = expr;` bindings and a final expression (the outputs, a tuple when the
//! return type is one). Expressions: `+ - * /`, unary `-`, comparisons (→ bool), `&& || !`,
//! literals, parentheses, `as f32|i32|f16|bf16`, and calls of the [`crate::prelude`].
//!
//! Typing rules the frontend adds on top of codegen's:
//! - loads of f16/bf16 tensors are widened to f32 on first use, so arithmetic runs in f32, and
//!   `Builder::output` narrows each output back to its dtype;
//! - literals stay untyped until they meet a value: a float literal is an f32 constant; an
//!   integer literal takes the dtype of the number it meets (`x * 2` is `x * 2.0` when `x` is
//!   f32), else i32; `true`/`false` are bools.
//!
//! Invariant: every error is spanned on the expression or statement that caused it, including
//! type errors that codegen's [`Builder`] reports.

use crate::sig::{PKind, Sig};
use kiln_codegen::builder::{BuildError, Builder};
use kiln_codegen::ir::{BinaryOp, CmpOp, Const, DType, Kernel, Shape, UnaryOp, ValueId};
use kiln_codegen::typeck::TypeError;
use quote::ToTokens;
use syn::{BinOp, Expr, Lit, Pat, Stmt, UnOp};

/// The value of an expression: a node, or a literal not yet given a dtype.
#[derive(Clone, Copy, Debug)]
pub enum Val {
    Node(ValueId),
    /// A parameter, loaded but not yet widened (`rope` needs the parameter itself).
    Param { index: u32, load: ValueId },
    Float(f64),
    Int(i64),
    Bool(bool),
}

pub struct Cx<'s> {
    pub b: Builder,
    sig: &'s Sig,
    /// Names in scope, innermost last (a later `let` shadows an earlier one).
    env: Vec<(String, Val)>,
    /// Widened load of each parameter, made on its first use as a value.
    widened: Vec<Option<ValueId>>,
}

fn err(tokens: impl ToTokens, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new_spanned(tokens, msg)
}

/// Build the kernel of `f` for storage dtype `dtype`.
pub fn build(f: &syn::ItemFn, sig: &Sig, source: &str, dtype: DType) -> syn::Result<Kernel> {
    let mut cx = Cx { b: Builder::new(&f.sig.ident.to_string(), source, dtype), sig, env: vec![], widened: vec![] };
    for (i, p) in sig.params.iter().enumerate() {
        let load = cx.b.param(&p.name.to_string(), p.param_kind(dtype)).map_err(|e| build_err(&p.name, e))?;
        cx.env.push((p.name.to_string(), Val::Param { index: i as u32, load }));
        cx.widened.push(None);
    }
    let stmts = &f.block.stmts;
    let Some((last, init)) = stmts.split_last() else {
        return Err(missing_return(&f.block));
    };
    for s in init {
        cx.stmt(s)?;
    }
    let ret = match last {
        Stmt::Expr(e, None) => e,
        Stmt::Expr(e, Some(_)) => {
            cx.expr(e)?;
            return Err(err(last, "the body must end with the value(s) it returns: remove the `;` so the last expression is the kernel's output"));
        }
        _ => {
            cx.stmt(last)?;
            return Err(missing_return(last));
        }
    };
    cx.outputs(ret)?;
    cx.b.finish().map_err(|e| build_err(&f.sig.ident, e))
}

fn missing_return(tokens: impl ToTokens) -> syn::Error {
    err(tokens, "the body must end with the value(s) it returns, e.g. `x * w` or `(h, y)` without a `;`")
}

impl Cx<'_> {
    fn stmt(&mut self, s: &Stmt) -> syn::Result<()> {
        match s {
            Stmt::Local(l) => {
                let name = match &l.pat {
                    Pat::Ident(pi) if pi.by_ref.is_none() && pi.mutability.is_none() && pi.subpat.is_none() => &pi.ident,
                    Pat::Ident(pi) if pi.mutability.is_some() => {
                        return Err(err(&l.pat, "values are immutable in #[fused]; drop `mut` and bind a new name instead"))
                    }
                    Pat::Type(pt) => {
                        return Err(err(&pt.ty, "no type annotations in #[fused] `let`s: every value's type is inferred (use `as` to convert)"))
                    }
                    Pat::Tuple(_) => return Err(err(&l.pat, "bind one value per `let`; tuples only appear as the returned outputs")),
                    other => return Err(err(other, "a `let` binds a plain name: `let h = x + r;`")),
                };
                let Some(init) = &l.init else {
                    return Err(err(l, "a `let` needs a value: `let h = x + r;`"));
                };
                if let Some((_, diverge)) = &init.diverge {
                    return Err(err(diverge, "`let ... else` is not supported in #[fused]"));
                }
                let v = self.expr(&init.expr)?;
                if let Val::Node(id) = v {
                    self.b.name(id, &name.to_string());
                }
                self.env.push((name.to_string(), v));
                Ok(())
            }
            Stmt::Item(item) => Err(err(item, "items (fns, structs, uses, ...) cannot be declared inside a #[fused] fn; move them outside")),
            Stmt::Macro(m) => Err(err(m, "macros are not supported in #[fused] bodies")),
            Stmt::Expr(e, _) => {
                // Lower it first so an `if` or a loop gets its own message.
                self.expr(e)?;
                Err(err(s, "this statement has no effect: bind it with `let name = ...;` or make it the final expression (no `;`)"))
            }
        }
    }

    fn outputs(&mut self, ret: &Expr) -> syn::Result<()> {
        let elems: Vec<&Expr> = match (self.sig.tuple, strip(ret)) {
            (true, Expr::Tuple(t)) => t.elems.iter().collect(),
            (true, other) => {
                return Err(err(other, format!("the fn returns {} outputs; end the body with a tuple of them, e.g. `(h, y)`", self.sig.outputs.len())))
            }
            (false, Expr::Tuple(t)) => return Err(err(t, "the fn returns one output; return a tuple type such as `-> (Row, Row)` to return several")),
            (false, _) => vec![ret],
        };
        if elems.len() != self.sig.outputs.len() {
            return Err(err(ret, format!("the return type has {} outputs but this tuple has {}", self.sig.outputs.len(), elems.len())));
        }
        let outputs = self.sig.outputs.clone();
        for (i, (e, kind)) in elems.into_iter().zip(outputs).enumerate() {
            let name = self.output_name(e).unwrap_or_else(|| format!("out{i}"));
            let v = self.expr(e)?;
            let id = self.value(v, None, e)?;
            self.b.output(&name, kind.output_kind(self.b.dtype()), id).map_err(|be| match be {
                BuildError::Duplicate(n) => err(e, format!("output `{n}` is returned twice (or clashes with a parameter); return each value once")),
                other => build_err(e, other),
            })?;
        }
        Ok(())
    }

    /// A returned identifier names its output, unless it is a parameter's name (outputs and
    /// parameters share the generated `run`'s argument list) or `dev` (the device argument).
    fn output_name(&self, e: &Expr) -> Option<String> {
        let Expr::Path(p) = strip(e) else { return None };
        let id = p.path.get_ident()?.to_string();
        let clash = id == "dev" || self.sig.params.iter().any(|q| q.name == id);
        (!clash).then_some(id)
    }

    /// The node of a value; a literal becomes a constant of `hint` where it can.
    pub fn value(&mut self, v: Val, hint: Option<DType>, at: &Expr) -> syn::Result<ValueId> {
        Ok(match v {
            Val::Node(id) => id,
            Val::Param { index, load } => {
                if let Some(w) = self.widened[index as usize] {
                    return Ok(w);
                }
                let w = self.b.widen(load).map_err(|e| build_err(at, e))?;
                self.widened[index as usize] = Some(w);
                w
            }
            Val::Float(x) => self.b.f32(x as f32),
            Val::Int(i) if hint == Some(DType::F32) => self.b.f32(i as f32),
            Val::Int(i) => {
                let i = i32::try_from(i).map_err(|_| err(at, "integer literal does not fit in i32"))?;
                self.b.constant(Const::I32(i))
            }
            Val::Bool(x) => self.b.constant(Const::Bool(x)),
        })
    }

    /// The dtype a literal meeting `v` should take.
    pub fn hint(&self, v: Val) -> Option<DType> {
        match v {
            Val::Node(id) => Some(self.b.ty(id).dtype),
            // A parameter widens to f32 when it is half.
            Val::Param { load, .. } => {
                let d = self.b.ty(load).dtype;
                Some(if d.is_half() { DType::F32 } else { d })
            }
            Val::Float(_) => Some(DType::F32),
            Val::Int(_) => None,
            Val::Bool(_) => Some(DType::Bool),
        }
    }

    /// Two operands as nodes, literals typed after each other.
    pub fn pair(&mut self, a: Val, b: Val, ea: &Expr, eb: &Expr) -> syn::Result<(ValueId, ValueId)> {
        let (ha, hb) = (self.hint(b), self.hint(a));
        Ok((self.value(a, ha, ea)?, self.value(b, hb, eb)?))
    }

    /// Halves are storage only (codegen's lowered verifier rejects arithmetic on them); say so
    /// at the expression rather than at the fn.
    pub fn no_half(&self, ids: &[ValueId], at: impl ToTokens) -> syn::Result<()> {
        match ids.iter().map(|&v| self.b.ty(v).dtype).find(|d| d.is_half()) {
            Some(d) => Err(err(
                at,
                format!("this operates on a {d} value, but halves are storage only and arithmetic runs in f32: `as {d}` rounds, so follow it with `as f32` to compute with the rounded value"),
            )),
            None => Ok(()),
        }
    }

    pub fn lookup(&self, name: &syn::Ident) -> syn::Result<Val> {
        let s = name.to_string();
        if let Some((_, v)) = self.env.iter().rev().find(|(n, _)| *n == s) {
            return Ok(*v);
        }
        let mut names: Vec<&str> = self.env.iter().map(|(n, _)| n.as_str()).collect();
        names.dedup();
        let hint = if crate::prelude::is_prelude(&s) {
            format!(" (`{s}` is a prelude function: call it, `{s}(x)`)")
        } else {
            String::new()
        };
        Err(err(name, format!("unknown name `{s}`{hint}; in scope: {}", names.join(", "))))
    }

    /// Whether `v` is a `#[comptime]` parameter (for prelude arguments that must be uniform
    /// across the launch).
    pub fn is_comptime(&self, v: Val) -> bool {
        match v {
            Val::Param { index, .. } => matches!(self.sig.params[index as usize].kind, PKind::Comptime(_)),
            _ => false,
        }
    }

    pub fn expr(&mut self, e: &Expr) -> syn::Result<Val> {
        match e {
            Expr::Paren(p) => self.expr(&p.expr),
            Expr::Group(g) => self.expr(&g.expr),
            Expr::Lit(l) => literal(&l.lit),
            Expr::Path(p) => match p.path.get_ident() {
                Some(id) if p.qself.is_none() => self.lookup(id),
                _ => Err(err(p, "only plain names of parameters and `let` bindings can be used here")),
            },
            Expr::Unary(u) => self.unary(u),
            Expr::Binary(b) => self.binary(b),
            Expr::Cast(c) => self.cast(c),
            Expr::Call(c) => crate::prelude::call(self, c, e),
            Expr::MethodCall(m) => {
                let name = m.method.to_string();
                let advice = if crate::prelude::is_prelude(&name) {
                    format!("write `{name}(...)` with the receiver as the first argument")
                } else {
                    format!("use the #[fused] prelude: {}", crate::prelude::NAMES)
                };
                Err(err(e, format!("method calls are not supported in #[fused]; {advice}")))
            }
            Expr::If(_) | Expr::Match(_) => Err(err(
                e,
                "branches are not supported in #[fused]: every column runs the same code; use `select(cond, if_true, if_false)`",
            )),
            Expr::ForLoop(_) | Expr::While(_) | Expr::Loop(_) | Expr::Break(_) | Expr::Continue(_) => Err(err(
                e,
                "loops are not supported in #[fused]: the body describes one row at a time; use the row reductions `sum`, `mean` and `max(x)`",
            )),
            Expr::Closure(_) => Err(err(e, "closures are not supported in #[fused]; bind intermediate values with `let`")),
            Expr::Reference(_) => Err(err(e, "references are not needed in #[fused]: values are rows, use them directly")),
            Expr::Index(_) => Err(err(e, "indexing is not supported in #[fused]: a value is a whole row, and arithmetic applies per column")),
            Expr::Field(_) => Err(err(e, "field access is not supported in #[fused]")),
            Expr::Assign(_) => Err(err(e, "values are immutable in #[fused]; bind a new name with `let`")),
            Expr::Tuple(_) => Err(err(e, "tuples only appear as the final expression, to return several outputs")),
            Expr::Return(_) => Err(err(e, "no `return` in #[fused]: end the body with the outputs")),
            Expr::Macro(_) => Err(err(e, "macros are not supported in #[fused] bodies")),
            Expr::Block(_) | Expr::Unsafe(_) => Err(err(e, "nested blocks are not supported in #[fused]; bind intermediate values with `let`")),
            _ => Err(err(
                e,
                format!("this expression is not part of the #[fused] DSL; use arithmetic, comparisons, `as` casts and the prelude: {}", crate::prelude::NAMES),
            )),
        }
    }

    fn unary(&mut self, u: &syn::ExprUnary) -> syn::Result<Val> {
        let v = self.expr(&u.expr)?;
        let op = match (u.op, v) {
            (UnOp::Neg(_), Val::Float(x)) => return Ok(Val::Float(-x)),
            (UnOp::Neg(_), Val::Int(i)) => return Ok(Val::Int(-i)),
            (UnOp::Not(_), Val::Bool(x)) => return Ok(Val::Bool(!x)),
            (UnOp::Neg(_), _) => UnaryOp::Neg,
            (UnOp::Not(_), _) => UnaryOp::Not,
            _ => return Err(err(u, "references are not needed in #[fused]: values are rows, use them directly")),
        };
        let a = self.value(v, None, &u.expr)?;
        self.no_half(&[a], u)?;
        Ok(Val::Node(self.b.unary(op, a).map_err(|e| build_err(u, e))?))
    }

    fn binary(&mut self, b: &syn::ExprBinary) -> syn::Result<Val> {
        enum K {
            Bin(BinaryOp),
            Cmp(CmpOp),
        }
        let k = match b.op {
            BinOp::Add(_) => K::Bin(BinaryOp::Add),
            BinOp::Sub(_) => K::Bin(BinaryOp::Sub),
            BinOp::Mul(_) => K::Bin(BinaryOp::Mul),
            BinOp::Div(_) => K::Bin(BinaryOp::Div),
            BinOp::And(_) => K::Bin(BinaryOp::And),
            BinOp::Or(_) => K::Bin(BinaryOp::Or),
            BinOp::Lt(_) => K::Cmp(CmpOp::Lt),
            BinOp::Le(_) => K::Cmp(CmpOp::Le),
            BinOp::Gt(_) => K::Cmp(CmpOp::Gt),
            BinOp::Ge(_) => K::Cmp(CmpOp::Ge),
            BinOp::Eq(_) => K::Cmp(CmpOp::Eq),
            BinOp::Ne(_) => K::Cmp(CmpOp::Ne),
            BinOp::Rem(_) => return Err(err(b, "`%` is not in the #[fused] DSL")),
            BinOp::BitAnd(_) | BinOp::BitOr(_) | BinOp::BitXor(_) | BinOp::Shl(_) | BinOp::Shr(_) => {
                return Err(err(b, "bitwise operators are not in the #[fused] DSL; use `&&`, `||` and `!` on bools"))
            }
            _ => return Err(err(b, "values are immutable in #[fused]; write `let y = x + 1.0;` instead of compound assignment")),
        };
        let l = self.expr(&b.left)?;
        let r = self.expr(&b.right)?;
        let (x, y) = self.pair(l, r, &b.left, &b.right)?;
        self.no_half(&[x, y], b)?;
        let v = match k {
            K::Bin(op) => self.b.binary(op, x, y),
            K::Cmp(op) => self.b.cmp(op, x, y),
        };
        Ok(Val::Node(v.map_err(|e| build_err(b, e))?))
    }

    fn cast(&mut self, c: &syn::ExprCast) -> syn::Result<Val> {
        let to = match &*c.ty {
            syn::Type::Path(tp) if tp.qself.is_none() => match tp.path.get_ident().map(|i| i.to_string()).as_deref() {
                Some("f32") => DType::F32,
                Some("i32") => DType::I32,
                Some("f16") => DType::F16,
                Some("bf16") => DType::BF16,
                Some("bool") => DType::Bool,
                _ => return Err(err(&c.ty, "`as` converts to `f32`, `i32`, `f16` or `bf16`")),
            },
            other => return Err(err(other, "`as` converts to `f32`, `i32`, `f16` or `bf16`")),
        };
        let v = self.expr(&c.expr)?;
        let a = self.value(v, Some(to), &c.expr)?;
        Ok(Val::Node(self.b.cast(a, to).map_err(|e| build_err(c, e))?))
    }
}

/// Strip parentheses and invisible groups.
fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip(&p.expr),
        Expr::Group(g) => strip(&g.expr),
        other => other,
    }
}

fn literal(l: &Lit) -> syn::Result<Val> {
    match l {
        Lit::Float(f) => match f.suffix() {
            "" | "f32" => Ok(Val::Float(f.base10_parse::<f64>()?)),
            _ => Err(err(f, "float literals are f32 in #[fused]; drop the suffix")),
        },
        Lit::Int(i) => match i.suffix() {
            "" | "i32" => Ok(Val::Int(i.base10_parse::<i64>()?)),
            "f32" => Ok(Val::Float(i.base10_parse::<f64>()?)),
            _ => Err(err(i, "integer literals are i32 (or f32 next to floats) in #[fused]; drop the suffix")),
        },
        Lit::Bool(b) => Ok(Val::Bool(b.value)),
        other => Err(err(other, "only number and bool literals are allowed in #[fused]")),
    }
}

/// A codegen build error, spanned on the expression that caused it, with DSL advice.
pub fn build_err(tokens: impl ToTokens, e: BuildError) -> syn::Error {
    let advice = match &e {
        BuildError::Type(TypeError::Mismatch { a, b, .. }) if a.dtype != b.dtype => {
            " (arithmetic runs in f32: convert an i32 with `as f32`; compare values of one type)"
        }
        BuildError::Type(TypeError::Wrong { got, want, .. }) if got.shape == Shape::Uniform && want.contains("per-column") => {
            " (this is one value per row, e.g. a reduction's result; reduce or normalise a per-column value instead)"
        }
        BuildError::OutputShape { kind: "Row", .. } => {
            " (a reduction such as `mean(x)` is one value per row: combine it with a per-column value, e.g. `x * inv`, or return it as `PerRow<f32>`)"
        }
        BuildError::OutputShape { .. } => " (reduce it with `sum`, `mean` or `max(x)`, or return it as `Row`)",
        _ => "",
    };
    err(tokens, format!("{e}{advice}"))
}
