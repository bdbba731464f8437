//! Running the nodes of one row: each step of the [`Plan`] evaluates one node over the whole
//! row (an `Elem` node into its slot) or once (a `Uniform` node into the scalar table), then
//! the row's outputs are stored.
//!
//! A [`Worker`] owns the buffers (allocated once, reused for every row it runs); a [`Ctx`]
//! holds what all workers of a call share read-only. Failures here are either a RoPE
//! `head_dim` that does not fit the row (a runtime value) or an internal inconsistency
//! between the plan and the kernel, reported as [`CpuError::Internal`] rather than a panic.

use super::args::{CpuIn, CpuOut, CpuScalar};
use super::plan::{Loc, Plan};
use super::rope::{self, Freqs, Llama3, RopeArgs, RopeCache};
use super::vector::{self, Src};
use super::{math, CpuError};
use crate::ir::{Const, DType, Kernel, Op, ValueId};
use half::{bf16, f16};

/// A parameter as the row loop reads it.
pub(crate) enum In<'a> {
    RowF32(&'a [f32], usize),
    RowI32(&'a [i32], usize),
    RowF16(&'a [f16], usize),
    RowBF16(&'a [bf16], usize),
    RowE4M3(&'a [u8], usize),
    RowI8(&'a [i8], usize),
    /// A `Bcast` float tensor, widened to f32 (borrowed as is when it already was f32).
    BcastF32(&'a [f32]),
    BcastI32(&'a [i32]),
    PerRow(CpuIn<'a>),
    /// A comptime value (a half dtype's value already rounded to it).
    Scalar(CpuScalar),
}

fn row_of<T>(d: &[T], stride: usize, r: usize, width: usize) -> Option<&[T]> {
    let start = r.checked_mul(stride)?;
    d.get(start..start.checked_add(width)?)
}

/// What every worker of one call shares.
pub(crate) struct Ctx<'a> {
    pub k: &'a Kernel,
    pub plan: &'a Plan,
    pub ins: Vec<In<'a>>,
    /// Per param: the gather index (`PerRow<i32>` data) of a gathered `Row` param.
    pub gathers: Vec<Option<&'a [i32]>>,
    /// Per output: the scatter index of a scattered `Row` output.
    pub scatters: Vec<Option<&'a [i32]>>,
    pub width: usize,
    /// The scalar table with every invariant node already computed.
    pub uni0: Vec<CpuScalar>,
}

impl<'a> Ctx<'a> {
    pub fn new(k: &'a Kernel, plan: &'a Plan, ins: Vec<In<'a>>, width: usize) -> Result<Ctx<'a>, CpuError> {
        let index_data = |i: Option<u32>| match i.and_then(|i| ins.get(i as usize)) {
            Some(In::PerRow(CpuIn::I32(d))) => Some(*d),
            _ => None,
        };
        let gathers = k.params.iter().map(|p| index_data(p.index)).collect();
        let scatters = k.outputs.iter().map(|o| index_data(o.index)).collect();
        let mut ctx = Ctx { k, plan, ins, gathers, scatters, width, uni0: vec![CpuScalar::F32(0.0); k.nodes.len()] };
        for &i in &plan.invariant {
            let env = Env { ctx: &ctx, f: &[], i: &[], b: &[], uni: &ctx.uni0, row: 0 };
            let v = env.scalar_op(i)?;
            ctx.uni0[i] = v;
        }
        Ok(ctx)
    }
}

impl Ctx<'_> {
    /// The tensor row of param `p` that problem row `r` reads (its gather index, if any;
    /// `validate` checked every index against the tensor).
    pub fn src_row(&self, p: usize, r: usize) -> usize {
        match self.gathers.get(p).copied().flatten() {
            Some(idx) => idx.get(r).map_or(usize::MAX, |&i| i as usize),
            None => r,
        }
    }
}

/// Borrowed view of a worker's values while one node is computed.
struct Env<'s> {
    ctx: &'s Ctx<'s>,
    f: &'s [Vec<f32>],
    i: &'s [Vec<i32>],
    b: &'s [Vec<bool>],
    uni: &'s [CpuScalar],
    row: usize,
}

fn internal(node: usize, what: &str) -> CpuError {
    CpuError::Internal { node: ValueId(node as u32), what: what.to_string() }
}

impl<'s> Env<'s> {
    fn scalar(&self, v: ValueId) -> Result<CpuScalar, CpuError> {
        self.uni.get(v.index()).copied().ok_or_else(|| internal(v.index(), "scalar out of range"))
    }

    fn fsrc(&self, v: ValueId) -> Result<Src<'s, f32>, CpuError> {
        let w = self.ctx.width;
        let bad = || internal(v.index(), "expected a float value");
        Ok(match self.ctx.plan.loc[v.index()] {
            Loc::Uniform => match self.scalar(v)? {
                CpuScalar::F32(x) => Src::S(x),
                _ => return Err(bad()),
            },
            Loc::F(s) => Src::V(self.f.get(s).ok_or_else(bad)?),
            Loc::Input(p) => match self.ctx.ins.get(p) {
                Some(In::RowF32(d, st)) => Src::V(row_of(d, *st, self.ctx.src_row(p, self.row), w).ok_or_else(bad)?),
                Some(In::BcastF32(d)) => Src::V(d),
                _ => return Err(bad()),
            },
            Loc::I(_) | Loc::B(_) => return Err(bad()),
        })
    }

    fn isrc(&self, v: ValueId) -> Result<Src<'s, i32>, CpuError> {
        let w = self.ctx.width;
        let bad = || internal(v.index(), "expected an i32 value");
        Ok(match self.ctx.plan.loc[v.index()] {
            Loc::Uniform => match self.scalar(v)? {
                CpuScalar::I32(x) => Src::S(x),
                _ => return Err(bad()),
            },
            Loc::I(s) => Src::V(self.i.get(s).ok_or_else(bad)?),
            Loc::Input(p) => match self.ctx.ins.get(p) {
                Some(In::RowI32(d, st)) => Src::V(row_of(d, *st, self.ctx.src_row(p, self.row), w).ok_or_else(bad)?),
                Some(In::BcastI32(d)) => Src::V(d),
                _ => return Err(bad()),
            },
            Loc::F(_) | Loc::B(_) => return Err(bad()),
        })
    }

    fn bsrc(&self, v: ValueId) -> Result<Src<'s, bool>, CpuError> {
        let bad = || internal(v.index(), "expected a bool value");
        Ok(match self.ctx.plan.loc[v.index()] {
            Loc::Uniform => match self.scalar(v)? {
                CpuScalar::Bool(x) => Src::S(x),
                _ => return Err(bad()),
            },
            Loc::B(s) => Src::V(self.b.get(s).ok_or_else(bad)?),
            _ => return Err(bad()),
        })
    }

    fn dtype(&self, v: ValueId) -> DType {
        self.ctx.k.ty(v).dtype
    }

    /// A `Uniform` node's value for this row.
    fn scalar_op(&self, i: usize) -> Result<CpuScalar, CpuError> {
        let node = &self.ctx.k.nodes[i];
        let bad = || internal(i, "op does not fit its operand types");
        let v = match node.op {
            Op::Const(Const::F32(x)) => CpuScalar::F32(x),
            Op::Const(Const::I32(x)) => CpuScalar::I32(x),
            Op::Const(Const::Bool(x)) => CpuScalar::Bool(x),
            Op::Param(p) => match self.ctx.ins.get(p as usize) {
                Some(In::Scalar(s)) => *s,
                Some(In::PerRow(d)) => {
                    let r = self.row;
                    let got = match d {
                        CpuIn::F32(d) => d.get(r).map(|&x| CpuScalar::F32(x)),
                        CpuIn::F16(d) => d.get(r).map(|x| CpuScalar::F32(x.to_f32())),
                        CpuIn::BF16(d) => d.get(r).map(|x| CpuScalar::F32(x.to_f32())),
                        CpuIn::I32(d) => d.get(r).map(|&x| CpuScalar::I32(x)),
                        CpuIn::E4M3(d) => d.get(r).map(|&x| CpuScalar::F32(math::e4m3_to_f32(x))),
                        CpuIn::I8(d) => d.get(r).map(|&x| CpuScalar::F32(x as f32)),
                    };
                    got.ok_or_else(|| internal(i, "per-row parameter shorter than rows"))?
                }
                _ => return Err(bad()),
            },
            Op::Unary(u, a) => math::unary(u, self.scalar(a)?).ok_or_else(bad)?,
            Op::Binary(b, x, y) => math::binary(b, self.scalar(x)?, self.scalar(y)?).ok_or_else(bad)?,
            Op::Cmp(c, x, y) => CpuScalar::Bool(math::cmp(c, self.scalar(x)?, self.scalar(y)?).ok_or_else(bad)?),
            Op::Select(c, a, b) => math::select(self.scalar(c)?, self.scalar(a)?, self.scalar(b)?).ok_or_else(bad)?,
            Op::Cast(a, to) => math::cast(self.scalar(a)?, self.dtype(a), to).ok_or_else(bad)?,
            Op::Reduce(r, a) => vector::reduce(r, self.fsrc(a)?, self.ctx.width),
            Op::Rope { .. } | Op::RopeTable { .. } | Op::Softmax(_) | Op::Column => return Err(bad()),
        };
        Ok(v)
    }

    fn f32_of(&self, v: ValueId) -> Result<f32, CpuError> {
        match self.scalar(v)? {
            CpuScalar::F32(x) => Ok(x),
            _ => Err(internal(v.index(), "expected an f32 scalar")),
        }
    }

    fn i32_of(&self, v: ValueId) -> Result<i32, CpuError> {
        match self.scalar(v)? {
            CpuScalar::I32(x) => Ok(x),
            _ => Err(internal(v.index(), "expected an i32 scalar")),
        }
    }
}

/// Scratch space a step may need besides its destination.
struct Scratch<'w> {
    h16: &'w mut Vec<f16>,
    rope: &'w mut RopeCache,
}

/// One thread's buffers: slot arenas, the scalar table, scratch.
pub(crate) struct Worker {
    f: Vec<Vec<f32>>,
    i: Vec<Vec<i32>>,
    b: Vec<Vec<bool>>,
    uni: Vec<CpuScalar>,
    h16: Vec<f16>,
    rope: RopeCache,
}

impl Worker {
    pub fn new(ctx: &Ctx<'_>) -> Worker {
        let [nf, ni, nb] = ctx.plan.slots;
        let w = ctx.width;
        Worker {
            f: vec![vec![0.0; w]; nf],
            i: vec![vec![0; w]; ni],
            b: vec![vec![false; w]; nb],
            uni: ctx.uni0.clone(),
            h16: Vec::with_capacity(w),
            rope: RopeCache::default(),
        }
    }

    /// Evaluate every per-row node for row `r`.
    pub fn row(&mut self, ctx: &Ctx<'_>, r: usize) -> Result<(), CpuError> {
        for &i in &ctx.plan.steps {
            self.step(ctx, r, i)?;
        }
        Ok(())
    }

    fn step(&mut self, ctx: &Ctx<'_>, r: usize, i: usize) -> Result<(), CpuError> {
        let Worker { f, i: iv, b, uni, h16, rope } = self;
        let scratch = Scratch { h16, rope };
        match ctx.plan.loc[i] {
            Loc::Uniform => {
                let v = Env { ctx, f, i: iv, b, uni, row: r }.scalar_op(i)?;
                uni[i] = v;
                Ok(())
            }
            Loc::F(s) => {
                let mut dst = std::mem::take(&mut f[s]);
                let res = eval_f(&Env { ctx, f, i: iv, b, uni, row: r }, i, &mut dst, scratch);
                f[s] = dst;
                res
            }
            Loc::I(s) => {
                let mut dst = std::mem::take(&mut iv[s]);
                let res = eval_i(&Env { ctx, f, i: iv, b, uni, row: r }, i, &mut dst);
                iv[s] = dst;
                res
            }
            Loc::B(s) => {
                let mut dst = std::mem::take(&mut b[s]);
                let res = eval_b(&Env { ctx, f, i: iv, b, uni, row: r }, i, &mut dst);
                b[s] = dst;
                res
            }
            Loc::Input(_) => Ok(()),
        }
    }

    /// Store row `r`'s outputs at local row `lr` of this block's output views.
    pub fn store(&self, ctx: &Ctx<'_>, r: usize, lr: usize, outs: &mut [OutView<'_>]) -> Result<(), CpuError> {
        let env = Env { ctx, f: &self.f, i: &self.i, b: &self.b, uni: &self.uni, row: r };
        let w = ctx.width;
        for (oi, (o, view)) in ctx.k.outputs.iter().zip(outs.iter_mut()).enumerate() {
            let bad = || internal(o.value.index(), &format!("output {oi} does not fit its value"));
            if view.row {
                // A scattered output's view is the whole tensor (the call runs as one block).
                let dst_row = match ctx.scatters.get(oi).copied().flatten() {
                    Some(idx) => match idx.get(r) {
                        Some(&i) if i < 0 => continue,
                        Some(&i) => i as usize,
                        None => return Err(bad()),
                    },
                    None => lr,
                };
                let start = dst_row * view.stride;
                let range = start..start + w;
                match &mut view.data {
                    CpuOut::I32(d) => match env.isrc(o.value)? {
                        Src::V(v) => d.get_mut(range).ok_or_else(bad)?.copy_from_slice(v),
                        Src::S(x) => d.get_mut(range).ok_or_else(bad)?.fill(x),
                    },
                    data => {
                        let Src::V(v) = env.fsrc(o.value)? else {
                            return Err(bad());
                        };
                        match data {
                            CpuOut::F32(d) => d.get_mut(range).ok_or_else(bad)?.copy_from_slice(v),
                            CpuOut::F16(d) => vector::narrow_f16(d.get_mut(range).ok_or_else(bad)?, v),
                            CpuOut::BF16(d) => vector::narrow_bf16(d.get_mut(range).ok_or_else(bad)?, v),
                            CpuOut::E4M3(d) => vector::narrow_e4m3(d.get_mut(range).ok_or_else(bad)?, v),
                            CpuOut::I8(d) => vector::narrow_i8(d.get_mut(range).ok_or_else(bad)?, v),
                            CpuOut::I32(_) => return Err(bad()),
                        }
                    }
                }
            } else {
                match (&mut view.data, env.scalar(o.value)?) {
                    (CpuOut::F32(d), CpuScalar::F32(x)) => *d.get_mut(lr).ok_or_else(bad)? = x,
                    (CpuOut::F16(d), CpuScalar::F32(x)) => *d.get_mut(lr).ok_or_else(bad)? = f16::from_f32(x),
                    (CpuOut::BF16(d), CpuScalar::F32(x)) => *d.get_mut(lr).ok_or_else(bad)? = bf16::from_f32(x),
                    (CpuOut::E4M3(d), CpuScalar::F32(x)) => *d.get_mut(lr).ok_or_else(bad)? = math::f32_to_e4m3(x),
                    (CpuOut::I8(d), CpuScalar::F32(x)) => *d.get_mut(lr).ok_or_else(bad)? = math::f32_to_i8(x),
                    (CpuOut::I32(d), CpuScalar::I32(x)) => *d.get_mut(lr).ok_or_else(bad)? = x,
                    _ => return Err(bad()),
                }
            }
        }
        Ok(())
    }
}

/// One output's memory for a block of rows (row 0 of the view is the block's first row).
pub(crate) struct OutView<'a> {
    pub data: CpuOut<'a>,
    /// Row outputs: elements between rows; per-row outputs: unused.
    pub stride: usize,
    pub row: bool,
}

