//! The body of a `#[fused]` fn, lowered into [`Builder`] calls for one storage dtype.
//!
//! A body is `let name = expr;` bindings and a final expression (the outputs, a tuple when the
//! return type is one). Expressions ([`crate::expr`]): `+ - * /`, unary `-`, comparisons
//! (→ bool), `&& || !`, literals, parentheses, `as f32|i32|f16|bf16`, and calls of the
//! [`crate::prelude`].
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

use crate::sig::{OKind, PKind, Sig};
use kiln_codegen::builder::{BuildError, Builder};
use kiln_codegen::ir::{Const, DType, Kernel, Shape, ValueId};
use kiln_codegen::typeck::TypeError;
use quote::ToTokens;
use syn::{Expr, Pat, Stmt};

/// The value of an expression: a node, or a literal not yet given a dtype.
#[derive(Clone, Copy, Debug)]
pub enum Val {
    Node(ValueId),
    /// A parameter, loaded but not yet widened (a half is widened where arithmetic uses it).
    Param {
        index: u32,
        load: ValueId,
    },
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

pub(crate) fn err(tokens: impl ToTokens, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new_spanned(tokens, msg)
}

/// Build the kernel of `f` for storage dtype `dtype`.
pub fn build(f: &syn::ItemFn, sig: &Sig, source: &str, dtype: DType) -> syn::Result<Kernel> {
    build_body(&f.sig.ident, &f.block, &f.block.stmts, sig, source, dtype)
}

/// Build a kernel named `name` from `stmts` (`let`s and a final expression) over the
/// parameters and outputs of `sig`; `block` is where errors about the whole body point.
pub fn build_body(
    name: &syn::Ident,
    block: &dyn ToTokens,
    stmts: &[Stmt],
    sig: &Sig,
    source: &str,
    dtype: DType,
) -> syn::Result<Kernel> {
    let mut cx = Cx { b: Builder::new(&name.to_string(), source, dtype), sig, env: vec![], widened: vec![] };
    for (i, p) in sig.params.iter().enumerate() {
        let load = cx.b.param(&p.name.to_string(), p.param_kind(dtype)).map_err(|e| build_err(&p.name, e))?;
        cx.env.push((p.name.to_string(), Val::Param { index: i as u32, load }));
        cx.widened.push(None);
    }
    for (i, p) in sig.params.iter().enumerate() {
        if let Some(g) = &p.gather {
            let gi = cx.b.param_index(&g.to_string()).ok_or_else(|| err(g, format!("`{g}` is not a parameter")))?;
            cx.b.gather(i as u32, gi).map_err(|e| build_err(&p.name, e))?;
        }
    }
    let Some((last, init)) = stmts.split_last() else {
        return Err(missing_return(block));
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
    cx.b.finish().map_err(|e| build_err(name, e))
}

fn missing_return(tokens: impl ToTokens) -> syn::Error {
    err(tokens, "the body must end with the value(s) it returns, e.g. `x * w` or `(h, y)` without a `;`")
}

impl Cx<'_> {
    fn stmt(&mut self, s: &Stmt) -> syn::Result<()> {
        match s {
            Stmt::Local(l) => {
                let name = match &l.pat {
                    Pat::Ident(pi) if pi.by_ref.is_none() && pi.mutability.is_none() && pi.subpat.is_none() => {
                        &pi.ident
                    }
                    Pat::Ident(pi) if pi.mutability.is_some() => {
                        return Err(err(
                            &l.pat,
                            "values are immutable in #[fused]; drop `mut` and bind a new name instead",
                        ))
                    }
                    Pat::Type(pt) => return Err(err(
                        &pt.ty,
                        "no type annotations in #[fused] `let`s: every value's type is inferred (use `as` to convert)",
                    )),
                    Pat::Tuple(_) => {
                        return Err(err(&l.pat, "bind one value per `let`; tuples only appear as the returned outputs"))
                    }
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
            Stmt::Item(item) => Err(err(
                item,
                "items (fns, structs, uses, ...) cannot be declared inside a #[fused] fn; move them outside",
            )),
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
                return Err(err(
                    other,
                    format!(
                        "the fn returns {} outputs; end the body with a tuple of them, e.g. `(h, y)`",
                        self.sig.outputs.len()
                    ),
                ))
            }
            (false, Expr::Tuple(t)) => {
                return Err(err(
                    t,
                    "the fn returns one output; return a tuple type such as `-> (Row, Row)` to return several",
                ))
            }
            (false, _) => vec![ret],
        };
        if elems.len() != self.sig.outputs.len() {
            return Err(err(
                ret,
                format!("the return type has {} outputs but this tuple has {}", self.sig.outputs.len(), elems.len()),
            ));
        }
        let outputs = self.sig.outputs.clone();
        for (i, (e, kind)) in elems.into_iter().zip(outputs).enumerate() {
            let name = self.output_name(e).unwrap_or_else(|| format!("out{i}"));
            let v = self.expr(e)?;
            let id = self.value(v, None, e)?;
            let out_kind = kind.output_kind(self.b.dtype());
            let added = match &kind {
                OKind::Scatter(g) => {
                    let gi = self
                        .b
                        .param_index(&g.to_string())
                        .ok_or_else(|| err(g, format!("`{g}` is not a parameter")))?;
                    self.b.output_at(&name, out_kind, id, gi)
                }
                _ => self.b.output(&name, out_kind, id),
            };
            added.map_err(|be| match be {
                BuildError::Duplicate(n) => err(
                    e,
                    format!("output `{n}` is returned twice (or clashes with a parameter); return each value once"),
                ),
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
                Some(if d.is_narrow() { DType::F32 } else { d })
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
        match ids.iter().map(|&v| self.b.ty(v).dtype).find(|d| d.is_narrow()) {
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

    /// Whether the body is an attention score modifier (elementwise only).
    pub fn elementwise_only(&self) -> bool {
        self.sig.elementwise
    }

    /// Whether `v` is a `#[comptime]` parameter (for prelude arguments that must be uniform
    /// across the launch).
    pub fn is_comptime(&self, v: Val) -> bool {
        match v {
            Val::Param { index, .. } => {
                matches!(self.sig.params[index as usize].kind, PKind::Comptime(_))
            }
            _ => false,
        }
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
