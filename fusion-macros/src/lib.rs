//! `#[fused]`: the thin frontend. It parses a restricted Rust fn with syn, builds kiln IR
//! through `kiln_codegen::builder::Builder`, calls `kiln_codegen::compile` for every storage
//! dtype, and emits a module of constants, a `DEF`, a `cpu` entry and a typed `run`.
//!
//! Layout (each file does one thing; every algorithm lives in codegen):
//! - [`sig`]: the signature: parameter kinds (`Row`, `Bcast`, `PerRow<..>`, `#[comptime]`) and
//!   the returned output kinds;
//! - [`lower`]: the body (`let`s and a final expression) into Builder calls, and [`expr`] its
//!   expressions;
//! - [`prelude`]: the functions a body may call, and their lowering;
//! - [`emit`]: the generated module.
//!
//! Invariants:
//! - every error is a `syn::Error` spanned on the user's tokens that caused it, with advice;
//! - a missing backend is never reported as a user error: only DSL errors and codegen's
//!   verdict on a kernel the DSL accepted become `compile_error!`.

mod attention;
mod emit;
mod expr;
mod lower;
mod prelude;
mod sig;

use proc_macro::TokenStream;

/// Turn a restricted Rust fn into a fused row kernel. See `docs/decisions.md` and the crate
/// docs of `kiln-codegen` for the model; the DSL is described in [`lower`] and [`prelude`].
#[proc_macro_attribute]
pub fn fused(attr: TokenStream, item: TokenStream) -> TokenStream {
    let source = source_location(&item);
    match expand(attr.into(), item.into(), &source) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The whole expansion, on proc_macro2 tokens so it can be unit-tested outside a macro.
fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
    source: &str,
) -> syn::Result<proc_macro2::TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "#[fused] takes no arguments; mark launch scalars with #[comptime] on the parameter instead",
        ));
    }
    let f: syn::ItemFn = syn::parse2(item)?;
    if attention::is_attention(&f) {
        return expand_attention(&f, source);
    }
    let sig = sig::parse(&f)?;
    let mut specs = vec![];
    for dtype in kiln_codegen::ir::DType::STORAGE {
        let kernel = lower::build(&f, &sig, source, dtype)?;
        let compiled = kiln_codegen::compile(kernel).map_err(|e| {
            syn::Error::new_spanned(&f.sig.ident, format!("kiln codegen rejected `{}` for {dtype}: {e}", f.sig.ident))
        })?;
        specs.push((dtype, compiled));
    }
    Ok(emit::module(&f, &sig, source, &specs))
}

/// An attention fn: one template instance per storage dtype.
fn expand_attention(f: &syn::ItemFn, source: &str) -> syn::Result<proc_macro2::TokenStream> {
    let a = attention::parse(f)?;
    let mut specs = vec![];
    for dtype in kiln_codegen::ir::DType::STORAGE {
        let kernel = attention::build(f, &a, source, dtype)?;
        let compiled = kiln_codegen::attention::compile_attention(kernel).map_err(|e| {
            syn::Error::new_spanned(
                &f.sig.ident,
                format!("kiln codegen rejected attention `{}` for {dtype}: {e}", f.sig.ident),
            )
        })?;
        specs.push((dtype, compiled));
    }
    Ok(emit::attention_module(f, &a, source, &specs))
}

/// `file:line` of the fn's name, for headers of generated code. `Span::file`/`line` are stable
/// since Rust 1.88; the raw `proc_macro` tokens are walked because only they carry them.
fn source_location(item: &TokenStream) -> String {
    let mut saw_fn = false;
    for tt in item.clone() {
        if let proc_macro::TokenTree::Ident(id) = &tt {
            if saw_fn {
                let span = id.span();
                return format!("{}:{}", span.file(), span.line());
            }
            saw_fn = id.to_string() == "fn";
        }
    }
    let span = proc_macro::Span::call_site();
    format!("{}:{}", span.file(), span.line())
}

#[cfg(test)]
mod tests;
