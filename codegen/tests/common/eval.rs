//! A direct, recursive evaluator of *unlowered* IR (softmax included, no planning, no slots),
//! written from the semantics list in `cpu/mod.rs`, to check that the passes plus the CPU
//! backend compute what the frontend's DAG means. Values are whole rows (`Uniform` values are
//! rows of one element, broadcast on use). Float math is f32, op by op; `exp` and `erf` are
//! the backend's own f32 functions (its "math library", accuracy-tested on their own).
//!
//! Row reductions use the CPU backend's documented-as-unspecified order (8 interleaved lanes,
//! combined pairwise), mirrored here on purpose: the passes never reassociate, so with the
//! same summation order the lowered kernel must reproduce this evaluation *bit for bit*, and
//! the property test can demand exact equality instead of guessing a tolerance. (Summation
//! accuracy itself is checked by the kernel tests against f64 references.)

use half::{bf16, f16};
use kiln_codegen::cpu::math::{erf, exp};
use kiln_codegen::ir::{BinaryOp, CmpOp, Const, DType, Kernel, Op, ParamKind, ReduceOp, RopeStyle, UnaryOp, ValueId};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    F(Vec<f32>),
    I(Vec<i32>),
    B(Vec<bool>),
}

/// One row's inputs, per parameter (in `Kernel::params` order).
#[derive(Clone, Debug)]
pub enum RowIn {
    /// A `Row` or `Bcast` tensor's values for this row, as stored (halves exact in f32).
    F(Vec<f32>),
    I(Vec<i32>),
    /// A per-row or comptime scalar.
    SF(f32),
    SI(i32),
    SB(bool),
}

fn at<T: Copy>(v: &[T], j: usize) -> T {
    if v.len() == 1 {
        v[0]
    } else {
        v[j]
    }
}

fn len2(a: usize, b: usize) -> usize {
    a.max(b)
}

pub struct Eval<'k> {
    k: &'k Kernel,
    ins: Vec<RowIn>,
    memo: HashMap<usize, Val>,
}

impl<'k> Eval<'k> {
    pub fn new(k: &'k Kernel, ins: Vec<RowIn>) -> Self {
        Eval { k, ins, memo: HashMap::new() }
    }

    pub fn value(&mut self, v: ValueId) -> Val {
        if let Some(x) = self.memo.get(&v.index()) {
            return x.clone();
        }
        let r = self.compute(v);
        self.memo.insert(v.index(), r.clone());
        r
    }

    fn f(&mut self, v: ValueId) -> Vec<f32> {
        match self.value(v) {
            Val::F(x) => x,
            other => panic!("{v} is not float: {other:?}"),
        }
    }

    /// Element `j` goes to lane `j % 8` in order; lanes combine as (0+4, 1+5, 2+6, 3+7),
    /// then (a0+a2) + (a1+a3).
    fn sum(&self, x: &[f32]) -> f32 {
        let mut lane = [0.0f32; 8];
        for (j, &v) in x.iter().enumerate() {
            lane[j % 8] += v;
        }
        let a: Vec<f32> = (0..4).map(|l| lane[l] + lane[l + 4]).collect();
        (a[0] + a[2]) + (a[1] + a[3])
    }

    /// Lane-wise like the sum, from -inf, NaNs skipped (only the sign of a zero could differ).
    fn max(&self, x: &[f32]) -> f32 {
        let mut lane = [f32::NEG_INFINITY; 8];
        for (j, &v) in x.iter().enumerate() {
            lane[j % 8] = lane[j % 8].max(v);
        }
        lane.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
    }

