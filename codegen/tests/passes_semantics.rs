//! Property test: the passes preserve meaning. Random expression DAGs are built with
//! `Builder` (the way the frontend builds them: halves widened, outputs cast), lowered by
//! `passes::lower`, run by the CPU backend, and compared *exactly* with a direct recursive
//! evaluation of the unlowered DAG (`common::eval`). Lowering must also be idempotent.
//!
//! The run is deterministic (fixed seed, no regression files written).

mod common;

use common::eval::{row_inputs, Eval, ParamData, Val};
use common::host::{nonzero, Host};
use common::runner::{run, OArg, PArg};
use half::{bf16, f16};
use kiln_codegen::builder::Builder;
use kiln_codegen::cpu::CpuScalar;
use kiln_codegen::ir::{
    BinaryOp, CmpOp, Const, DType, Kernel, Llama3Scaling, Op, OutputKind, ParamKind, ReduceOp, RopeStyle, Shape,
    UnaryOp, ValueId,
};
use kiln_codegen::passes::lower;
use kiln_codegen::verify::verify_lowered;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed};
use rand::Rng;
use std::collections::HashMap;

const UNARY: [UnaryOp; 12] = [
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
    UnaryOp::Not,
];
const BINARY: [BinaryOp; 9] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Min,
    BinaryOp::Max,
    BinaryOp::Pow,
    BinaryOp::And,
    BinaryOp::Or,
];
const CMP: [CmpOp; 6] = [CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge, CmpOp::Eq, CmpOp::Ne];
const REDUCE: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::ArgMax];
const WIDTHS: [usize; 7] = [1, 2, 3, 7, 8, 16, 24];
const ROWS: usize = 3;

/// One step of a random program; indices pick operands from the values built so far.
#[derive(Clone, Debug)]
enum Instr {
    Unary(usize, usize),
    Binary(usize, usize, usize),
    Cmp(usize, usize, usize),
    Select(usize, usize, usize),
    /// Round through f16 (true) or bf16 and widen back.
    RoundHalf(bool, usize),
    Cast(usize, usize),
    Reduce(usize, usize),
    Softmax(usize),
    ConstF(f32),
    ConstI(i32),
    /// The column index.
    Column,
    Dup(usize),
    /// Re-push a binary op or comparison with its operands swapped (tests CSE's commutativity).
    Swap(usize),
    /// RoPE of a picked f32 value (any column-local one; the builder refuses the others).
    Rope(bool, bool, usize),
}

fn instr() -> impl Strategy<Value = Instr> {
    let i = || 0usize..64;
    prop_oneof![
        4 => (0..UNARY.len(), i()).prop_map(|(o, a)| Instr::Unary(o, a)),
        6 => (0..BINARY.len(), i(), i()).prop_map(|(o, a, b)| Instr::Binary(o, a, b)),
        2 => (0..CMP.len(), i(), i()).prop_map(|(o, a, b)| Instr::Cmp(o, a, b)),
        2 => (i(), i(), i()).prop_map(|(c, a, b)| Instr::Select(c, a, b)),
        2 => (any::<bool>(), i()).prop_map(|(h, a)| Instr::RoundHalf(h, a)),
        2 => (0usize..2, i()).prop_map(|(t, a)| Instr::Cast(t, a)),
        2 => (0..REDUCE.len(), i()).prop_map(|(o, a)| Instr::Reduce(o, a)),
        1 => i().prop_map(Instr::Softmax),
        2 => (-3.0f32..3.0).prop_map(Instr::ConstF),
        1 => (-4i32..5).prop_map(Instr::ConstI),
        1 => Just(Instr::Column),
        2 => i().prop_map(Instr::Dup),
        2 => i().prop_map(Instr::Swap),
        1 => (any::<bool>(), any::<bool>(), i()).prop_map(|(s, l, a)| Instr::Rope(s, l, a)),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    dtype: DType,
    width: usize,
    prog: Vec<Instr>,
    outs: Vec<(usize, bool)>,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(DType::STORAGE.to_vec()),
        prop::sample::select(WIDTHS.to_vec()),
        prop::collection::vec(instr(), 1..28),
        prop::collection::vec((0usize..64, any::<bool>()), 0..3),
        any::<u64>(),
    )
        .prop_map(|(dtype, width, prog, outs, seed)| Case { dtype, width, prog, outs, seed })
}

