//! Every test kernel, lowered and run by the CPU backend, against a naive reference written
//! here in f64 from the kernel's formula; random non-zero inputs; f32 / f16 / bf16 storage;
//! widths 1, 7, 64, 576 (RoPE: multiples of its head size); row strides equal to and larger
//! than the width (padding poisoned on input, checked untouched on output).

mod common;

use common::host::{check_rows, check_vec, nonzero, rng, row_tensor, vec_tensor, Host};
use common::kernels;
use common::runner::{run, OArg, PArg};
use half::{bf16, f16};
use kiln_codegen::cpu::CpuScalar;
use kiln_codegen::ir::{DType, Kernel, RopeStyle, UnaryOp};
use kiln_codegen::passes::lower;
use rand::rngs::StdRng;
use rand::Rng;

const WIDTHS: [usize; 4] = [1, 7, 64, 576];
const ROWS: usize = 3;

/// (width, stride) pairs: dense and padded.
fn layouts() -> Vec<(usize, usize)> {
    WIDTHS.iter().flat_map(|&w| [(w, w), (w, w + 5)]).collect()
}

fn lowered(k: Kernel) -> Kernel {
    lower(k).expect("test kernels lower")
}

fn map_rows(rows: &[Vec<f64>], f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<Vec<f64>> {
    rows.iter().map(|r| f(r)).collect()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

// ---- naive references ------------------------------------------------------------------

fn rms_norm_ref(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = mean(&x.iter().map(|v| v * v).collect::<Vec<_>>());
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * inv * b).collect()
}

fn layer_norm_ref(x: &[f64], w: &[f64], bias: &[f64], eps: f64) -> Vec<f64> {
    let mu = mean(x);
    let var = mean(&x.iter().map(|v| (v - mu) * (v - mu)).collect::<Vec<_>>());
    x.iter().zip(w).zip(bias).map(|((a, g), b)| (a - mu) / (var + eps).sqrt() * g + b).collect()
}

fn softmax_ref(x: &[f64]) -> Vec<f64> {
    let e: Vec<f64> = x.iter().map(|v| v.exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn silu_mul_ref(g: &[f64], u: &[f64]) -> Vec<f64> {
    g.iter().zip(u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

fn gelu_tanh_mul_ref(g: &[f64], u: &[f64]) -> Vec<f64> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    g.iter().zip(u).map(|(g, u)| 0.5 * g * (1.0 + (k * (g + 0.044715 * g * g * g)).tanh()) * u).collect()
}

/// RoPE by its definition; the frequency and the angle in f32 as the semantics specify
/// (large angles make them part of the result), the rotation in f64.
fn rope_ref(x: &[f64], pos: i32, theta: f32, hd: usize, style: RopeStyle, llama3: Option<[f32; 4]>) -> Vec<f64> {
    let angle = |i: usize| -> f64 {
        let mut f = 1.0f32 / theta.powf((2 * i) as f32 / hd as f32);
        if let Some([factor, low, high, orig]) = llama3 {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen > orig / low {
                f /= factor;
            } else if wavelen >= orig / high {
                let s = (orig / wavelen - low) / (high - low);
                f = (1.0 - s) * f / factor + s * f;
            }
        }
        (pos as f32 * f) as f64
    };
    rope_ref_with(x, hd, style, angle)
}

/// RoPE by its definition with pair `i` turned by `angle(i)`.
fn rope_ref_with(x: &[f64], hd: usize, style: RopeStyle, angle: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for h in 0..x.len() / hd {
        let base = h * hd;
        for i in 0..hd / 2 {
            let (a, b) = match style {
                RopeStyle::HalfSplit => (base + i, base + i + hd / 2),
                RopeStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
            };
            let t = angle(i);
            out[a] = x[a] * t.cos() - x[b] * t.sin();
            out[b] = x[b] * t.cos() + x[a] * t.sin();
        }
    }
    out
}

fn erf_ref(x: f64) -> f64 {
    // all-positive series: 2/sqrt(pi) e^(-x^2) sum 2^n x^(2n+1) / (2n+1)!!
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-18 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
    }
    sum * (-x * x).exp() * 2.0 / std::f64::consts::PI.sqrt()
}

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Erf => erf_ref(x),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Not => unreachable!("not a float op"),
    }
}

// ---- helpers ---------------------------------------------------------------------------

struct Case {
    d: DType,
    width: usize,
    stride: usize,
}

fn cases() -> Vec<Case> {
    let mut v = vec![];
    for d in DType::STORAGE {
        for (width, stride) in layouts() {
            v.push(Case { d, width, stride });
        }
    }
    v
}

fn row_in(r: &mut StdRng, c: &Case, lo: f32, hi: f32) -> (PArg, Vec<Vec<f64>>) {
    let (h, rows) = row_tensor(r, c.d, ROWS, c.width, c.stride, lo, hi);
    (PArg::Row(h, c.stride), rows)
}

fn bcast_in(r: &mut StdRng, c: &Case, lo: f32, hi: f32) -> (PArg, Vec<f64>) {
    let (h, v) = vec_tensor(r, c.d, c.width, lo, hi);
    (PArg::Bcast(h), v)
}

fn row_out(c: &Case) -> OArg {
    OArg::Row(Host::sentinel(c.d, ROWS * c.stride), c.stride)
}

fn label(name: &str, c: &Case) -> String {
    format!("{name} {} width {} stride {}", c.d, c.width, c.stride)
}

// ---- tests -----------------------------------------------------------------------------

#[test]
fn rms_norm_matches_reference() {
    let mut r = rng(1);
    for c in cases() {
        let k = lowered(kernels::rms_norm(c.d));
        let (x, xs) = row_in(&mut r, &c, -2.0, 2.0);
        let (w, ws) = bcast_in(&mut r, &c, -1.5, 1.5);
        let eps = 1e-5f32;
        let mut outs = [row_out(&c)];
        run(&k, &[x, w, PArg::Scalar(CpuScalar::F32(eps))], &mut outs, ROWS, c.width).unwrap();
        let want = map_rows(&xs, |x| rms_norm_ref(x, &ws, eps as f64));
        check_rows(&label("rms_norm", &c), outs[0].host(), c.stride, &want, c.d, 0.0);
    }
}

#[test]
fn add_rms_norm_matches_reference_on_both_outputs() {
    let mut r = rng(2);
    for c in cases() {
        let k = lowered(kernels::add_rms_norm(c.d));
        let (x, xs) = row_in(&mut r, &c, -2.0, 2.0);
        let (res, rs) = row_in(&mut r, &c, -2.0, 2.0);
        let (w, ws) = bcast_in(&mut r, &c, -1.5, 1.5);
        let eps = 1e-6f32;
        let mut outs = [row_out(&c), row_out(&c)];
        run(&k, &[x, res, w, PArg::Scalar(CpuScalar::F32(eps))], &mut outs, ROWS, c.width).unwrap();
        let hs: Vec<Vec<f64>> =
            xs.iter().zip(&rs).map(|(x, r)| x.iter().zip(r).map(|(a, b)| a + b).collect()).collect();
        let want_y = map_rows(&hs, |h| rms_norm_ref(h, &ws, eps as f64));
        check_rows(&label("add_rms_norm h", &c), outs[0].host(), c.stride, &hs, c.d, 0.0);
        check_rows(&label("add_rms_norm y", &c), outs[1].host(), c.stride, &want_y, c.d, 0.0);
    }
}

#[test]
fn layer_norm_matches_reference() {
    let mut r = rng(3);
    for c in cases() {
        if c.width == 1 {
            continue; // a one-column row has zero variance: rsqrt(eps) scaling of 0, covered below
        }
        let k = lowered(kernels::layer_norm(c.d));
        let (x, xs) = row_in(&mut r, &c, -2.0, 3.0);
        let (w, ws) = bcast_in(&mut r, &c, -1.5, 1.5);
        let (b, bs) = bcast_in(&mut r, &c, -0.5, 0.5);
        let eps = 1e-5f32;
        let mut outs = [row_out(&c)];
        run(&k, &[x, w, b, PArg::Scalar(CpuScalar::F32(eps))], &mut outs, ROWS, c.width).unwrap();
        let want = map_rows(&xs, |x| layer_norm_ref(x, &ws, &bs, eps as f64));
        check_rows(&label("layer_norm", &c), outs[0].host(), c.stride, &want, c.d, 0.0);
    }
}

#[test]
fn layer_norm_of_one_column_is_the_bias() {
    for d in DType::STORAGE {
        let k = lowered(kernels::layer_norm(d));
        let x = PArg::Row(Host::from_f32(d, &[1.5, -2.0]), 1);
        let w = PArg::Bcast(Host::from_f32(d, &[3.0]));
        let b = PArg::Bcast(Host::from_f32(d, &[0.25]));
        let mut outs = [OArg::Row(Host::sentinel(d, 2), 1)];
        run(&k, &[x, w, b, PArg::Scalar(CpuScalar::F32(1e-5))], &mut outs, 2, 1).unwrap();
        assert_eq!(outs[0].host().to_f64(), vec![0.25, 0.25]);
    }
}

#[test]
fn softmax_matches_reference() {
    let mut r = rng(4);
    for c in cases() {
        let k = lowered(kernels::softmax(c.d));
        let (x, xs) = row_in(&mut r, &c, -4.0, 4.0);
        let mut outs = [row_out(&c)];
        run(&k, &[x], &mut outs, ROWS, c.width).unwrap();
        check_rows(&label("softmax", &c), outs[0].host(), c.stride, &map_rows(&xs, softmax_ref), c.d, 0.0);
    }
}

#[test]
fn softmax_is_stable_for_large_logits() {
    let k = lowered(kernels::softmax(DType::F32));
    let x = [1000.0f32, 999.0, 998.0, -1000.0];
    let mut outs = [OArg::Row(Host::sentinel(DType::F32, 4), 4)];
    run(&k, &[PArg::Row(Host::F32(x.to_vec()), 4)], &mut outs, 1, 4).unwrap();
    let want = softmax_ref(&[2.0, 1.0, 0.0, -1998.0]);
    check_rows("softmax large", outs[0].host(), 4, &[want], DType::F32, 0.0);
}

#[test]
fn silu_mul_matches_reference() {
    let mut r = rng(5);
    for c in cases() {
        let k = lowered(kernels::silu_mul(c.d));
        let (g, gs) = row_in(&mut r, &c, -6.0, 6.0);
        let (u, us) = row_in(&mut r, &c, -2.0, 2.0);
        let mut outs = [row_out(&c)];
        run(&k, &[g, u], &mut outs, ROWS, c.width).unwrap();
        let want: Vec<Vec<f64>> = gs.iter().zip(&us).map(|(g, u)| silu_mul_ref(g, u)).collect();
        check_rows(&label("silu_mul", &c), outs[0].host(), c.stride, &want, c.d, 0.0);
    }
}

#[test]
fn gelu_tanh_mul_matches_reference() {
    let mut r = rng(6);
    for c in cases() {
        let k = lowered(kernels::gelu_tanh_mul(c.d));
        let (g, gs) = row_in(&mut r, &c, -4.0, 4.0);
        let (u, us) = row_in(&mut r, &c, -2.0, 2.0);
        let mut outs = [row_out(&c)];
        run(&k, &[g, u], &mut outs, ROWS, c.width).unwrap();
        let want: Vec<Vec<f64>> = gs.iter().zip(&us).map(|(g, u)| gelu_tanh_mul_ref(g, u)).collect();
        check_rows(&label("gelu_tanh_mul", &c), outs[0].host(), c.stride, &want, c.d, 0.0);
    }
}

fn rope_case(style: RopeStyle, llama3: bool, seed: u64) {
    let mut r = rng(seed);
    // (head_dim, heads): widths 2, 24, 64, 576
    for (hd, heads) in [(2usize, 1usize), (8, 3), (64, 1), (64, 9)] {
        for d in DType::STORAGE {
            for pad in [0, 3] {
                let width = hd * heads;
                let c = Case { d, width, stride: width + pad };
                let k = lowered(kernels::rope(d, style, llama3));
                let (x, xs) = row_in(&mut r, &c, -2.0, 2.0);
                let pos: Vec<i32> = (0..ROWS).map(|_| r.random_range(0..4096)).collect();
                let theta = if llama3 { 500000.0f32 } else { 10000.0 };
                let mut params = vec![
                    x,
                    PArg::PerRow(Host::I32(pos.clone())),
                    PArg::Scalar(CpuScalar::F32(theta)),
                    PArg::Scalar(CpuScalar::I32(hd as i32)),
                ];
                if llama3 {
                    params.extend(kernels::LLAMA3.map(|v| PArg::Scalar(CpuScalar::F32(v))));
                }
                let mut outs = [row_out(&c)];
                run(&k, &params, &mut outs, ROWS, width).unwrap();
                let sc = llama3.then_some(kernels::LLAMA3);
                let want: Vec<Vec<f64>> =
                    xs.iter().zip(&pos).map(|(x, &p)| rope_ref(x, p, theta, hd, style, sc)).collect();
                check_rows(
                    &format!("rope {style:?} llama3={llama3} hd {hd} {}", label("", &c)),
                    outs[0].host(),
                    c.stride,
                    &want,
                    d,
                    0.0,
                );
            }
        }
    }
}

/// The table kernel: pair `i` at `table[i]` (half split) or `table[2i]` (interleaved), with
/// pass-through pairs (frequency 0) and a table tiled per head as the model loader writes it.
#[test]
fn rope_table_matches_reference() {
    let mut r = rng(21);
    for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
        for (hd, heads) in [(2usize, 1usize), (16, 3), (64, 9)] {
            for d in DType::STORAGE {
                let width = hd * heads;
                let c = Case { d, width, stride: width + 3 };
                let k = lowered(kernels::rope_table(d, style));
                let (x, xs) = row_in(&mut r, &c, -2.0, 2.0);
                let pos: Vec<i32> = (0..ROWS).map(|_| r.random_range(0..4096)).collect();
                let pairs: Vec<f32> = (0..hd / 2)
                    .map(|i| if i + 1 < hd / 2 || hd == 2 { r.random_range(0.0..1.0) } else { 0.0 })
                    .collect();
                let pair_of = |j: usize| match style {
                    RopeStyle::HalfSplit => j % (hd / 2),
                    RopeStyle::Interleaved => j / 2,
                };
                let table: Vec<f32> = (0..width).map(|col| pairs[pair_of(col % hd)]).collect();
                let params = [
                    x,
                    PArg::PerRow(Host::I32(pos.clone())),
                    PArg::Bcast(Host::F32(table)),
                    PArg::Scalar(CpuScalar::I32(hd as i32)),
                ];
                let mut outs = [row_out(&c)];
                run(&k, &params, &mut outs, ROWS, width).unwrap();
                let want: Vec<Vec<f64>> = xs
                    .iter()
                    .zip(&pos)
                    .map(|(x, &p)| rope_ref_with(x, hd, style, |i| (p as f32 * pairs[i]) as f64))
                    .collect();
                check_rows(
                    &format!("rope_table {style:?} hd {hd} {}", label("", &c)),
                    outs[0].host(),
                    c.stride,
                    &want,
                    d,
                    0.0,
                );
            }
        }
    }
}

