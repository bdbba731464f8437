//! `#[fused]`: the thin frontend. It parses a restricted Rust fn with syn, builds kiln IR
//! through `kiln_codegen::builder`, and emits a module; every algorithm lives in codegen.