/// The parameters every random kernel declares, with the pool entries they start.
struct Built {
    kernel: Kernel,
    head_dim: i32,
}

#[allow(clippy::manual_is_multiple_of)]
fn head_dim_for(width: usize) -> i32 {
    if width % 4 == 0 {
        (width / 2) as i32
    } else {
        2
    }
}

#[allow(clippy::manual_is_multiple_of)]
fn build(c: &Case) -> Option<Built> {
    let d = c.dtype;
    let mut b = Builder::new("random", "proptest", d);
    let x = b.param("x", ParamKind::Row(d)).ok()?;
    let x = b.widen(x).ok()?;
    let w = b.param("w", ParamKind::Bcast(d)).ok()?;
    let w = b.widen(w).ok()?;
    let s = b.param("s", ParamKind::PerRow(DType::F32)).ok()?;
    let cc = b.param("c", ParamKind::Comptime(DType::F32)).ok()?;
    let i = b.param("i", ParamKind::Row(DType::I32)).ok()?;
    let pos = b.param("pos", ParamKind::PerRow(DType::I32)).ok()?;
    let theta = b.param("theta", ParamKind::Comptime(DType::F32)).ok()?;
    let hd = b.param("hd", ParamKind::Comptime(DType::I32)).ok()?;
    let mut pool = vec![x, w, s, cc, i, pos];
    let mut made: HashMap<ValueId, Op> = HashMap::new();
    let dtype = |b: &Builder, v: ValueId| b.ty(v).dtype;
    // Operand choice favours recent values (3 in 4 picks among the last four), so programs
    // grow deep chains rather than many dead leaves.
    let slot = |n: usize, a: usize| if a < 48 { n - 1 - a % n.min(4) } else { a % n };
    // the pool value at `slot(at)`, or the nearest earlier one, with dtype `want`
    let find = |b: &Builder, pool: &[ValueId], at: usize, want: DType| -> Option<ValueId> {
        let n = pool.len();
        let start = slot(n, at);
        (0..n).map(|k| pool[(start + n - k) % n]).find(|&v| b.ty(v).dtype == want)
    };
    for ins in &c.prog {
        let n = pool.len();
        let pick = |a: usize| pool[slot(n, a)];
        let op = match *ins {
            Instr::Unary(o, a) => {
                let u = UNARY[o];
                let want = if u == UnaryOp::Not { DType::Bool } else { DType::F32 };
                Op::Unary(u, find(&b, &pool, a, want).unwrap_or(pick(a)))
            }
            Instr::Binary(o, a, bb) => {
                let a = pick(a);
                let Some(bv) = find(&b, &pool, bb, dtype(&b, a)) else {
                    continue;
                };
                Op::Binary(BINARY[o], a, bv)
            }
            Instr::Cmp(o, a, bb) => {
                let a = pick(a);
                let Some(bv) = find(&b, &pool, bb, dtype(&b, a)) else {
                    continue;
                };
                Op::Cmp(CMP[o], a, bv)
            }
            Instr::Select(cnd, a, bb) => {
                let Some(cv) = find(&b, &pool, cnd, DType::Bool) else {
                    continue;
                };
                let a = pick(a);
                let Some(bv) = find(&b, &pool, bb, dtype(&b, a)) else {
                    continue;
                };
                Op::Select(cv, a, bv)
            }
            Instr::RoundHalf(f16, a) => {
                let a = pick(a);
                let h = if f16 { DType::F16 } else { DType::BF16 };
                let Ok(hv) = b.push(Op::Cast(a, h)) else {
                    continue;
                };
                Op::Cast(hv, DType::F32)
            }
            Instr::Cast(t, a) => Op::Cast(pick(a), [DType::F32, DType::I32][t]),
            Instr::Reduce(o, a) => match find(&b, &pool, a, DType::F32) {
                Some(v) => Op::Reduce(REDUCE[o], v),
                None => continue,
            },
            Instr::Softmax(a) => match find(&b, &pool, a, DType::F32) {
                Some(v) => Op::Softmax(v),
                None => continue,
            },
            Instr::ConstF(v) => Op::Const(Const::F32(v)),
            Instr::ConstI(v) => Op::Const(Const::I32(v)),
            Instr::Column => Op::Column,
            Instr::Dup(a) => match made.get(&pick(a)) {
                Some(op) => op.clone(),
                None => continue,
            },
            Instr::Swap(a) => match made.get(&pick(a)) {
                Some(Op::Binary(o, x, y)) => Op::Binary(*o, *y, *x),
                Some(Op::Cmp(o, x, y)) => Op::Cmp(*o, *y, *x),
                _ => continue,
            },
            Instr::Rope(interleaved, llama3, a) => {
                if c.width % 2 != 0 {
                    continue;
                }
                let style = if interleaved { RopeStyle::Interleaved } else { RopeStyle::HalfSplit };
                let scaling = if llama3 {
                    let [f, l, h, o] = [8.0, 1.0, 4.0, 64.0].map(|v| b.f32(v));
                    Some(Llama3Scaling { factor: f, low_freq_factor: l, high_freq_factor: h, original_max_position: o })
                } else {
                    None
                };
                // Half the time the widened row itself, else a picked f32 value (refused when it
                // is uniform or not column-local).
                let x = if a % 2 == 0 { pool[0] } else { find(&b, &pool, a, DType::F32).unwrap_or(pool[0]) };
                Op::Rope { x, pos, theta, head_dim: hd, style, scaling }
            }
        };
        // ill-typed combinations are simply skipped: the builder refuses them
        if let Ok(v) = b.push(op.clone()) {
            made.insert(v, op);
            pool.push(v);
        }
    }
    // outputs: the last value, plus the picked ones
    let mut picks = vec![(pool.len() - 1, false)];
    picks.extend(c.outs.iter().map(|&(i, h)| (i % pool.len(), h)));
    picks.dedup_by_key(|p| p.0);
    for (n, (at, to_storage)) in picks.into_iter().enumerate() {
        let v = pool[at];
        let t = b.ty(v);
        let dt = match t.dtype {
            DType::I32 => DType::I32,
            _ if to_storage => d,
            _ => DType::F32,
        };
        let kind = if t.shape == Shape::Elem { OutputKind::Row(dt) } else { OutputKind::PerRow(dt) };
        b.output(&format!("o{n}"), kind, v).ok()?;
    }
    Some(Built { kernel: b.finish().ok()?, head_dim: head_dim_for(c.width) })
}