    fn compute(&mut self, v: ValueId) -> Val {
        let k = self.k;
        let node = &k.nodes[v.index()];
        match node.op {
            Op::Param(p) => match &self.ins[p as usize] {
                RowIn::F(x) => Val::F(x.clone()),
                RowIn::I(x) => Val::I(x.clone()),
                RowIn::SF(x) => Val::F(vec![*x]),
                RowIn::SI(x) => Val::I(vec![*x]),
                RowIn::SB(x) => Val::B(vec![*x]),
            },
            Op::Const(Const::F32(x)) => Val::F(vec![x]),
            Op::Const(Const::I32(x)) => Val::I(vec![x]),
            Op::Const(Const::Bool(x)) => Val::B(vec![x]),
            Op::Unary(u, a) => match self.value(a) {
                Val::F(x) => Val::F(x.iter().map(|&x| unary_f(u, x)).collect()),
                Val::I(x) => Val::I(
                    x.iter().map(|&x| if u == UnaryOp::Neg { x.wrapping_neg() } else { x.wrapping_abs() }).collect(),
                ),
                Val::B(x) => Val::B(x.iter().map(|&x| !x).collect()),
            },
            Op::Binary(b, x, y) => match (self.value(x), self.value(y)) {
                (Val::F(x), Val::F(y)) => {
                    let n = len2(x.len(), y.len());
                    Val::F((0..n).map(|j| binary_f(b, at(&x, j), at(&y, j))).collect())
                }
                (Val::I(x), Val::I(y)) => {
                    let n = len2(x.len(), y.len());
                    Val::I((0..n).map(|j| binary_i(b, at(&x, j), at(&y, j))).collect())
                }
                (Val::B(x), Val::B(y)) => {
                    let n = len2(x.len(), y.len());
                    let f = |p: bool, q: bool| if b == BinaryOp::And { p && q } else { p || q };
                    Val::B((0..n).map(|j| f(at(&x, j), at(&y, j))).collect())
                }
                other => panic!("binary on {other:?}"),
            },
            Op::Cmp(c, x, y) => {
                let (x, y) = (self.value(x), self.value(y));
                let r = match (&x, &y) {
                    (Val::F(x), Val::F(y)) => (0..len2(x.len(), y.len())).map(|j| cmp(c, at(x, j), at(y, j))).collect(),
                    (Val::I(x), Val::I(y)) => (0..len2(x.len(), y.len())).map(|j| cmp(c, at(x, j), at(y, j))).collect(),
                    (Val::B(x), Val::B(y)) => (0..len2(x.len(), y.len())).map(|j| cmp(c, at(x, j), at(y, j))).collect(),
                    other => panic!("cmp on {other:?}"),
                };
                Val::B(r)
            }
            Op::Select(c, a, b) => {
                let Val::B(c) = self.value(c) else { panic!("select condition") };
                let (a, b) = (self.value(a), self.value(b));
                match (a, b) {
                    (Val::F(a), Val::F(b)) => Val::F(pick(&c, &a, &b)),
                    (Val::I(a), Val::I(b)) => Val::I(pick(&c, &a, &b)),
                    (Val::B(a), Val::B(b)) => Val::B(pick(&c, &a, &b)),
                    other => panic!("select on {other:?}"),
                }
            }
            Op::Cast(a, to) => {
                let from = k.ty(a).dtype;
                let as_f: Vec<f32> = match self.value(a) {
                    Val::F(x) => x,
                    Val::I(x) => x.iter().map(|&x| x as f32).collect(),
                    Val::B(x) => x.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
                };
                match to {
                    DType::I32 => match self.value(a) {
                        Val::I(x) => Val::I(x),
                        Val::B(x) => Val::I(x.iter().map(|&x| x as i32).collect()),
                        Val::F(x) => Val::I(x.iter().map(|&x| trunc_sat(x)).collect()),
                    },
                    DType::F16 if from != DType::F16 => {
                        Val::F(as_f.iter().map(|&x| f16::from_f32(x).to_f32()).collect())
                    }
                    DType::BF16 if from != DType::BF16 => {
                        Val::F(as_f.iter().map(|&x| bf16::from_f32(x).to_f32()).collect())
                    }
                    _ => Val::F(as_f),
                }
            }
            Op::Reduce(ReduceOp::ArgMax, a) => {
                // The first column of the largest value; NaNs rank as -inf (none wins then: 0).
                let x: Vec<f32> = self.f(a).iter().map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v }).collect();
                let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                Val::I(vec![x.iter().position(|&v| v == m).unwrap_or(0) as i32])
            }
            Op::Column => {
                // As wide as the row's tensors.
                let w = self.ins.iter().map(|i| match i {
                    RowIn::F(x) => x.len(),
                    RowIn::I(x) => x.len(),
                    _ => 1,
                });
                Val::I((0..w.max().unwrap_or(1) as i32).collect())
            }
            Op::Reduce(r, a) => {
                let x = self.f(a);
                let w = x.len() as f32;
                Val::F(vec![match r {
                    ReduceOp::Sum => self.sum(&x),
                    ReduceOp::Mean => self.sum(&x) / w,
                    ReduceOp::Max => self.max(&x),
                    ReduceOp::ArgMax => unreachable!("matched above"),
                }])
            }
            Op::Softmax(a) => {
                let x = self.f(a);
                let m = self.max(&x);
                let e: Vec<f32> = x.iter().map(|&v| exp(v - m)).collect();
                let s = self.sum(&e);
                Val::F(e.iter().map(|&v| v / s).collect())
            }
            Op::Rope { x, pos, theta, head_dim, style, scaling } => {
                let xs = self.f(x);
                let scalar_f = |e: &mut Self, v: ValueId| e.f(v)[0];
                let Val::I(p) = self.value(pos) else { panic!("pos") };
                let Val::I(hd) = self.value(head_dim) else { panic!("head_dim") };
                let th = scalar_f(self, theta);
                let sc = scaling.map(|s| {
                    [
                        scalar_f(self, s.factor),
                        scalar_f(self, s.low_freq_factor),
                        scalar_f(self, s.high_freq_factor),
                        scalar_f(self, s.original_max_position),
                    ]
                });
                Val::F(rope_row(&xs, p[0], th, hd[0] as usize, style, sc))
            }
            Op::RopeTable { x, pos, head_dim, style, table } => {
                let RowIn::F(t) = &self.ins[table as usize] else { panic!("rope table") };
                let t = t.clone();
                let xs = self.f(x);
                let Val::I(p) = self.value(pos) else { panic!("pos") };
                let Val::I(hd) = self.value(head_dim) else { panic!("head_dim") };
                let step = if style == RopeStyle::HalfSplit { 1 } else { 2 };
                Val::F(rope_row_with(&xs, p[0], hd[0] as usize, style, |i| t[step * i]))
            }
        }
    }
}