#[test]
fn rope_half_split_matches_reference() {
    rope_case(RopeStyle::HalfSplit, false, 7);
}

#[test]
fn rope_interleaved_matches_reference() {
    rope_case(RopeStyle::Interleaved, false, 8);
}

#[test]
fn rope_llama3_matches_reference() {
    rope_case(RopeStyle::HalfSplit, true, 9);
    rope_case(RopeStyle::Interleaved, true, 10);
}

#[test]
fn rope_llama3_scaling_takes_all_three_branches() {
    // head_dim 64, theta 500000: wavelengths from 2*pi to ~2e6 cross 8192/4 and 8192/1.
    let [_, low, high, orig] = kernels::LLAMA3;
    let wl: Vec<f32> = (0..32)
        .map(|i| 2.0 * std::f32::consts::PI / kiln_codegen::cpu::rope::inv_freq(500000.0, 64, None, i))
        .collect();
    assert!(wl.iter().any(|&w| w < orig / high));
    assert!(wl.iter().any(|&w| w > orig / low));
    assert!(wl.iter().any(|&w| w >= orig / high && w <= orig / low));
}

#[test]
fn logsumexp_per_row_output_matches_reference() {
    let mut r = rng(11);
    for c in cases() {
        let k = lowered(kernels::logsumexp(c.d));
        let (x, xs) = row_in(&mut r, &c, -3.0, 3.0);
        let scale = nonzero(&mut r, ROWS, 0.5, 4.0);
        let mut outs = [OArg::PerRow(Host::sentinel(DType::F32, ROWS))];
        run(&k, &[x, PArg::PerRow(Host::F32(scale.clone()))], &mut outs, ROWS, c.width).unwrap();
        let want: Vec<f64> =
            xs.iter().zip(&scale).map(|(x, &s)| x.iter().map(|v| (v * s as f64).exp()).sum::<f64>().ln()).collect();
        check_vec(&label("logsumexp", &c), outs[0].host(), &want, DType::F32, 0.0);
    }
}

