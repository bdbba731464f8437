//! Reference row kernels, built through [`Builder`] the way the `#[fused]` macro will build
//! them, already lowered (halves widened to f32 right after loading, softmax written as
//! max / exp / sum / div). The CUDA snapshot tests, the NVRTC compile test and GPU-vs-CPU
//! tests use them; together they reach every op, every param and output kind, both RoPE
//! styles with and without Llama-3 scaling, cached and uncached kernels, and mixed access
//! widths (an f32 tensor inside a half kernel).
//!
//! Sources are fixed strings (not `file!():line!()`) so snapshots do not move when this file
//! is edited.

use crate::builder::{BuildError, Builder};
use crate::ir::{
    BinaryOp, CmpOp, Const, DType, Kernel, Llama3Scaling, OutputKind, ParamKind, ReduceOp, RopeStyle, UnaryOp,
};

/// A sample: its name and how to build it for a storage dtype.
pub type SampleFn = fn(DType) -> Result<Kernel, BuildError>;

/// Every sample, by name.
pub const SAMPLES: [(&str, SampleFn); 12] = [
    ("rms_norm", rms_norm),
    ("add_rms_norm", add_rms_norm),
    ("silu_mul", silu_mul),
    ("rope_half_split", rope_half_split),
    ("rope_llama3_interleaved", rope_llama3_interleaved),
    ("rope_table_interleaved", rope_table_interleaved),
    ("rope_bias_half_split", rope_bias_half_split),
    ("rms_norm_rope", rms_norm_rope),
    ("logsumexp", logsumexp),
    ("softmax", softmax),
    ("top2", top2),
    ("op_zoo", op_zoo),
];

/// Kernels at the edges of the emitter's structure rather than of the model: a dead node, a
/// kernel without a column loop, a half comptime argument, a plain copy (no arithmetic).
pub const EDGE_CASES: [(&str, SampleFn); 4] =
    [("dead_code", dead_code), ("per_row_only", per_row_only), ("comptime_half", comptime_half), ("copy", copy)];

/// Every sample and edge case in every storage dtype.
pub fn all() -> Result<Vec<Kernel>, BuildError> {
    let mut v = vec![];
    for d in DType::STORAGE {
        for (_, f) in SAMPLES.iter().chain(&EDGE_CASES) {
            v.push(f(d)?);
        }
    }
    Ok(v)
}

fn src(name: &str) -> String {
    format!("kiln_codegen::cuda::samples::{name}")
}

fn named(b: &mut Builder, v: crate::ir::ValueId, name: &str) -> crate::ir::ValueId {
    b.name(v, name);
    v
}