fn pick<T: Copy>(c: &[bool], a: &[T], b: &[T]) -> Vec<T> {
    let n = c.len().max(a.len()).max(b.len());
    (0..n).map(|j| if at(c, j) { at(a, j) } else { at(b, j) }).collect()
}

fn trunc_sat(x: f32) -> i32 {
    if x.is_nan() {
        0
    } else if x >= 2147483648.0 {
        i32::MAX
    } else if x <= -2147483648.0 {
        i32::MIN
    } else {
        x.trunc() as i32
    }
}

fn unary_f(u: UnaryOp, x: f32) -> f32 {
    match u {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => exp(x),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + exp(-x)),
        UnaryOp::Erf => erf(x),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Not => panic!("not on a float"),
    }
}

fn binary_f(b: BinaryOp, x: f32, y: f32) -> f32 {
    match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Min => x.min(y),
        BinaryOp::Max => x.max(y),
        BinaryOp::Pow => x.powf(y),
        BinaryOp::And | BinaryOp::Or => panic!("logic op on floats"),
    }
}

fn binary_i(b: BinaryOp, x: i32, y: i32) -> i32 {
    match b {
        BinaryOp::Add => x.wrapping_add(y),
        BinaryOp::Sub => x.wrapping_sub(y),
        BinaryOp::Mul => x.wrapping_mul(y),
        BinaryOp::Div => {
            if y == 0 {
                0
            } else {
                x.wrapping_div(y)
            }
        }
        BinaryOp::Min => x.min(y),
        BinaryOp::Max => x.max(y),
        BinaryOp::Pow | BinaryOp::And | BinaryOp::Or => panic!("{b:?} on i32"),
    }
}