#[test]
fn select_cmp_matches_reference() {
    let mut r = rng(12);
    for c in cases() {
        let k = lowered(kernels::select_cmp(c.d));
        let (x, xs) = row_in(&mut r, &c, -2.0, 2.0);
        let (w, ws) = bcast_in(&mut r, &c, -2.0, 2.0);
        let thr = 0.25f32;
        let mut outs = [row_out(&c), OArg::PerRow(Host::sentinel(DType::F32, ROWS))];
        run(&k, &[x, w, PArg::Scalar(CpuScalar::F32(thr))], &mut outs, ROWS, c.width).unwrap();
        let want_y = map_rows(&xs, |x| x.iter().map(|&v| if v > thr as f64 { v } else { 0.01 * v }).collect());
        let want_f: Vec<f64> =
            xs.iter().map(|x| x.iter().zip(&ws).filter(|(a, b)| a >= b).count() as f64 / c.width as f64).collect();
        check_rows(&label("select_cmp y", &c), outs[0].host(), c.stride, &want_y, c.d, 0.0);
        check_vec(&label("select_cmp frac", &c), outs[1].host(), &want_f, DType::F32, 0.0);
    }
}

#[test]
fn pow_matches_reference() {
    let mut r = rng(13);
    for c in cases() {
        let k = lowered(kernels::pow(c.d));
        let (x, xs) = row_in(&mut r, &c, -2.0, 2.0);
        let (w, ws) = bcast_in(&mut r, &c, -2.5, 2.5);
        let mut outs = [row_out(&c)];
        run(&k, &[x, w], &mut outs, ROWS, c.width).unwrap();
        let want = map_rows(&xs, |x| x.iter().zip(&ws).map(|(a, b)| (a.abs() + 0.5).powf(*b)).collect());
        check_rows(&label("pow", &c), outs[0].host(), c.stride, &want, c.d, 0.0);
    }
}