fn to_f32(d: DType, v: &[f32]) -> Vec<f32> {
    Host::from_f32(d, v).to_f64().iter().map(|&x| x as f32).collect()
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    let Some(Built { kernel: k, head_dim }) = build(c) else {
        return Ok(());
    };
    let low = lower(k.clone()).map_err(|e| TestCaseError::fail(format!("lower failed: {e}\n{k}")))?;
    verify_lowered(&low).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&lower(low.clone()).unwrap(), &low, "lowering is not idempotent");

    let (d, width, stride) = (c.dtype, c.width, c.width + 1);
    let mut rng = common::host::rng(c.seed);
    let xs: Vec<Vec<f32>> = (0..ROWS).map(|_| to_f32(d, &nonzero(&mut rng, width, -2.0, 2.0))).collect();
    let ws = to_f32(d, &nonzero(&mut rng, width, -2.0, 2.0));
    let ss = nonzero(&mut rng, ROWS, 0.5, 2.0);
    let cv = rng.random_range(-2.0f32..2.0);
    let is: Vec<Vec<i32>> = (0..ROWS).map(|_| (0..width).map(|_| rng.random_range(-5..=5)).collect()).collect();
    let ps: Vec<i32> = (0..ROWS).map(|_| rng.random_range(0..50)).collect();
    let theta = 10000.0f32;

    let mut xflat = vec![f32::NAN; ROWS * stride];
    let mut iflat = vec![0i32; ROWS * stride];
    for r in 0..ROWS {
        xflat[r * stride..r * stride + width].copy_from_slice(&xs[r]);
        iflat[r * stride..r * stride + width].copy_from_slice(&is[r]);
    }
    let params = vec![
        PArg::Row(Host::from_f32(d, &xflat), stride),
        PArg::Bcast(Host::from_f32(d, &ws)),
        PArg::PerRow(Host::F32(ss.clone())),
        PArg::Scalar(CpuScalar::F32(cv)),
        PArg::Row(Host::I32(iflat), stride),
        PArg::PerRow(Host::I32(ps.clone())),
        PArg::Scalar(CpuScalar::F32(theta)),
        PArg::Scalar(CpuScalar::I32(head_dim)),
    ];
    let mut outs: Vec<OArg> = low
        .outputs
        .iter()
        .map(|o| match o.kind {
            OutputKind::Row(dt) => OArg::Row(Host::sentinel(dt, ROWS * stride), stride),
            OutputKind::PerRow(dt) => OArg::PerRow(Host::sentinel(dt, ROWS)),
        })
        .collect();
    run(&low, &params, &mut outs, ROWS, width).map_err(|e| TestCaseError::fail(format!("run: {e}\n{low}")))?;

    let data = vec![
        ParamData::RowsF(xs),
        ParamData::VecF(ws),
        ParamData::VecF(ss),
        ParamData::ScalarF(cv),
        ParamData::RowsI(is),
        ParamData::VecI(ps),
        ParamData::ScalarF(theta),
        ParamData::ScalarI(head_dim),
    ];
    for r in 0..ROWS {
        let mut ev = Eval::new(&k, row_inputs(&k, &data, r));
        for (o, got) in k.outputs.iter().zip(&outs) {
            let want: Vec<f64> = match ev.value(o.value) {
                Val::F(v) => v.iter().map(|&x| stored(o.kind.dtype(), x)).collect(),
                Val::I(v) => v.iter().map(|&x| x as f64).collect(),
                Val::B(_) => return Err(TestCaseError::fail("bool output")),
            };
            let all = got.host().to_f64();
            let got_row: Vec<f64> = match got {
                OArg::Row(_, st) => all[r * st..r * st + width].to_vec(),
                OArg::PerRow(_) => vec![all[r]],
            };
            let want = if want.len() == 1 && got_row.len() > 1 { vec![want[0]; got_row.len()] } else { want };
            for (j, (&g, &w)) in got_row.iter().zip(&want).enumerate() {
                prop_assert!(same(g, w), "output {} row {r} col {j}: lowered+cpu {g}, direct {w}\n{k}\n{low}", o.name);
            }
        }
    }
    Ok(())
}

