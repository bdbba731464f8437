//! Expressions of a `#[fused]` body: operators, literals, casts and names, lowered into
//! [`kiln_codegen::builder::Builder`] calls (prelude calls go to [`crate::prelude`]).
//!
//! Invariants: every construct outside the DSL gets its own error with advice, spanned on the
//! construct; operands of arithmetic are never halves ([`Cx::no_half`]); a literal stays a
//! [`Val`] literal until it meets a value, so it takes that value's dtype.

use crate::lower::{build_err, err, Cx, Val};
use kiln_codegen::ir::{BinaryOp, CmpOp, DType, UnaryOp};
use syn::{BinOp, Expr, Lit, UnOp};

impl Cx<'_> {
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
            _ => {
                return Err(err(
                    b,
                    "values are immutable in #[fused]; write `let y = x + 1.0;` instead of compound assignment",
                ))
            }
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