#[test]
fn every_float_unary_op_matches_reference() {
    let mut r = rng(14);
    for op in kernels::FLOAT_UNARY {
        let (lo, hi) = match op {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => (0.05, 4.0),
            UnaryOp::Exp => (-8.0, 8.0),
            UnaryOp::Erf => (-4.5, 4.5),
            UnaryOp::Sin | UnaryOp::Cos => (-10.0, 10.0),
            _ => (-6.0, 6.0),
        };
        for c in cases() {
            let k = lowered(kernels::unary(c.d, op));
            let (x, xs) = row_in(&mut r, &c, lo, hi);
            let mut outs = [row_out(&c)];
            run(&k, &[x], &mut outs, ROWS, c.width).unwrap();
            let want = map_rows(&xs, |x| x.iter().map(|&v| unary_ref(op, v)).collect());
            check_rows(&label(&format!("{op:?}"), &c), outs[0].host(), c.stride, &want, c.d, 0.0);
        }
    }
}

#[test]
fn integer_and_bool_ops_match_reference() {
    let mut r = rng(15);
    for c in cases() {
        let k = lowered(kernels::int_ops(c.d));
        let ints = |r: &mut StdRng, n: usize| -> Vec<i32> { (0..n).map(|_| r.random_range(-50..=50)).collect() };
        let mut iflat = vec![0i32; ROWS * c.stride];
        let mut irows = vec![];
        for row in 0..ROWS {
            let v = ints(&mut r, c.width);
            iflat[row * c.stride..row * c.stride + c.width].copy_from_slice(&v);
            irows.push(v);
        }
        let j = ints(&mut r, c.width);
        let p: Vec<i32> = vec![0, 7, -3];
        let mut outs = [OArg::Row(Host::sentinel(DType::I32, ROWS * c.stride), c.stride), row_out(&c)];
        let params = [
            PArg::Row(Host::I32(iflat), c.stride),
            PArg::Bcast(Host::I32(j.clone())),
            PArg::PerRow(Host::I32(p.clone())),
        ];
        run(&k, &params, &mut outs, ROWS, c.width).unwrap();
        let mut want_q = vec![];
        let mut want_f = vec![];
        for (row, iv) in irows.iter().enumerate() {
            let pr = p[row] as i64;
            let q: Vec<f64> = iv
                .iter()
                .zip(&j)
                .map(|(&i, &j)| {
                    let (i, j) = (i as i64, j as i64);
                    let v = (3 * i - j).max(-pr).min(i.abs());
                    (v / 2) as f64 // i64 division truncates toward zero, like the IR's
                })
                .collect();
            let f: Vec<f64> =
                iv.iter().zip(&j).map(|(&i, &j)| if i <= j || pr == 0 { 0.5 + i as f64 } else { i as f64 }).collect();
            want_q.push(q);
            want_f.push(f);
        }
        check_rows(&label("int_ops q", &c), outs[0].host(), c.stride, &want_q, DType::I32, 0.0);
        check_rows(&label("int_ops f", &c), outs[1].host(), c.stride, &want_f, c.d, 0.0);
    }
}

