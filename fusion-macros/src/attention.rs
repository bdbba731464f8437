//! The attention form of `#[fused]`: a fn taking `q: Query, kv: PagedKv` (then `#[comptime]`
//! scalars), returning `Query`, whose body is one call
//! `attention(q, kv, scale, |score, q_pos, k_pos, head| modifier)`.
//!
//! - `scale` multiplies every dot product: a `#[comptime]` f32 parameter or a float literal;
//! - the closure is the score modifier: `score` is the scaled dot product (f32), `q_pos` and
//!   `k_pos` the query's and the key's positions (i32; causality is the template's: keys at
//!   positions `<= q_pos` only), `head` the query head (i32). Its body is a `#[fused]` body
//!   (`let`s, arithmetic, `select`, the elementwise prelude, `neg_inf()` masks a key) over
//!   these and the fn's `#[comptime]` parameters; it returns the score the softmax sees.
//!
//! Lowering: the closure becomes the modifier row kernel of `kiln_codegen::attention` (params
//! `score, q_pos, k_pos, head`, then the comptimes), one [`AttnKernel`] per storage dtype.

use crate::lower::{build_body, err};
use crate::sig::{Dt, OKind, PKind, Sig, SigParam};
use kiln_codegen::attention::{AttnKernel, Scale, MOD_PARAMS};
use kiln_codegen::ir::DType;
use syn::{Expr, FnArg, Ident, Pat, ReturnType, Stmt, Type};

/// A parsed attention fn, before it is built for a dtype.
pub struct AttnFn<'f> {
    /// The fn's `#[comptime]` parameters, in order (the modifier's params 4..).
    pub comptimes: Vec<SigParam>,
    pub scale: ScaleSrc,
    /// The modifier's signature: the four fixed params (named as the closure names them), then
    /// the comptimes; one f32 output.
    pub mod_sig: Sig,
    pub body: &'f Expr,
}

pub enum ScaleSrc {
    Const(f32),
    /// Index among the comptimes.
    Comptime(usize),
}

/// Whether `f` is an attention fn (it takes a `Query` or a `PagedKv`).
pub fn is_attention(f: &syn::ItemFn) -> bool {
    f.sig.inputs.iter().any(|a| match a {
        FnArg::Typed(pt) => matches!(type_ident(&pt.ty).as_deref(), Some("Query" | "PagedKv")),
        FnArg::Receiver(_) => false,
    })
}

fn type_ident(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(tp) if tp.qself.is_none() => tp.path.get_ident().map(|i| i.to_string()),
        _ => None,
    }
}

const USAGE: &str = "an attention fn is `fn name(q: Query, kv: PagedKv, #[comptime] scale: f32, ..) -> Query { attention(q, kv, scale, |score, q_pos, k_pos, head| score) }`";