/// `y = x * rsqrt(mean(x*x) + eps) * w`
pub fn rms_norm(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("rms_norm", &src("rms_norm"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    let w = b.param("w", ParamKind::Bcast(d))?;
    let eps = b.param("eps", ParamKind::Comptime(DType::F32))?;
    let xf = b.widen(x)?;
    let sq = b.binary(BinaryOp::Mul, xf, xf)?;
    let ms = b.reduce(ReduceOp::Mean, sq)?;
    let ms = named(&mut b, ms, "ms");
    let t = b.binary(BinaryOp::Add, ms, eps)?;
    let inv = b.unary(UnaryOp::Rsqrt, t)?;
    let inv = named(&mut b, inv, "inv");
    let wf = b.widen(w)?;
    let xn = b.binary(BinaryOp::Mul, xf, inv)?;
    let y = b.binary(BinaryOp::Mul, xn, wf)?;
    let y = named(&mut b, y, "y");
    b.output("y", OutputKind::Row(d), y)?;
    b.finish()
}

/// `h = x + residual; y = rms_norm(h) * w`, both stored.
pub fn add_rms_norm(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("add_rms_norm", &src("add_rms_norm"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    let r = b.param("residual", ParamKind::Row(d))?;
    let w = b.param("w", ParamKind::Bcast(d))?;
    let eps = b.param("eps", ParamKind::Comptime(DType::F32))?;
    let (xf, rf) = (b.widen(x)?, b.widen(r)?);
    let h = b.binary(BinaryOp::Add, xf, rf)?;
    let h = named(&mut b, h, "h");
    let sq = b.binary(BinaryOp::Mul, h, h)?;
    let ms = b.reduce(ReduceOp::Mean, sq)?;
    let ms = named(&mut b, ms, "ms");
    let t = b.binary(BinaryOp::Add, ms, eps)?;
    let inv = b.unary(UnaryOp::Rsqrt, t)?;
    let inv = named(&mut b, inv, "inv");
    let wf = b.widen(w)?;
    let hn = b.binary(BinaryOp::Mul, h, inv)?;
    let y = b.binary(BinaryOp::Mul, hn, wf)?;
    let y = named(&mut b, y, "y");
    b.output("h", OutputKind::Row(d), h)?;
    b.output("y", OutputKind::Row(d), y)?;
    b.finish()
}

/// `y = gate * sigmoid(gate) * up`
pub fn silu_mul(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("silu_mul", &src("silu_mul"), d);
    let g = b.param("gate", ParamKind::Row(d))?;
    let u = b.param("up", ParamKind::Row(d))?;
    let (gf, uf) = (b.widen(g)?, b.widen(u)?);
    let s = b.unary(UnaryOp::Sigmoid, gf)?;
    let silu = b.binary(BinaryOp::Mul, gf, s)?;
    let silu = named(&mut b, silu, "silu");
    let y = b.binary(BinaryOp::Mul, silu, uf)?;
    b.output("y", OutputKind::Row(d), y)?;
    b.finish()
}

/// HF-layout RoPE of a `[tokens * heads, head_dim]` row block, one position per row.
pub fn rope_half_split(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("rope_half_split", &src("rope_half_split"), d);
    let q = b.param("q", ParamKind::Row(d))?;
    let pos = b.param("pos", ParamKind::PerRow(DType::I32))?;
    let theta = b.param("theta", ParamKind::Comptime(DType::F32))?;
    let hd = b.param("head_dim", ParamKind::Comptime(DType::I32))?;
    let q = b.widen(q)?;
    let r = b.rope(q, pos, theta, hd, RopeStyle::HalfSplit, None)?;
    let r = named(&mut b, r, "q_rot");
    b.output("q_rot", OutputKind::Row(d), r)?;
    b.finish()
}

/// Interleaved RoPE with Llama-3 frequency scaling.
pub fn rope_llama3_interleaved(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("rope_llama3_interleaved", &src("rope_llama3_interleaved"), d);
    let k = b.param("k", ParamKind::Row(d))?;
    let pos = b.param("pos", ParamKind::PerRow(DType::I32))?;
    let theta = b.param("theta", ParamKind::Comptime(DType::F32))?;
    let hd = b.param("head_dim", ParamKind::Comptime(DType::I32))?;
    let factor = b.param("factor", ParamKind::Comptime(DType::F32))?;
    let low = b.param("low_freq_factor", ParamKind::Comptime(DType::F32))?;
    let high = b.param("high_freq_factor", ParamKind::Comptime(DType::F32))?;
    let orig = b.param("original_max_position", ParamKind::Comptime(DType::F32))?;
    let k = b.widen(k)?;
    let scaling = Llama3Scaling { factor, low_freq_factor: low, high_freq_factor: high, original_max_position: orig };
    let r = b.rope(k, pos, theta, hd, RopeStyle::Interleaved, Some(scaling))?;
    let r = named(&mut b, r, "k_rot");
    b.output("k_rot", OutputKind::Row(d), r)?;
    b.finish()
}

/// Interleaved RoPE with the inverse frequencies read from a `Bcast<f32>` table.
pub fn rope_table_interleaved(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("rope_table_interleaved", &src("rope_table_interleaved"), d);
    let k = b.param("k", ParamKind::Row(d))?;
    let pos = b.param("pos", ParamKind::PerRow(DType::I32))?;
    b.param("inv_freq", ParamKind::Bcast(DType::F32))?;
    let hd = b.param("head_dim", ParamKind::Comptime(DType::I32))?;
    let k = b.widen(k)?;
    let t = b.param_index("inv_freq").ok_or_else(|| BuildError::Duplicate("inv_freq".into()))?;
    let r = b.rope_table(k, pos, t, hd, RopeStyle::Interleaved)?;
    let r = named(&mut b, r, "k_rot");
    b.output("k_rot", OutputKind::Row(d), r)?;
    b.finish()
}

/// Qwen2's biased key before RoPE, in the rope: `k_rot = rope(k + bias)`, and `v + bias_v`
/// beside it (a rope's source evaluated at the partner column too).
pub fn rope_bias_half_split(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("rope_bias_half_split", &src("rope_bias_half_split"), d);
    let k = b.param("k", ParamKind::Row(d))?;
    let v = b.param("v", ParamKind::Row(d))?;
    let bk = b.param("bias_k", ParamKind::Bcast(d))?;
    let bv = b.param("bias_v", ParamKind::Bcast(d))?;
    let pos = b.param("pos", ParamKind::PerRow(DType::I32))?;
    let theta = b.param("theta", ParamKind::Comptime(DType::F32))?;
    let hd = b.param("head_dim", ParamKind::Comptime(DType::I32))?;
    let (k, v, bk, bv) = (b.widen(k)?, b.widen(v)?, b.widen(bk)?, b.widen(bv)?);
    let kb = b.binary(BinaryOp::Add, k, bk)?;
    let r = b.rope(kb, pos, theta, hd, RopeStyle::HalfSplit, None)?;
    let r = named(&mut b, r, "k_rot");
    let vb = b.binary(BinaryOp::Add, v, bv)?;
    b.output("k_rot", OutputKind::Row(d), r)?;
    b.output("v_out", OutputKind::Row(d), vb)?;
    b.finish()
}

/// Qwen3's per-head norm before RoPE, in one kernel over one head per row: the mean square is
/// a reduction (stage 0) and the rope's source `x * inv * w` reads it (stage 1).
pub fn rms_norm_rope(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("rms_norm_rope", &src("rms_norm_rope"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    let w = b.param("w", ParamKind::Bcast(d))?;
    let pos = b.param("pos", ParamKind::PerRow(DType::I32))?;
    let theta = b.param("theta", ParamKind::Comptime(DType::F32))?;
    let hd = b.param("head_dim", ParamKind::Comptime(DType::I32))?;
    let (x, w) = (b.widen(x)?, b.widen(w)?);
    let sq = b.binary(BinaryOp::Mul, x, x)?;
    let ms = b.reduce(ReduceOp::Mean, sq)?;
    let eps = b.f32(1e-6);
    let ms = b.binary(BinaryOp::Add, ms, eps)?;
    let inv = b.unary(UnaryOp::Rsqrt, ms)?;
    let inv = named(&mut b, inv, "inv");
    let xn = b.binary(BinaryOp::Mul, x, inv)?;
    let xn = b.binary(BinaryOp::Mul, xn, w)?;
    let r = b.rope(xn, pos, theta, hd, RopeStyle::HalfSplit, None)?;
    let r = named(&mut b, r, "y");
    b.output("y", OutputKind::Row(d), r)?;
    b.finish()
}

/// Per-row outputs from two stages: `max = max(x)`, `lse = max + log(sum(exp(x - max)))`.
pub fn logsumexp(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("logsumexp", &src("logsumexp"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    let xf = b.widen(x)?;
    let m = b.reduce(ReduceOp::Max, xf)?;
    let m = named(&mut b, m, "max");
    let z = b.binary(BinaryOp::Sub, xf, m)?;
    let e = b.unary(UnaryOp::Exp, z)?;
    let s = b.reduce(ReduceOp::Sum, e)?;
    let s = named(&mut b, s, "sum");
    let l = b.unary(UnaryOp::Log, s)?;
    let lse = b.binary(BinaryOp::Add, m, l)?;
    let lse = named(&mut b, lse, "lse");
    b.output("max", OutputKind::PerRow(DType::F32), m)?;
    b.output("lse", OutputKind::PerRow(DType::F32), lse)?;
    b.finish()
}

/// Softmax lowered by hand: `e = exp(x - max(x)); y = e / sum(e)` (three stages).
pub fn softmax(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("softmax", &src("softmax"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    let xf = b.widen(x)?;
    let m = b.reduce(ReduceOp::Max, xf)?;
    let m = named(&mut b, m, "max");
    let z = b.binary(BinaryOp::Sub, xf, m)?;
    let e = b.unary(UnaryOp::Exp, z)?;
    let e = named(&mut b, e, "e");
    let s = b.reduce(ReduceOp::Sum, e)?;
    let s = named(&mut b, s, "sum");
    let y = b.binary(BinaryOp::Div, e, s)?;
    let y = named(&mut b, y, "y");
    b.output("y", OutputKind::Row(d), y)?;
    b.finish()
}

/// The two largest columns of a row and their values: `argmax`, then `argmax` again with the
/// chosen column masked through the column index (MoE routing's top-k, by hand).
pub fn top2(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("top2", &src("top2"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    let xf = b.widen(x)?;
    let i0 = b.reduce(ReduceOp::ArgMax, xf)?;
    let i0 = named(&mut b, i0, "i0");
    let v0 = b.reduce(ReduceOp::Max, xf)?;
    let c = b.column();
    let hit = b.cmp(CmpOp::Eq, c, i0)?;
    let low = b.f32(f32::NEG_INFINITY);
    let rest = b.select(hit, low, xf)?;
    let rest = named(&mut b, rest, "rest");
    let i1 = b.reduce(ReduceOp::ArgMax, rest)?;
    let i1 = named(&mut b, i1, "i1");
    let v1 = b.reduce(ReduceOp::Max, rest)?;
    b.output("i0", OutputKind::PerRow(DType::I32), i0)?;
    b.output("v0", OutputKind::PerRow(DType::F32), v0)?;
    b.output("i1", OutputKind::PerRow(DType::I32), i1)?;
    b.output("v1", OutputKind::PerRow(DType::F32), v1)?;
    b.finish()
}

/// Every op and dtype path the emitter has, in one uncached kernel: math functions, i32
/// arithmetic on per-row and comptime values, compares, logic, select, casts both ways, an f32
/// broadcast inside a half kernel (narrower vector accesses) and i32 outputs.
pub fn op_zoo(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("op_zoo", &src("op_zoo"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    let w = b.param("w", ParamKind::Bcast(DType::F32))?;
    let pos = b.param("pos", ParamKind::PerRow(DType::I32))?;
    let lim = b.param("lim", ParamKind::Comptime(DType::F32))?;
    let kk = b.param("k", ParamKind::Comptime(DType::I32))?;
    let flag = b.param("flag", ParamKind::Comptime(DType::Bool))?;
    let xf = b.widen(x)?;
    let one = b.f32(1.0);
    let a = b.unary(UnaryOp::Abs, xf)?;
    let a1 = b.binary(BinaryOp::Add, a, one)?;
    let mut acc = b.unary(UnaryOp::Neg, xf)?;
    for u in [UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Erf, UnaryOp::Sin, UnaryOp::Cos] {
        let t = b.unary(u, xf)?;
        acc = b.binary(BinaryOp::Add, acc, t)?;
    }
    for u in [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Rsqrt] {
        let t = b.unary(u, a1)?;
        acc = b.binary(BinaryOp::Sub, acc, t)?;
    }
    let p = b.binary(BinaryOp::Pow, a1, w)?;
    let q = b.binary(BinaryOp::Div, acc, p)?;
    let neg_lim = b.unary(UnaryOp::Neg, lim)?;
    let lo = b.binary(BinaryOp::Max, q, neg_lim)?;
    let clamped = b.binary(BinaryOp::Min, lo, lim)?;
    let clamped = named(&mut b, clamped, "clamped");
    // i32 on per-row and comptime values
    let pk = b.binary(BinaryOp::Mul, pos, kk)?;
    let nk = b.unary(UnaryOp::Neg, kk)?;
    let ak = b.unary(UnaryOp::Abs, nk)?;
    let pd = b.binary(BinaryOp::Div, pk, ak)?;
    let ps = b.binary(BinaryOp::Sub, pd, kk)?;
    let pmin = b.binary(BinaryOp::Min, ps, pos)?;
    let shift = b.binary(BinaryOp::Max, pmin, kk)?;
    let shift = named(&mut b, shift, "shift");
    // f32 -> i32 -> f32 per column
    let xi = b.cast(xf, DType::I32)?;
    let xi = named(&mut b, xi, "xi");
    let big = b.constant(Const::I32(i32::MIN));
    let xs = b.binary(BinaryOp::Add, xi, shift)?;
    let xs = b.binary(BinaryOp::Max, xs, big)?;
    let xs = named(&mut b, xs, "xs");
    let xsf = b.cast(xs, DType::F32)?;
    // compares and logic
    let c_gt = b.cmp(CmpOp::Gt, xf, lim)?;
    let c_le = b.cmp(CmpOp::Le, xi, shift)?;
    let c_lt = b.cmp(CmpOp::Lt, xf, neg_lim)?;
    let c_ge = b.cmp(CmpOp::Ge, xs, big)?;
    let c_eq = b.cmp(CmpOp::Eq, c_gt, c_lt)?;
    let t = b.constant(Const::Bool(true));
    let c_ne = b.cmp(CmpOp::Ne, flag, t)?;
    let not_le = b.unary(UnaryOp::Not, c_le)?;
    let both = b.binary(BinaryOp::And, not_le, c_ge)?;
    let any = b.binary(BinaryOp::Or, both, c_eq)?;
    let pick = b.binary(BinaryOp::Or, any, c_ne)?;
    let pick = named(&mut b, pick, "pick");
    let sel = b.select(pick, clamped, xsf)?;
    let gt_f = b.cast(c_gt, DType::F32)?;
    let y = b.binary(BinaryOp::Add, sel, gt_f)?;
    let y = named(&mut b, y, "y");
    b.output("y", OutputKind::Row(d), y)?;
    b.output("xi", OutputKind::Row(DType::I32), xs)?;
    b.output("shift", OutputKind::PerRow(DType::I32), shift)?;
    b.finish()
}

/// `y = x * 2` with an unused `exp(x)` and an unused broadcast: dead nodes emit nothing.
pub fn dead_code(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("dead_code", &src("dead_code"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    b.param("unused", ParamKind::Bcast(d))?;
    let xf = b.widen(x)?;
    let dead = b.unary(UnaryOp::Exp, xf)?;
    b.name(dead, "dead");
    let two = b.f32(2.0);
    let y = b.binary(BinaryOp::Mul, xf, two)?;
    b.output("y", OutputKind::Row(d), y)?;
    b.finish()
}

/// Only per-row values: no column loop at all.
pub fn per_row_only(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("per_row_only", &src("per_row_only"), d);
    let pos = b.param("pos", ParamKind::PerRow(DType::I32))?;
    let scale = b.param("scale", ParamKind::PerRow(d))?;
    let p = b.cast(pos, DType::F32)?;
    let sf = b.widen(scale)?;
    let y = b.binary(BinaryOp::Mul, p, sf)?;
    b.output("y", OutputKind::PerRow(d), y)?;
    b.finish()
}

/// A comptime argument in the storage dtype (passed by value as its bits).
pub fn comptime_half(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("comptime_half", &src("comptime_half"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    let s = b.param("scale", ParamKind::Comptime(d))?;
    let (xf, sf) = (b.widen(x)?, b.widen(s)?);
    let y = b.binary(BinaryOp::Mul, xf, sf)?;
    b.output("y", OutputKind::Row(d), y)?;
    b.finish()
}

/// `y = x`: loads and stores only.
pub fn copy(d: DType) -> Result<Kernel, BuildError> {
    let mut b = Builder::new("copy", &src("copy"), d);
    let x = b.param("x", ParamKind::Row(d))?;
    b.output("y", OutputKind::Row(d), x)?;
    b.finish()
}