#[test]
fn parallel_rows_match_row_by_row_runs_exactly() {
    // 300 x 576 is past the parallel threshold; each row run alone takes the serial path.
    let (rows, width) = (300usize, 576usize);
    assert!(rows * width > kiln_codegen::cpu::PARALLEL_MIN_ELEMS);
    for k in [
        kernels::add_rms_norm(DType::BF16),
        kernels::softmax(DType::F16),
        kernels::rope(DType::F32, RopeStyle::HalfSplit, false),
    ] {
        let k = lowered(k);
        let mut r = rng(16);
        let mk_params = |r: &mut StdRng, rows: usize, pos0: usize| -> Vec<PArg> {
            k.params
                .iter()
                .enumerate()
                .map(|(i, p)| match p.kind {
                    kiln_codegen::ir::ParamKind::Row(d) => {
                        let (h, _) = row_tensor(r, d, rows, width, width, -2.0, 2.0);
                        PArg::Row(h, width)
                    }
                    kiln_codegen::ir::ParamKind::Bcast(d) => PArg::Bcast(vec_tensor(r, d, width, -1.0, 1.0).0),
                    kiln_codegen::ir::ParamKind::PerRow(_) => {
                        PArg::PerRow(Host::I32((0..rows).map(|j| ((pos0 + j) / 9) as i32).collect()))
                    }
                    kiln_codegen::ir::ParamKind::Comptime(DType::I32) => PArg::Scalar(CpuScalar::I32(64)),
                    kiln_codegen::ir::ParamKind::Comptime(_) => PArg::Scalar(CpuScalar::F32(1e-5 + i as f32)),
                })
                .collect()
        };
        let params = mk_params(&mut r, rows, 0);
        let mut outs: Vec<OArg> =
            k.outputs.iter().map(|o| OArg::Row(Host::sentinel(o.kind.dtype(), rows * width), width)).collect();
        run(&k, &params, &mut outs, rows, width).unwrap();
        // the same rows one at a time
        for row in (0..rows).step_by(37) {
            let one: Vec<PArg> = params
                .iter()
                .map(|p| match p {
                    PArg::Row(h, _) => PArg::Row(slice_host(h, row * width, width), width),
                    PArg::PerRow(Host::I32(v)) => PArg::PerRow(Host::I32(vec![v[row]])),
                    PArg::Bcast(h) => PArg::Bcast(h.clone()),
                    PArg::Scalar(s) => PArg::Scalar(*s),
                    PArg::PerRow(_) => unreachable!(),
                })
                .collect();
            let mut o1: Vec<OArg> =
                k.outputs.iter().map(|o| OArg::Row(Host::sentinel(o.kind.dtype(), width), width)).collect();
            run(&k, &one, &mut o1, 1, width).unwrap();
            for (big, small) in outs.iter().zip(&o1) {
                let b = big.host().to_f64();
                let s = small.host().to_f64();
                assert_eq!(&b[row * width..(row + 1) * width], &s[..], "{} row {row}", k.name);
            }
        }
    }
}

