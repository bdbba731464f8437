//! The signature of a `#[fused]` fn: what each parameter and output is.
//!
//! Parameters: `Row`, `Bcast` (the specialisation's storage dtype T), `Row<f32|f16|bf16|e4m3|i8>`,
//! `Bcast<f32|f16|bf16|e4m3|i8>` (a fixed dtype), `PerRow<i32|f32>` (one value per row),
//! `Gather<idx>` (a storage-dtype Row whose row `r` is tensor row `idx[r]`, `idx` a
//! `PerRow<i32>` parameter) and `#[comptime] name: f32|i32|bool` (a launch-uniform scalar).
//! Outputs: `Row`, `Row<f32|f16|bf16|e4m3|i8>`, `PerRow<f32|i32>`, `Scatter<idx>` (row `r` written to
//! tensor row `idx[r]`; negative skips), or a tuple of them.
//!
//! Invariant: a parsed [`Sig`] has at least one output, unique parameter names, and no name
//! that the generated `run` fn uses itself (`dev`).

use kiln_codegen::ir::{DType, OutputKind, ParamKind};
use syn::{FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Type};

/// Where a parameter's dtype comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dt {
    /// The storage dtype of the specialisation being built.
    Storage,
    Fixed(DType),
}

impl Dt {
    fn resolve(self, t: DType) -> DType {
        match self {
            Dt::Storage => t,
            Dt::Fixed(d) => d,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PKind {
    Row(Dt),
    Bcast(Dt),
    PerRow(DType),
    Comptime(DType),
}

#[derive(Clone, Debug)]
pub struct SigParam {
    pub name: Ident,
    pub kind: PKind,
    /// `Gather<idx>`: the index parameter's name.
    pub gather: Option<Ident>,
}

impl SigParam {
    pub fn param_kind(&self, t: DType) -> ParamKind {
        match self.kind {
            PKind::Row(d) => ParamKind::Row(d.resolve(t)),
            PKind::Bcast(d) => ParamKind::Bcast(d.resolve(t)),
            PKind::PerRow(d) => ParamKind::PerRow(d),
            PKind::Comptime(d) => ParamKind::Comptime(d),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum OKind {
    Row(Dt),
    PerRow(DType),
    /// A storage-dtype Row written to the rows named by this `PerRow<i32>` parameter.
    Scatter(Ident),
}

impl OKind {
    pub fn output_kind(&self, t: DType) -> OutputKind {
        match self {
            OKind::Row(d) => OutputKind::Row(d.resolve(t)),
            OKind::PerRow(d) => OutputKind::PerRow(*d),
            OKind::Scatter(_) => OutputKind::Row(t),
        }
    }
}

pub struct Sig {
    pub params: Vec<SigParam>,
    pub outputs: Vec<OKind>,
    /// Whether the return type is a tuple (the body must then end in a tuple expression).
    pub tuple: bool,
    /// An attention score modifier: elementwise only (no reductions, softmax or RoPE).
    pub elementwise: bool,
}

const PARAM_TYPES: &str = "`Row`, `Bcast`, `Row<f32|f16|bf16|e4m3|i8>`, `Bcast<f32|f16|bf16|e4m3|i8>`, `PerRow<i32|f32>`, `Gather<index_param>`, or `#[comptime] name: f32|i32|bool`";
const OUTPUT_TYPES: &str =
    "`Row`, `Row<f32|f16|bf16|e4m3|i8>`, `PerRow<f32|i32>`, `Scatter<index_param>`, or a tuple of them such as `(Row, Row)`";

fn err<T>(tokens: impl quote::ToTokens, msg: impl std::fmt::Display) -> syn::Result<T> {
    Err(syn::Error::new_spanned(tokens, msg))
}

pub fn parse(f: &syn::ItemFn) -> syn::Result<Sig> {
    let s = &f.sig;
    if let Some(t) = &s.constness {
        return err(t, "a #[fused] fn cannot be `const`");
    }
    if let Some(t) = &s.asyncness {
        return err(t, "a #[fused] fn cannot be `async`: it describes a GPU kernel, not a future");
    }
    if let Some(t) = &s.unsafety {
        return err(t, "a #[fused] fn cannot be `unsafe`; the generated `run` checks every launch");
    }
    if let Some(t) = &s.abi {
        return err(t, "a #[fused] fn takes no `extern` ABI");
    }
    if !s.generics.params.is_empty() || s.generics.where_clause.is_some() {
        return err(&s.generics, "a #[fused] fn takes no generics: `Row` and `Bcast` already stand for the storage dtype, and the macro builds f32, f16 and bf16 versions");
    }
    if let Some(v) = &s.variadic {
        return err(v, "a #[fused] fn cannot be variadic");
    }
    if let Some(a) = f.attrs.iter().find(|a| !a.path().is_ident("doc")) {
        return err(a, "only doc comments are allowed on a #[fused] fn (they document the generated module)");
    }
    let mut params: Vec<SigParam> = vec![];
    for arg in &s.inputs {
        let p = parse_param(arg)?;
        if p.name == "dev" {
            return err(&p.name, "`dev` is the device argument of the generated `run`; rename this parameter");
        }
        if params.iter().any(|q| q.name == p.name) {
            return err(&p.name, format!("parameter `{}` is declared twice", p.name));
        }
        params.push(p);
    }
    for p in &params {
        if let Some(g) = &p.gather {
            check_index(&params, g)?;
        }
    }
    let (outputs, tuple) = match &s.output {
        ReturnType::Default => {
            return err(
                &s.ident,
                format!(
                "a #[fused] fn must return its outputs: add `-> Row` (or {OUTPUT_TYPES}) and end the body with them"
            ),
            )
        }
        ReturnType::Type(_, ty) => match &**ty {
            Type::Tuple(t) => {
                if t.elems.is_empty() {
                    return err(t, format!("a #[fused] fn must return at least one output: {OUTPUT_TYPES}"));
                }
                (t.elems.iter().map(parse_output).collect::<syn::Result<Vec<_>>>()?, true)
            }
            other => (vec![parse_output(other)?], false),
        },
    };
    for o in &outputs {
        if let OKind::Scatter(g) = o {
            check_index(&params, g)?;
        }
    }
    Ok(Sig { params, outputs, tuple, elementwise: false })
}

/// The index of a `Gather<idx>` / `Scatter<idx>` must be a declared `PerRow<i32>` parameter.
fn check_index(params: &[SigParam], idx: &Ident) -> syn::Result<()> {
    match params.iter().find(|p| p.name == *idx) {
        Some(p) if p.kind == PKind::PerRow(DType::I32) => Ok(()),
        Some(_) => err(idx, format!("`{idx}` must be a `PerRow<i32>` parameter to index rows")),
        None => err(idx, format!("`{idx}` is not a parameter; declare `{idx}: PerRow<i32>` to index rows with it")),
    }
}

pub(crate) fn parse_param(arg: &FnArg) -> syn::Result<SigParam> {
    let pt = match arg {
        FnArg::Receiver(r) => return err(r, "a #[fused] fn is a free function; it takes no `self`"),
        FnArg::Typed(pt) => pt,
    };
    let name = match &*pt.pat {
        Pat::Ident(pi) if pi.by_ref.is_none() && pi.mutability.is_none() && pi.subpat.is_none() => pi.ident.clone(),
        other => return err(other, "parameters must be plain names (`x: Row`): no patterns, `mut` or `ref`"),
    };
    let mut comptime = false;
    for a in &pt.attrs {
        if a.path().is_ident("comptime") {
            if !matches!(a.meta, syn::Meta::Path(_)) {
                return err(a, "`#[comptime]` takes no arguments");
            }
            comptime = true;
        } else {
            return err(a, "only `#[comptime]` is allowed on a #[fused] parameter");
        }
    }
    let ty = &*pt.ty;
    if comptime {
        let d = match type_name(ty) {
            Some(("f32", None)) => DType::F32,
            Some(("i32", None)) => DType::I32,
            Some(("bool", None)) => DType::Bool,
            _ => return err(ty, "a #[comptime] parameter is a launch scalar: `f32`, `i32` or `bool`"),
        };
        return Ok(SigParam { name, kind: PKind::Comptime(d), gather: None });
    }
    if let Some(("Gather", g)) = type_name(ty) {
        let Some(g) = g else {
            return err(ty, "name the index: `Gather<ids>` reads row `ids[r]` (`ids: PerRow<i32>`)");
        };
        return Ok(SigParam { name, kind: PKind::Row(Dt::Storage), gather: Some(Ident::new(&g, index_span(ty))) });
    }
    let kind = match type_name(ty) {
        Some(("Row", g)) => PKind::Row(storage_or(g, ty)?),
        Some(("Bcast", g)) => PKind::Bcast(storage_or(g, ty)?),
        Some(("PerRow", Some(g))) => match g.as_str() {
            "i32" => PKind::PerRow(DType::I32),
            "f32" => PKind::PerRow(DType::F32),
            _ => {
                return err(ty, "`PerRow` holds `i32` or `f32` values: `PerRow<i32>` (e.g. positions) or `PerRow<f32>`")
            }
        },
        Some(("PerRow", None)) => {
            return err(ty, "say what a `PerRow` holds: `PerRow<i32>` (e.g. positions) or `PerRow<f32>`")
        }
        Some(("f32" | "i32" | "bool", None)) => {
            return err(ty, "a scalar parameter must be marked `#[comptime]` (a launch-uniform value such as `eps`)")
        }
        _ => return err(ty, format!("unsupported #[fused] parameter type; use {PARAM_TYPES}")),
    };
    Ok(SigParam { name, kind, gather: None })
}

/// The span of the generic argument of `Gather<idx>` / `Scatter<idx>` (errors point at it).
fn index_span(ty: &Type) -> proc_macro2::Span {
    use syn::spanned::Spanned;
    if let Type::Path(tp) = ty {
        if let Some(PathArguments::AngleBracketed(ab)) = tp.path.segments.last().map(|s| &s.arguments) {
            if let Some(a) = ab.args.first() {
                return a.span();
            }
        }
    }
    ty.span()
}

fn parse_output(ty: &Type) -> syn::Result<OKind> {
    match type_name(ty) {
        Some(("Row", g)) => Ok(OKind::Row(storage_or(g, ty)?)),
        Some(("Scatter", Some(g))) => Ok(OKind::Scatter(Ident::new(&g, index_span(ty)))),
        Some(("Scatter", None)) => {
            err(ty, "name the index: `Scatter<slot>` writes row `r` to row `slot[r]` (`slot: PerRow<i32>`)")
        }
        Some(("PerRow", Some(g))) => match g.as_str() {
            "f32" => Ok(OKind::PerRow(DType::F32)),
            "i32" => Ok(OKind::PerRow(DType::I32)),
            _ => err(ty, "a `PerRow` output holds `f32` or `i32`"),
        },
        _ => err(ty, format!("unsupported #[fused] output type; use {OUTPUT_TYPES}")),
    }
}

/// `Row` → storage dtype; `Row<f32|f16|bf16|e4m3|i8>` → that dtype.
fn storage_or(generic: Option<String>, ty: &Type) -> syn::Result<Dt> {
    match generic.as_deref() {
        None => Ok(Dt::Storage),
        Some("f32") => Ok(Dt::Fixed(DType::F32)),
        Some("f16") => Ok(Dt::Fixed(DType::F16)),
        Some("bf16") => Ok(Dt::Fixed(DType::BF16)),
        Some("e4m3") => Ok(Dt::Fixed(DType::F8E4M3)),
        Some("i8") => Ok(Dt::Fixed(DType::I8)),
        Some(_) => err(
            ty,
            "a tensor's element type is `f32`, `f16`, `bf16`, `e4m3` or `i8`; leave it out (`Row`) to use the kernel's storage dtype",
        ),
    }
}

/// A single-segment type path and its one type argument, if any: `Row<f32>` → ("Row", "f32").
/// Anything else (references, tuples, qualified paths, several arguments) gives `None`.
fn type_name(ty: &Type) -> Option<(&'static str, Option<String>)> {
    let Type::Path(tp) = ty else { return None };
    if tp.qself.is_some() || tp.path.leading_colon.is_some() || tp.path.segments.len() != 1 {
        return None;
    }
    let seg = &tp.path.segments[0];
    let name =
        ["Row", "Bcast", "PerRow", "Gather", "Scatter", "f32", "i32", "bool"].into_iter().find(|n| seg.ident == n)?;
    let generic = match &seg.arguments {
        PathArguments::None => None,
        PathArguments::AngleBracketed(ab) if ab.args.len() == 1 => match &ab.args[0] {
            GenericArgument::Type(Type::Path(inner)) if inner.qself.is_none() => {
                Some(inner.path.get_ident()?.to_string())
            }
            _ => return None,
        },
        _ => return None,
    };
    Some((name, generic))
}