/// An `Elem` node with an f32 carrier (every float dtype).
fn eval_f(env: &Env<'_>, i: usize, dst: &mut [f32], s: Scratch<'_>) -> Result<(), CpuError> {
    let k = env.ctx.k;
    let w = env.ctx.width;
    let bad = || internal(i, "op does not fit its operand types");
    match k.nodes[i].op {
        Op::Param(p) => match env.ctx.ins.get(p as usize) {
            Some(In::RowF16(d, st)) => {
                let r = env.ctx.src_row(p as usize, env.row);
                vector::widen_f16(dst, row_of(d, *st, r, w).ok_or_else(bad)?)
            }
            Some(In::RowBF16(d, st)) => {
                let r = env.ctx.src_row(p as usize, env.row);
                vector::widen_bf16(dst, row_of(d, *st, r, w).ok_or_else(bad)?)
            }
            Some(In::RowE4M3(d, st)) => {
                let r = env.ctx.src_row(p as usize, env.row);
                vector::widen_e4m3(dst, row_of(d, *st, r, w).ok_or_else(bad)?)
            }
            Some(In::RowI8(d, st)) => {
                let r = env.ctx.src_row(p as usize, env.row);
                vector::widen_i8(dst, row_of(d, *st, r, w).ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        },
        Op::Unary(u, a) => vector::unary_f32(u, dst, env.fsrc(a)?),
        Op::Binary(b, x, y) => vector::binary_f32(b, dst, env.fsrc(x)?, env.fsrc(y)?),
        Op::Select(c, a, b) => vector::select(dst, env.bsrc(c)?, env.fsrc(a)?, env.fsrc(b)?),
        Op::Cast(a, to) => {
            let from = env.dtype(a);
            match from {
                DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8 => {
                    vector::cast_into_f32(dst, env.fsrc(a)?, |x| x)
                }
                DType::I32 => vector::cast_into_f32(dst, env.isrc(a)?, |x| x as f32),
                DType::Bool => vector::cast_into_f32(dst, env.bsrc(a)?, |x| x as u8 as f32),
            }
            if from != to {
                match to {
                    DType::F16 => vector::round_f16_in_place(dst, s.h16),
                    DType::BF16 => vector::round_bf16_in_place(dst),
                    DType::F8E4M3 => dst.iter_mut().for_each(|v| *v = math::round_e4m3(*v)),
                    DType::I8 => dst.iter_mut().for_each(|v| *v = math::round_i8(*v)),
                    _ => {}
                }
            }
        }
        Op::Rope { x, pos, theta, head_dim, style, scaling } => {
            let scaling = match scaling {
                Some(sc) => Some(Llama3 {
                    factor: env.f32_of(sc.factor)?,
                    low: env.f32_of(sc.low_freq_factor)?,
                    high: env.f32_of(sc.high_freq_factor)?,
                    orig: env.f32_of(sc.original_max_position)?,
                }),
                None => None,
            };
            let freqs = Freqs::Formula { theta: env.f32_of(theta)?, scaling };
            let args = RopeArgs { pos: env.i32_of(pos)?, freqs, head_dim: env.i32_of(head_dim)?, style };
            rope_row(env, s, i, x, &args, dst)?;
        }
        Op::RopeTable { x, pos, head_dim, style, table } => {
            let Some(In::BcastF32(t)) = env.ctx.ins.get(table as usize) else { return Err(bad()) };
            let args =
                RopeArgs { pos: env.i32_of(pos)?, freqs: Freqs::Table(t), head_dim: env.i32_of(head_dim)?, style };
            rope_row(env, s, i, x, &args, dst)?;
        }
        Op::Cmp(..) | Op::Const(_) | Op::Reduce(..) | Op::Softmax(_) | Op::Column => return Err(bad()),
    }
    Ok(())
}

/// Rotate this row's value of node `x` into `dst`.
fn rope_row(
    env: &Env<'_>,
    s: Scratch<'_>,
    i: usize,
    x: ValueId,
    args: &RopeArgs<'_>,
    dst: &mut [f32],
) -> Result<(), CpuError> {
    let w = env.ctx.width;
    let Some(hd) = args.head_dim_for(w) else {
        return Err(CpuError::RopeHeadDim { node: ValueId(i as u32), head_dim: args.head_dim, width: w });
    };
    let Src::V(xrow) = env.fsrc(x)? else {
        return Err(internal(i, "a rope operand must be a per-column value"));
    };
    rope::rotate(s.rope, args, hd, xrow, dst);
    Ok(())
}

/// An `Elem` i32 node.
fn eval_i(env: &Env<'_>, i: usize, dst: &mut [i32]) -> Result<(), CpuError> {
    let bad = || internal(i, "op does not fit its operand types");
    match env.ctx.k.nodes[i].op {
        Op::Column => dst.iter_mut().enumerate().for_each(|(c, d)| *d = c as i32),
        Op::Unary(u, a) => vector::unary_i32(u, dst, env.isrc(a)?),
        Op::Binary(b, x, y) => vector::binary_i32(b, dst, env.isrc(x)?, env.isrc(y)?),
        Op::Select(c, a, b) => vector::select(dst, env.bsrc(c)?, env.isrc(a)?, env.isrc(b)?),
        Op::Cast(a, _) => match env.dtype(a) {
            DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8 => {
                vector::cast_into_i32(dst, env.fsrc(a)?, math::f32_to_i32)
            }
            DType::I32 => vector::cast_into_i32(dst, env.isrc(a)?, |x| x),
            DType::Bool => vector::cast_into_i32(dst, env.bsrc(a)?, |x| x as i32),
        },
        _ => return Err(bad()),
    }
    Ok(())
}

/// An `Elem` bool node.
fn eval_b(env: &Env<'_>, i: usize, dst: &mut [bool]) -> Result<(), CpuError> {
    let bad = || internal(i, "op does not fit its operand types");
    match env.ctx.k.nodes[i].op {
        Op::Unary(crate::ir::UnaryOp::Not, a) => vector::not(dst, env.bsrc(a)?),
        Op::Binary(b, x, y) => vector::binary_bool(b, dst, env.bsrc(x)?, env.bsrc(y)?),
        Op::Cmp(c, x, y) => match env.dtype(x) {
            DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8 => {
                vector::cmp(c, dst, env.fsrc(x)?, env.fsrc(y)?)
            }
            DType::I32 => vector::cmp(c, dst, env.isrc(x)?, env.isrc(y)?),
            DType::Bool => vector::cmp(c, dst, env.bsrc(x)?, env.bsrc(y)?),
        },
        Op::Select(c, a, b) => vector::select(dst, env.bsrc(c)?, env.bsrc(a)?, env.bsrc(b)?),
        _ => return Err(bad()),
    }
    Ok(())
}