fn slice_host(h: &Host, start: usize, n: usize) -> Host {
    match h {
        Host::F32(v) => Host::F32(v[start..start + n].to_vec()),
        Host::F16(v) => Host::F16(v[start..start + n].to_vec()),
        Host::BF16(v) => Host::BF16(v[start..start + n].to_vec()),
        Host::I32(v) => Host::I32(v[start..start + n].to_vec()),
        Host::E4M3(v) => Host::E4M3(v[start..start + n].to_vec()),
        Host::I8(v) => Host::I8(v[start..start + n].to_vec()),
    }
}

#[test]
fn half_casts_round_to_nearest_even() {
    // A kernel that rounds f32 rows to the storage dtype: the stored output must be exactly the
    // half crate's nearest-even rounding of the f32 input.
    let mut r = rng(17);
    for d in [DType::F16, DType::BF16] {
        let mut b = kiln_codegen::builder::Builder::new("round", "test", d);
        let x = b.param("x", kiln_codegen::ir::ParamKind::Row(DType::F32)).unwrap();
        b.output("y", kiln_codegen::ir::OutputKind::Row(d), x).unwrap();
        let k = lowered(b.finish().unwrap());
        let mut xs = nonzero(&mut r, 1000, -3.0, 3.0);
        // exact ties: 1 + half an ulp of the dtype
        xs.push(1.0 + 2f32.powi(-11));
        xs.push(1.0 + 2f32.powi(-8));
        xs.push(1.0 + 3.0 * 2f32.powi(-11));
        let n = xs.len();
        let mut outs = [OArg::Row(Host::sentinel(d, n), n)];
        run(&k, &[PArg::Row(Host::F32(xs.clone()), n)], &mut outs, 1, n).unwrap();
        let got = outs[0].host().to_f64();
        for (g, x) in got.iter().zip(&xs) {
            let want = match d {
                DType::F16 => f16::from_f32(*x).to_f64(),
                _ => bf16::from_f32(*x).to_f64(),
            };
            assert_eq!(*g, want, "{d} rounding of {x}");
        }
    }
}