pub fn parse(f: &syn::ItemFn) -> syn::Result<AttnFn<'_>> {
    // The signature, re-using the row-kernel parser for the comptimes.
    let inputs: Vec<&FnArg> = f.sig.inputs.iter().collect();
    let typed = |i: usize| match inputs.get(i) {
        Some(FnArg::Typed(pt)) => Some(pt),
        _ => None,
    };
    let (q_name, kv_name) = match (typed(0), typed(1)) {
        (Some(q), Some(kv))
            if type_ident(&q.ty).as_deref() == Some("Query") && type_ident(&kv.ty).as_deref() == Some("PagedKv") =>
        {
            (pat_ident(&q.pat)?, pat_ident(&kv.pat)?)
        }
        _ => {
            return Err(err(
                &f.sig.inputs,
                format!("the first two parameters must be `q: Query, kv: PagedKv`; {USAGE}"),
            ))
        }
    };
    let mut comptimes: Vec<SigParam> = vec![];
    for a in inputs.iter().skip(2) {
        let p = crate::sig::parse_param(a)?;
        if !matches!(p.kind, PKind::Comptime(_)) {
            return Err(err(a, "after `q` and `kv`, an attention fn takes only #[comptime] scalars (its score modifier sees one score at a time)"));
        }
        if comptimes.iter().any(|c| c.name == p.name) || p.name == q_name || p.name == kv_name {
            return Err(err(&p.name, format!("parameter `{}` is declared twice", p.name)));
        }
        comptimes.push(p);
    }
    match &f.sig.output {
        ReturnType::Type(_, ty) if type_ident(ty).as_deref() == Some("Query") => {}
        other => {
            return Err(err(other, format!("an attention fn returns `Query` (its output has q's shape); {USAGE}")))
        }
    }

    // The body: exactly `attention(q, kv, scale, |..| ..)`.
    let call = match f.block.stmts.as_slice() {
        [Stmt::Expr(Expr::Call(c), None)] => c,
        _ => return Err(err(&f.block, format!("the body of an attention fn is one call of `attention`; {USAGE}"))),
    };
    match &*call.func {
        Expr::Path(p) if p.path.is_ident("attention") => {}
        other => {
            return Err(err(other, format!("call `attention(q, kv, scale, |score, q_pos, k_pos, head| ..)`; {USAGE}")))
        }
    }
    let args: Vec<&Expr> = call.args.iter().collect();
    let [q_arg, kv_arg, scale_arg, closure] = args.as_slice() else {
        return Err(err(
            call,
            format!("`attention` takes 4 arguments (q, kv, scale, score modifier), got {}", args.len()),
        ));
    };
    expect_name(q_arg, &q_name, "the first argument of `attention` is the `Query` parameter")?;
    expect_name(kv_arg, &kv_name, "the second argument of `attention` is the `PagedKv` parameter")?;
    let scale = scale_src(scale_arg, &comptimes)?;
    let Expr::Closure(cl) = closure else {
        return Err(err(
            closure,
            "the fourth argument is the score modifier, a closure `|score, q_pos, k_pos, head| score`",
        ));
    };
    if cl.inputs.len() != MOD_PARAMS.len() {
        return Err(err(
            &cl.inputs,
            "the score modifier takes 4 arguments: `|score, q_pos, k_pos, head|` (name unused ones `_`)",
        ));
    }
    let fixed = [
        PKind::Row(Dt::Fixed(DType::F32)),
        PKind::PerRow(DType::I32),
        PKind::Bcast(Dt::Fixed(DType::I32)),
        PKind::PerRow(DType::I32),
    ];
    let mut params = vec![];
    for ((pat, kind), (role, _)) in cl.inputs.iter().zip(fixed).zip(MOD_PARAMS) {
        let name = match pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.mutability.is_none() && pi.subpat.is_none() => pi.ident.clone(),
            // `_` (or a typed pattern we do not take) gets the role's name.
            Pat::Wild(w) => Ident::new(role, w.underscore_token.span),
            other => return Err(err(other, "score modifier arguments are plain names or `_`")),
        };
        if comptimes.iter().any(|c| c.name == name) || params.iter().any(|p: &SigParam| p.name == name) {
            return Err(err(&name, format!("`{name}` is already a name here; give the argument another name")));
        }
        params.push(SigParam { name, kind, gather: None });
    }
    params.extend(comptimes.iter().cloned());
    let mod_sig = Sig { params, outputs: vec![OKind::Row(Dt::Fixed(DType::F32))], tuple: false, elementwise: true };
    Ok(AttnFn { comptimes, scale, mod_sig, body: &cl.body })
}

fn pat_ident(p: &Pat) -> syn::Result<Ident> {
    match p {
        Pat::Ident(pi) if pi.by_ref.is_none() && pi.mutability.is_none() && pi.subpat.is_none() => Ok(pi.ident.clone()),
        other => Err(err(other, "parameters must be plain names")),
    }
}

fn expect_name(e: &Expr, want: &Ident, msg: &str) -> syn::Result<()> {
    match e {
        Expr::Path(p) if p.path.is_ident(want) => Ok(()),
        other => Err(err(other, format!("{msg} (`{want}`)"))),
    }
}

fn scale_src(e: &Expr, comptimes: &[SigParam]) -> syn::Result<ScaleSrc> {
    let bad = || err(e, "the scale is an f32 #[comptime] parameter or a float literal (e.g. `0.125`)");
    match e {
        Expr::Lit(l) => match &l.lit {
            syn::Lit::Float(x) => Ok(ScaleSrc::Const(x.base10_parse::<f32>()?)),
            _ => Err(bad()),
        },
        Expr::Path(p) => {
            let id = p.path.get_ident().ok_or_else(bad)?;
            match comptimes.iter().position(|c| c.name == *id) {
                Some(i) if comptimes[i].kind == PKind::Comptime(DType::F32) => Ok(ScaleSrc::Comptime(i)),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// The attention kernel of `f` for storage dtype `dtype`.
pub fn build(f: &syn::ItemFn, a: &AttnFn<'_>, source: &str, dtype: DType) -> syn::Result<AttnKernel> {
    let stmts: Vec<Stmt> = match a.body {
        Expr::Block(b) if b.label.is_none() => b.block.stmts.clone(),
        e => vec![Stmt::Expr(e.clone(), None)],
    };
    let score_mod = build_body(&f.sig.ident, a.body, &stmts, &a.mod_sig, source, DType::F32)?;
    let scale = match a.scale {
        ScaleSrc::Const(x) => Scale::Const(x),
        ScaleSrc::Comptime(i) => Scale::Param((MOD_PARAMS.len() + i) as u32),
    };
    Ok(AttnKernel { name: f.sig.ident.to_string(), source: source.to_string(), dtype, scale, score_mod })
}
