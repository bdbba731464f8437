//! The test kernels, one builder function each, written as the `#[fused]` frontend would
//! lower their Rust bodies: half loads are widened to f32 first, outputs cast back.

use kiln_codegen::builder::Builder;
use kiln_codegen::ir::{
    BinaryOp, CmpOp, DType, Kernel, Llama3Scaling, OutputKind, ParamKind, ReduceOp, RopeStyle, UnaryOp, ValueId,
};

pub const SRC: &str = "codegen/tests/common/kernels.rs";

fn load(b: &mut Builder, name: &str, kind: ParamKind) -> ValueId {
    let v = b.param(name, kind).unwrap();
    b.widen(v).unwrap()
}

fn bin(b: &mut Builder, op: BinaryOp, x: ValueId, y: ValueId) -> ValueId {
    b.binary(op, x, y).unwrap()
}

fn un(b: &mut Builder, op: UnaryOp, x: ValueId) -> ValueId {
    b.unary(op, x).unwrap()
}

/// `y = x * rsqrt(mean(x*x) + eps) * w`
pub fn rms_norm(d: DType) -> Kernel {
    let mut b = Builder::new("rms_norm", SRC, d);
    let x = load(&mut b, "x", ParamKind::Row(d));
    let w = load(&mut b, "w", ParamKind::Bcast(d));
    let eps = b.param("eps", ParamKind::Comptime(DType::F32)).unwrap();
    let sq = bin(&mut b, BinaryOp::Mul, x, x);
    let ms = b.reduce(ReduceOp::Mean, sq).unwrap();
    let t = bin(&mut b, BinaryOp::Add, ms, eps);
    let inv = un(&mut b, UnaryOp::Rsqrt, t);
    b.name(inv, "inv");
    let n = bin(&mut b, BinaryOp::Mul, x, inv);
    let y = bin(&mut b, BinaryOp::Mul, n, w);
    b.name(y, "y");
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// `h = x + residual; y = h * rsqrt(mean(h*h) + eps) * w` with outputs `h_out` and `y`.
pub fn add_rms_norm(d: DType) -> Kernel {
    let mut b = Builder::new("add_rms_norm", SRC, d);
    let x = load(&mut b, "x", ParamKind::Row(d));
    let r = load(&mut b, "residual", ParamKind::Row(d));
    let w = load(&mut b, "w", ParamKind::Bcast(d));
    let eps = b.param("eps", ParamKind::Comptime(DType::F32)).unwrap();
    let h = bin(&mut b, BinaryOp::Add, x, r);
    b.name(h, "h");
    let sq = bin(&mut b, BinaryOp::Mul, h, h);
    let ms = b.reduce(ReduceOp::Mean, sq).unwrap();
    let t = bin(&mut b, BinaryOp::Add, ms, eps);
    let inv = un(&mut b, UnaryOp::Rsqrt, t);
    b.name(inv, "inv");
    let n = bin(&mut b, BinaryOp::Mul, h, inv);
    let y = bin(&mut b, BinaryOp::Mul, n, w);
    b.output("h_out", OutputKind::Row(d), h).unwrap();
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// `mu = mean(x); xc = x - mu; y = xc * rsqrt(mean(xc*xc) + eps) * w + bias`
pub fn layer_norm(d: DType) -> Kernel {
    let mut b = Builder::new("layer_norm", SRC, d);
    let x = load(&mut b, "x", ParamKind::Row(d));
    let w = load(&mut b, "w", ParamKind::Bcast(d));
    let bias = load(&mut b, "bias", ParamKind::Bcast(d));
    let eps = b.param("eps", ParamKind::Comptime(DType::F32)).unwrap();
    let mu = b.reduce(ReduceOp::Mean, x).unwrap();
    b.name(mu, "mu");
    let xc = bin(&mut b, BinaryOp::Sub, x, mu);
    b.name(xc, "xc");
    let sq = bin(&mut b, BinaryOp::Mul, xc, xc);
    let var = b.reduce(ReduceOp::Mean, sq).unwrap();
    b.name(var, "var");
    let t = bin(&mut b, BinaryOp::Add, var, eps);
    let inv = un(&mut b, UnaryOp::Rsqrt, t);
    let n = bin(&mut b, BinaryOp::Mul, xc, inv);
    let s = bin(&mut b, BinaryOp::Mul, n, w);
    let y = bin(&mut b, BinaryOp::Add, s, bias);
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// `y = softmax(x)`
pub fn softmax(d: DType) -> Kernel {
    let mut b = Builder::new("softmax", SRC, d);
    let x = load(&mut b, "x", ParamKind::Row(d));
    let y = b.softmax(x).unwrap();
    b.name(y, "probs");
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// `y = gate * sigmoid(gate) * up`
pub fn silu_mul(d: DType) -> Kernel {
    let mut b = Builder::new("silu_mul", SRC, d);
    let g = load(&mut b, "gate", ParamKind::Row(d));
    let u = load(&mut b, "up", ParamKind::Row(d));
    let s = un(&mut b, UnaryOp::Sigmoid, g);
    let gs = bin(&mut b, BinaryOp::Mul, g, s);
    let y = bin(&mut b, BinaryOp::Mul, gs, u);
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// `y = 0.5 * g * (1 + tanh(sqrt(2/pi) * (g + 0.044715 * g^3))) * up`; `sqrt(2/pi)` is
/// written as constant arithmetic, for `const_fold` to fold.
pub fn gelu_tanh_mul(d: DType) -> Kernel {
    let mut b = Builder::new("gelu_tanh_mul", SRC, d);
    let g = load(&mut b, "gate", ParamKind::Row(d));
    let u = load(&mut b, "up", ParamKind::Row(d));
    let two = b.f32(2.0);
    let pi = b.f32(std::f32::consts::PI);
    let ratio = bin(&mut b, BinaryOp::Div, two, pi);
    let k = un(&mut b, UnaryOp::Sqrt, ratio);
    let c = b.f32(0.044715);
    let g2 = bin(&mut b, BinaryOp::Mul, g, g);
    let g3 = bin(&mut b, BinaryOp::Mul, g2, g);
    let cg3 = bin(&mut b, BinaryOp::Mul, c, g3);
    let inner = bin(&mut b, BinaryOp::Add, g, cg3);
    let z = bin(&mut b, BinaryOp::Mul, k, inner);
    let t = un(&mut b, UnaryOp::Tanh, z);
    let one = b.f32(1.0);
    let onep = bin(&mut b, BinaryOp::Add, one, t);
    let half = b.f32(0.5);
    let hg = bin(&mut b, BinaryOp::Mul, half, g);
    let gelu = bin(&mut b, BinaryOp::Mul, hg, onep);
    b.name(gelu, "gelu");
    let y = bin(&mut b, BinaryOp::Mul, gelu, u);
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// The Llama-3 scaling used by the tests: factor 8, low 1, high 4, original context 8192.
pub const LLAMA3: [f32; 4] = [8.0, 1.0, 4.0, 8192.0];

/// `y = rope(x, pos, theta, head_dim)` with `head_dim` and `theta` comptime, `pos` per row,
/// optionally with comptime Llama-3 scaling.
pub fn rope(d: DType, style: RopeStyle, llama3: bool) -> Kernel {
    let name = match (style, llama3) {
        (RopeStyle::HalfSplit, false) => "rope_half",
        (RopeStyle::Interleaved, false) => "rope_interleaved",
        (RopeStyle::HalfSplit, true) => "rope_llama3",
        (RopeStyle::Interleaved, true) => "rope_interleaved_llama3",
    };
    let mut b = Builder::new(name, SRC, d);
    let x = b.param("x", ParamKind::Row(d)).unwrap();
    let pos = b.param("pos", ParamKind::PerRow(DType::I32)).unwrap();
    let theta = b.param("theta", ParamKind::Comptime(DType::F32)).unwrap();
    let hd = b.param("head_dim", ParamKind::Comptime(DType::I32)).unwrap();
    let scaling = llama3.then(|| {
        let mut p = |n: &str| b.param(n, ParamKind::Comptime(DType::F32)).unwrap();
        Llama3Scaling {
            factor: p("factor"),
            low_freq_factor: p("low_freq_factor"),
            high_freq_factor: p("high_freq_factor"),
            original_max_position: p("original_max_position"),
        }
    });
    let x = b.widen(x).unwrap();
    let y = b.rope(x, pos, theta, hd, style, scaling).unwrap();
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// `y = rope(x)` with the inverse frequencies from a `Bcast<f32>` table.
pub fn rope_table(d: DType, style: RopeStyle) -> Kernel {
    let mut b = Builder::new("rope_table", SRC, d);
    let x = b.param("x", ParamKind::Row(d)).unwrap();
    let pos = b.param("pos", ParamKind::PerRow(DType::I32)).unwrap();
    b.param("inv_freq", ParamKind::Bcast(DType::F32)).unwrap();
    let hd = b.param("head_dim", ParamKind::Comptime(DType::I32)).unwrap();
    let x = b.widen(x).unwrap();
    let y = b.rope_table(x, pos, 2, hd, style).unwrap();
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// Per-row output: `lse = m + log(sum(exp(s*x - m)))`, `m = max(s*x)`, `s` a per-row scale.
pub fn logsumexp(d: DType) -> Kernel {
    let mut b = Builder::new("logsumexp", SRC, d);
    let x = load(&mut b, "x", ParamKind::Row(d));
    let s = b.param("scale", ParamKind::PerRow(DType::F32)).unwrap();
    let xs = bin(&mut b, BinaryOp::Mul, x, s);
    let m = b.reduce(ReduceOp::Max, xs).unwrap();
    b.name(m, "m");
    let dlt = bin(&mut b, BinaryOp::Sub, xs, m);
    let e = un(&mut b, UnaryOp::Exp, dlt);
    let sum = b.reduce(ReduceOp::Sum, e).unwrap();
    let l = un(&mut b, UnaryOp::Log, sum);
    let lse = bin(&mut b, BinaryOp::Add, m, l);
    b.output("lse", OutputKind::PerRow(DType::F32), lse).unwrap();
    b.finish().unwrap()
}

/// `y = x > thr ? x : 0.01 * x` (leaky relu) and `frac = mean(x >= w ? 1 : 0)` per row.
pub fn select_cmp(d: DType) -> Kernel {
    let mut b = Builder::new("select_cmp", SRC, d);
    let x = load(&mut b, "x", ParamKind::Row(d));
    let w = load(&mut b, "w", ParamKind::Bcast(d));
    let thr = b.param("thr", ParamKind::Comptime(DType::F32)).unwrap();
    let pos = b.cmp(CmpOp::Gt, x, thr).unwrap();
    let slope = b.f32(0.01);
    let leak = bin(&mut b, BinaryOp::Mul, slope, x);
    let y = b.select(pos, x, leak).unwrap();
    let ge = b.cmp(CmpOp::Ge, x, w).unwrap();
    let gef = b.cast(ge, DType::F32).unwrap();
    let frac = b.reduce(ReduceOp::Mean, gef).unwrap();
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.output("frac", OutputKind::PerRow(DType::F32), frac).unwrap();
    b.finish().unwrap()
}

/// `y = pow(|x| + 0.5, w)`
pub fn pow(d: DType) -> Kernel {
    let mut b = Builder::new("pow", SRC, d);
    let x = load(&mut b, "x", ParamKind::Row(d));
    let w = load(&mut b, "w", ParamKind::Bcast(d));
    let a = un(&mut b, UnaryOp::Abs, x);
    let h = b.f32(0.5);
    let base = bin(&mut b, BinaryOp::Add, a, h);
    let y = bin(&mut b, BinaryOp::Pow, base, w);
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// The float unary ops (all but `Not`).
pub const FLOAT_UNARY: [UnaryOp; 11] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Erf,
    UnaryOp::Sin,
    UnaryOp::Cos,
];

/// `y = op(x)` for one float unary op.
pub fn unary(d: DType, op: UnaryOp) -> Kernel {
    let mut b = Builder::new(&format!("unary_{op:?}").to_lowercase(), SRC, d);
    let x = load(&mut b, "x", ParamKind::Row(d));
    let y = un(&mut b, op, x);
    b.output("y", OutputKind::Row(d), y).unwrap();
    b.finish().unwrap()
}

/// i32 and bool ops: `q = min(max(3*i - j, -p), |i|) / 2` (i32 row),
/// `f = (float)(!(i > j) || p == 0) * 0.5 + (float)i` (storage row).
pub fn int_ops(d: DType) -> Kernel {
    let mut b = Builder::new("int_ops", SRC, d);
    let i = b.param("i", ParamKind::Row(DType::I32)).unwrap();
    let j = b.param("j", ParamKind::Bcast(DType::I32)).unwrap();
    let p = b.param("p", ParamKind::PerRow(DType::I32)).unwrap();
    let three = b.constant(kiln_codegen::ir::Const::I32(3));
    let two = b.constant(kiln_codegen::ir::Const::I32(2));
    let zero = b.constant(kiln_codegen::ir::Const::I32(0));
    let i3 = bin(&mut b, BinaryOp::Mul, three, i);
    let a = bin(&mut b, BinaryOp::Sub, i3, j);
    let np = un(&mut b, UnaryOp::Neg, p);
    let mx = bin(&mut b, BinaryOp::Max, a, np);
    let ai = un(&mut b, UnaryOp::Abs, i);
    let mn = bin(&mut b, BinaryOp::Min, mx, ai);
    let q = bin(&mut b, BinaryOp::Div, mn, two);
    let gt = b.cmp(CmpOp::Gt, i, j).unwrap();
    let ngt = un(&mut b, UnaryOp::Not, gt);
    let pz = b.cmp(CmpOp::Eq, p, zero).unwrap();
    let or = bin(&mut b, BinaryOp::Or, ngt, pz);
    let orf = b.cast(or, DType::F32).unwrap();
    let h = b.f32(0.5);
    let half = bin(&mut b, BinaryOp::Mul, orf, h);
    let fi = b.cast(i, DType::F32).unwrap();
    let f = bin(&mut b, BinaryOp::Add, half, fi);
    b.output("q", OutputKind::Row(DType::I32), q).unwrap();
    b.output("f", OutputKind::Row(d), f).unwrap();
    b.finish().unwrap()
}