fn cmp<T: PartialOrd>(c: CmpOp, x: T, y: T) -> bool {
    match c {
        CmpOp::Lt => x < y,
        CmpOp::Le => x <= y,
        CmpOp::Gt => x > y,
        CmpOp::Ge => x >= y,
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
    }
}

/// The RoPE rules of `cpu/mod.rs`, column by column, frequencies and angles in f32.
pub fn rope_row(x: &[f32], pos: i32, theta: f32, hd: usize, style: RopeStyle, scaling: Option<[f32; 4]>) -> Vec<f32> {
    rope_row_with(x, pos, hd, style, |i| {
        let mut f = 1.0f32 / theta.powf((2 * i) as f32 / hd as f32);
        if let Some([factor, low, high, orig]) = scaling {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < orig / high {
            } else if wavelen > orig / low {
                f /= factor;
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        f
    })
}

/// RoPE of one row with pair `i` at inverse frequency `inv_freq(i)`.
pub fn rope_row_with(x: &[f32], pos: i32, hd: usize, style: RopeStyle, inv_freq: impl Fn(usize) -> f32) -> Vec<f32> {
    (0..x.len())
        .map(|c| {
            let j = c % hd;
            let (i, partner, sign) = match style {
                RopeStyle::HalfSplit => {
                    let half = hd / 2;
                    if j < half {
                        (j, c + half, -1.0f32)
                    } else {
                        (j - half, c - half, 1.0)
                    }
                }
                RopeStyle::Interleaved => {
                    if c % 2 == 0 {
                        (j / 2, c + 1, -1.0)
                    } else {
                        (j / 2, c - 1, 1.0)
                    }
                }
            };
            let angle = pos as f32 * inv_freq(i);
            let (s, co) = angle.sin_cos();
            if sign < 0.0 {
                x[c] * co - x[partner] * s
            } else {
                x[c] * co + x[partner] * s
            }
        })
        .collect()
}

/// The inputs of row `r`, from per-parameter host data (`Row` tensors given as rows).
pub fn row_inputs(k: &Kernel, data: &[ParamData], r: usize) -> Vec<RowIn> {
    k.params
        .iter()
        .zip(data)
        .map(|(p, d)| match (p.kind, d) {
            (ParamKind::Row(_), ParamData::RowsF(rows)) => RowIn::F(rows[r].clone()),
            (ParamKind::Row(_), ParamData::RowsI(rows)) => RowIn::I(rows[r].clone()),
            (ParamKind::Bcast(_), ParamData::VecF(v)) => RowIn::F(v.clone()),
            (ParamKind::Bcast(_), ParamData::VecI(v)) => RowIn::I(v.clone()),
            (ParamKind::PerRow(_), ParamData::VecF(v)) => RowIn::SF(v[r]),
            (ParamKind::PerRow(_), ParamData::VecI(v)) => RowIn::SI(v[r]),
            (ParamKind::Comptime(_), ParamData::ScalarF(x)) => RowIn::SF(*x),
            (ParamKind::Comptime(_), ParamData::ScalarI(x)) => RowIn::SI(*x),
            (ParamKind::Comptime(_), ParamData::ScalarB(x)) => RowIn::SB(*x),
            (kind, d) => panic!("param `{}` ({kind:?}) given {d:?}", p.name),
        })
        .collect()
}

/// A parameter's values as the evaluator reads them (halves already exact in f32).
#[derive(Clone, Debug)]
pub enum ParamData {
    RowsF(Vec<Vec<f32>>),
    RowsI(Vec<Vec<i32>>),
    VecF(Vec<f32>),
    VecI(Vec<i32>),
    ScalarF(f32),
    ScalarI(i32),
    ScalarB(bool),
}
