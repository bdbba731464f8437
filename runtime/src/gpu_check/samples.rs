//! Built-in sample kernels for the GPU check, built with the codegen `Builder` in every storage
//! dtype. They stand in for the models crate's `#[fused]` kernels until those exist, and
//! between them cover every parameter and output kind: Row, Bcast, PerRow (i32 positions),
//! comptime f32 and i32, Row and PerRow outputs, one- and two-stage kernels, RoPE with
//! Llama-3 scaling and RoPE of computed values (two of the codegen's samples), softmax.

use crate::device::fused_def::{leak_def, DefError};
use kiln_codegen::builder::{BuildError, Builder};
use kiln_codegen::fused::FusedDef;
use kiln_codegen::ir::{BinaryOp, DType, Kernel, Llama3Scaling, OutputKind, ParamKind, ReduceOp, RopeStyle, UnaryOp};
use std::sync::OnceLock;

const SOURCE: &str = "kiln_runtime::gpu_check::samples";

/// Every sample, built once per process.
pub fn all() -> Result<&'static [&'static FusedDef], DefError> {
    static DEFS: OnceLock<Result<Vec<&'static FusedDef>, String>> = OnceLock::new();
    let r = DEFS.get_or_init(|| build_all().map_err(|e| e.to_string()));
    match r {
        Ok(v) => Ok(v.as_slice()),
        Err(msg) => Err(DefError::Earlier(msg.clone())),
    }
}

/// Builds one sample kernel for a storage dtype.
type MakeKernel = fn(DType) -> Result<Kernel, BuildError>;

fn build_all() -> Result<Vec<&'static FusedDef>, DefError> {
    let makers: [(&str, MakeKernel); 8] = [
        ("add_rms_norm", add_rms_norm),
        ("silu_mul", silu_mul),
        ("rope_llama3", rope_llama3),
        // RoPE of computed values (a bias add; a norm's scale after its reduction).
        ("rope_bias_half_split", kiln_codegen::cuda::samples::rope_bias_half_split),
        ("rms_norm_rope", kiln_codegen::cuda::samples::rms_norm_rope),
        ("softmax", softmax),
        ("logsumexp", logsumexp),
        // Argmax and the column index (top-k by masking).
        ("top2", kiln_codegen::cuda::samples::top2),
    ];
    let mut defs = vec![];
    for (name, make) in makers {
        let kernels = DType::STORAGE.iter().map(|&d| make(d)).collect::<Result<Vec<_>, _>>()?;
        defs.push(leak_def(name, kernels)?);
    }
    Ok(defs)
}

/// `h = x + residual; y = h * rsqrt(mean(h²) + eps) * w` → `(h, y)`.
pub fn add_rms_norm(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("add_rms_norm", SOURCE, d);
    let x = b.param("x", ParamKind::Row(d))?;
    let r = b.param("residual", ParamKind::Row(d))?;
    let w = b.param("w", ParamKind::Bcast(d))?;
    let eps = b.param("eps", ParamKind::Comptime(DType::F32))?;
    let (x, r) = (b.widen(x)?, b.widen(r)?);
    let h = b.binary(BinaryOp::Add, x, r)?;
    b.name(h, "h");
    let hh = b.binary(BinaryOp::Mul, h, h)?;
    let ms = b.reduce(ReduceOp::Mean, hh)?;
    let s = b.binary(BinaryOp::Add, ms, eps)?;
    let inv = b.unary(UnaryOp::Rsqrt, s)?;
    b.name(inv, "inv");
    let w = b.widen(w)?;
    let t = b.binary(BinaryOp::Mul, h, inv)?;
    let y = b.binary(BinaryOp::Mul, t, w)?;
    b.output("h_out", OutputKind::Row(d), h)?;
    b.output("y", OutputKind::Row(d), y)?;
    b.finish()
}

/// `gate * sigmoid(gate) * up`.
pub fn silu_mul(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("silu_mul", SOURCE, d);
    let g = b.param("gate", ParamKind::Row(d))?;
    let u = b.param("up", ParamKind::Row(d))?;
    let (g, u) = (b.widen(g)?, b.widen(u)?);
    let s = b.unary(UnaryOp::Sigmoid, g)?;
    let gs = b.binary(BinaryOp::Mul, g, s)?;
    let y = b.binary(BinaryOp::Mul, gs, u)?;
    b.output("out", OutputKind::Row(d), y)?;
    b.finish()
}

/// Half-split RoPE of `x` (rows = tokens, `width` = heads × head_dim) at per-row positions,
/// with Llama-3 frequency scaling.
pub fn rope_llama3(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("rope_llama3", SOURCE, d);
    let x = b.param("x", ParamKind::Row(d))?;
    let pos = b.param("pos", ParamKind::PerRow(DType::I32))?;
    let theta = b.param("theta", ParamKind::Comptime(DType::F32))?;
    let head_dim = b.param("head_dim", ParamKind::Comptime(DType::I32))?;
    let factor = b.param("factor", ParamKind::Comptime(DType::F32))?;
    let low = b.param("low_freq_factor", ParamKind::Comptime(DType::F32))?;
    let high = b.param("high_freq_factor", ParamKind::Comptime(DType::F32))?;
    let orig = b.param("original_max_position", ParamKind::Comptime(DType::F32))?;
    let x = b.widen(x)?;
    let scaling = Llama3Scaling { factor, low_freq_factor: low, high_freq_factor: high, original_max_position: orig };
    let y = b.rope(x, pos, theta, head_dim, RopeStyle::HalfSplit, Some(scaling))?;
    b.output("out", OutputKind::Row(d), y)?;
    b.finish()
}

/// Row softmax.
pub fn softmax(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("softmax", SOURCE, d);
    let x = b.param("x", ParamKind::Row(d))?;
    let x = b.widen(x)?;
    let y = b.softmax(x)?;
    b.output("out", OutputKind::Row(d), y)?;
    b.finish()
}

/// `log(sum(exp(x - max))) + max` per row, as an f32 PerRow output.
pub fn logsumexp(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("logsumexp", SOURCE, d);
    let x = b.param("x", ParamKind::Row(d))?;
    let x = b.widen(x)?;
    let m = b.reduce(ReduceOp::Max, x)?;
    let z = b.binary(BinaryOp::Sub, x, m)?;
    let e = b.unary(UnaryOp::Exp, z)?;
    let s = b.reduce(ReduceOp::Sum, e)?;
    let l = b.unary(UnaryOp::Log, s)?;
    let lse = b.binary(BinaryOp::Add, l, m)?;
    b.output("lse", OutputKind::PerRow(DType::F32), lse)?;
    b.finish()
}