/// The value as stored in an output of dtype `d` (exact for values already of that dtype).
fn stored(d: DType, x: f32) -> f64 {
    match d {
        DType::F16 => f16::from_f32(x).to_f64(),
        DType::BF16 => bf16::from_f32(x).to_f64(),
        _ => x as f64,
    }
}

fn config() -> Config {
    Config { cases: 400, rng_seed: RngSeed::Fixed(0x6b696c6e), failure_persistence: None, ..Config::default() }
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn lowering_preserves_meaning(c in case()) {
        check(&c)?;
    }
}

#[test]
fn random_programs_exercise_every_pass() {
    // Sanity check of the generator: across a fixed sample, folding, merging and dropping all happen.
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let (mut folded, mut merged, mut dropped, mut softmax, mut rope, mut built) = (0, 0, 0, 0, 0, 0);
    for _ in 0..200 {
        let c = case().new_tree(&mut runner).unwrap().current();
        let Some(Built { kernel: k, .. }) = build(&c) else {
            continue;
        };
        built += 1;
        let low = lower(k.clone()).unwrap();
        let count = |k: &Kernel, f: &dyn Fn(&Op) -> bool| k.nodes.iter().filter(|n| f(&n.op)).count();
        let consts = |k: &Kernel| count(k, &|o| matches!(o, Op::Const(_)));
        let sm = lower_softmax_only(&k);
        if consts(&kiln_codegen::passes::const_fold(sm.clone())) > consts(&sm) {
            folded += 1;
        }
        if kiln_codegen::passes::cse(sm.clone()).nodes.len() < sm.nodes.len() {
            merged += 1;
        }
        if low.nodes.len() < sm.nodes.len() {
            dropped += 1;
        }
        softmax += (count(&k, &|o| matches!(o, Op::Softmax(_))) > 0) as usize;
        rope += (count(&k, &|o| matches!(o, Op::Rope { .. })) > 0) as usize;
    }
    assert!(built > 150, "built {built}");
    for (what, n) in
        [("folded", folded), ("merged", merged), ("dropped", dropped), ("softmax", softmax), ("rope", rope)]
    {
        assert!(n >= 10, "only {n} programs {what}");
    }
}

fn lower_softmax_only(k: &Kernel) -> Kernel {
    kiln_codegen::passes::lower_softmax(k.clone())
}