/// The e4m3 value nearest to `x` by brute force over the 254 finite byte values (ties to the
/// even mantissa, |x| past 448 saturating): the definition the encoder is held to.
fn nearest_e4m3(x: f64) -> f64 {
    let values = (0u8..=0xff).filter(|b| b & 0x7f != 0x7f).map(|b| (b, kiln_codegen::cpu::math::e4m3_to_f32(b) as f64));
    let best = values
        .min_by(|(ba, a), (bb, b)| {
            let (da, db) = ((a - x).abs(), (b - x).abs());
            da.partial_cmp(&db).unwrap().then((ba & 1).cmp(&(bb & 1)))
        })
        .unwrap();
    if x.abs() >= 448.0 {
        448f64.copysign(x)
    } else {
        best.1
    }
}

#[test]
fn e4m3_casts_round_to_nearest_even_and_saturate() {
    // y = e4m3(x) for f32 rows of every magnitude e4m3 covers (subnormals to past 448), every
    // byte's exact value and the midpoints between neighbours (ties); then the bytes read back
    // as an e4m3 Row parameter and widened to f32 must give the same values.
    let mut b = kiln_codegen::builder::Builder::new("to_e4m3", "test", DType::F32);
    let x = b.param("x", kiln_codegen::ir::ParamKind::Row(DType::F32)).unwrap();
    b.output("y", kiln_codegen::ir::OutputKind::Row(DType::F8E4M3), x).unwrap();
    let k = lowered(b.finish().unwrap());
    let mut r = rng(19);
    let mut xs: Vec<f32> = nonzero(&mut r, 600, -2.0, 2.0);
    xs.extend(nonzero(&mut r, 200, -600.0, 600.0));
    xs.extend(nonzero(&mut r, 200, -0.02, 0.02));
    let finite: Vec<f32> = (0u8..0x7f).map(kiln_codegen::cpu::math::e4m3_to_f32).filter(|v| *v >= 0.0).collect();
    for w in finite.windows(2) {
        xs.extend([w[0], -w[0], (w[0] + w[1]) / 2.0, -(w[0] + w[1]) / 2.0]);
    }
    xs.extend([448.0, 464.0, 1.0e6, -1.0e6, 0.0, -0.0]);
    let n = xs.len();
    let mut outs = [OArg::Row(Host::sentinel(DType::F8E4M3, n), n)];
    run(&k, &[PArg::Row(Host::F32(xs.clone()), n)], &mut outs, 1, n).unwrap();
    let got = outs[0].host().to_f64();
    for (g, x) in got.iter().zip(&xs) {
        assert_eq!(*g, nearest_e4m3(*x as f64), "e4m3 rounding of {x}");
    }
    // Read back: an e4m3 Row parameter widens exactly.
    let mut b = kiln_codegen::builder::Builder::new("from_e4m3", "test", DType::F32);
    let q = b.param("q", kiln_codegen::ir::ParamKind::Row(DType::F8E4M3)).unwrap();
    let q = b.widen(q).unwrap();
    b.output("y", kiln_codegen::ir::OutputKind::Row(DType::F32), q).unwrap();
    let k = lowered(b.finish().unwrap());
    let mut back = [OArg::Row(Host::sentinel(DType::F32, n), n)];
    run(&k, &[PArg::Row(outs[0].host().clone(), n)], &mut back, 1, n).unwrap();
    assert_eq!(back[0].host().to_f64(), got);
}

#[test]
fn i8_casts_round_to_nearest_even_and_saturate() {
    // y = i8(x) for f32 rows around and past the ±127 range, every half-integer (ties go to the
    // even neighbour), values a hair either side of them, and NaN (0); then the codes read back
    // as an i8 Row parameter and widened to f32 must give the same values.
    let mut b = kiln_codegen::builder::Builder::new("to_i8", "test", DType::F32);
    let x = b.param("x", kiln_codegen::ir::ParamKind::Row(DType::F32)).unwrap();
    b.output("y", kiln_codegen::ir::OutputKind::Row(DType::I8), x).unwrap();
    let k = lowered(b.finish().unwrap());
    let mut r = rng(23);
    let mut xs: Vec<f32> = nonzero(&mut r, 600, -140.0, 140.0);
    for h in -130..130 {
        let t = h as f32 + 0.5;
        xs.extend([t, t.next_up(), t.next_down()]);
    }
    xs.extend([127.0, 127.5, 128.0, -127.5, -128.0, 1.0e9, -1.0e9, 0.0, -0.0, f32::NAN]);
    let n = xs.len();
    let mut outs = [OArg::Row(Host::sentinel(DType::I8, n), n)];
    run(&k, &[PArg::Row(Host::F32(xs.clone()), n)], &mut outs, 1, n).unwrap();
    let got = outs[0].host().to_f64();
    for (g, x) in got.iter().zip(&xs) {
        // Nearest integer, ties to even (f64 arithmetic, by hand), clamped to ±127; NaN → 0.
        let x = *x as f64;
        let (fl, frac) = (x.floor(), x - x.floor());
        let near = if frac > 0.5 || (frac == 0.5 && fl % 2.0 != 0.0) { fl + 1.0 } else { fl };
        let want = if x.is_nan() { 0.0 } else { near.clamp(-127.0, 127.0) };
        assert_eq!(*g, want, "i8 rounding of {x}");
    }
    let mut b = kiln_codegen::builder::Builder::new("from_i8", "test", DType::F32);
    let q = b.param("q", kiln_codegen::ir::ParamKind::Row(DType::I8)).unwrap();
    let q = b.widen(q).unwrap();
    b.output("y", kiln_codegen::ir::OutputKind::Row(DType::F32), q).unwrap();
    let k = lowered(b.finish().unwrap());
    let mut back = [OArg::Row(Host::sentinel(DType::F32, n), n)];
    run(&k, &[PArg::Row(outs[0].host().clone(), n)], &mut back, 1, n).unwrap();
    assert_eq!(back[0].host().to_f64(), got);
}

#[test]
fn half_per_row_and_comptime_params_and_kernel_reuse() {
    // y = x * p[row] + c with p a per-row bf16 vector and c a comptime f16 (given as f32 and
    // rounded to f16); one planned kernel run on two different shapes.
    let mut b = kiln_codegen::builder::Builder::new("scale_shift", "test", DType::F32);
    let x = b.param("x", kiln_codegen::ir::ParamKind::Row(DType::F32)).unwrap();
    let p = b.param("p", kiln_codegen::ir::ParamKind::PerRow(DType::BF16)).unwrap();
    let p = b.widen(p).unwrap();
    let c = b.param("c", kiln_codegen::ir::ParamKind::Comptime(DType::F16)).unwrap();
    let c = b.widen(c).unwrap();
    let xp = b.binary(kiln_codegen::ir::BinaryOp::Mul, x, p).unwrap();
    let y = b.binary(kiln_codegen::ir::BinaryOp::Add, xp, c).unwrap();
    b.output("y", kiln_codegen::ir::OutputKind::Row(DType::F32), y).unwrap();
    let k = kiln_codegen::cpu::CpuKernel::new(&lowered(b.finish().unwrap())).unwrap();
    let mut r = rng(18);
    let c_in = 0.1f32; // not an f16: rounds to 0.0999755859375
    let c16 = f16::from_f32(c_in).to_f32() as f64;
    for (rows, width) in [(2usize, 5usize), (4, 64)] {
        let xs = nonzero(&mut r, rows * width, -2.0, 2.0);
        let ps: Vec<bf16> = nonzero(&mut r, rows, -3.0, 3.0).iter().map(|&v| bf16::from_f32(v)).collect();
        let mut out = vec![f32::NAN; rows * width];
        let params = [
            kiln_codegen::cpu::CpuParam::row(&xs[..], width),
            kiln_codegen::cpu::CpuParam::per_row(&ps[..]),
            kiln_codegen::cpu::CpuParam::Comptime(CpuScalar::F32(c_in)),
        ];
        let mut outs = [kiln_codegen::cpu::CpuOutArg::row(&mut out[..], width)];
        k.run(&params, &mut outs, rows, width).unwrap();
        for row in 0..rows {
            for col in 0..width {
                let want = xs[row * width + col] as f64 * ps[row].to_f64() + c16;
                let got = out[row * width + col] as f64;
                assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "row {row} col {col}: {got} vs {want}");
            }
        }
    }
}
