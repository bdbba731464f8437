//! Every kernel of `kiln_models::kernels` on the CPU backend (through its generated `cpu` fn)
//! against its naive `*_ref` (f64), for f32, f16 and bf16, on random non-zero inputs, over
//! widths that are small, odd, vector-unaligned and model-sized (576 = SmolLM2's hidden size),
//! with strided rows in some cases (docs/architecture.md, the checks every kernel gets).
//!
//! Tolerances: `|got - want| <= tol * (|want| + rms(want row))`, tol = 1e-5 for f32 and 1e-2
//! for halves (inputs are rounded to the dtype first, so the reference sees exactly what the
//! kernel reads; the remaining error is f32 arithmetic and the output's rounding).
//! Outputs start poisoned (NaN) and the padding of strided rows must stay poisoned.

use half::{bf16, f16};
use kiln_codegen::cpu::{math, CpuIn, CpuOut, CpuOutArg, CpuParam, CpuScalar};
use kiln_codegen::ir::DType;
use kiln_models::kernels::{activation, epilogue, gather, norm, norm_quant, qk_norm_rope, rope, softmax};
use kiln_runtime::device::fused::FusedError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A host tensor of one storage dtype.
enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
    /// OCP FP8 e4m3 bytes.
    E4M3(Vec<u8>),
    /// int8 codes (-128, which no cast writes, stands for NaN).
    I8(Vec<i8>),
}

impl Data {
    /// `n` values of magnitude in `[lo, hi]` with random signs, rounded to `dtype`.
    fn random(rng: &mut StdRng, dtype: DType, n: usize, lo: f32, hi: f32) -> Data {
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let m = rng.random_range(lo..=hi);
                if rng.random_bool(0.5) {
                    m
                } else {
                    -m
                }
            })
            .collect();
        Data::from_f32(dtype, &v)
    }
    fn from_f32(dtype: DType, v: &[f32]) -> Data {
        match dtype {
            DType::F32 => Data::F32(v.to_vec()),
            DType::F16 => Data::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Data::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F8E4M3 => Data::E4M3(v.iter().map(|&x| math::f32_to_e4m3(x)).collect()),
            other => panic!("no float data of {other}"),
        }
    }
    /// NaN everywhere (for e4m3 the NaN byte 0x7f: the encoder saturates NaN to 448).
    fn poisoned(dtype: DType, n: usize) -> Data {
        match dtype {
            DType::F8E4M3 => Data::E4M3(vec![0x7f; n]),
            DType::I8 => Data::I8(vec![i8::MIN; n]),
            _ => Data::from_f32(dtype, &vec![f32::NAN; n]),
        }
    }
    fn as_in(&self) -> CpuIn<'_> {
        match self {
            Data::F32(v) => CpuIn::F32(v),
            Data::F16(v) => CpuIn::F16(v),
            Data::BF16(v) => CpuIn::BF16(v),
            Data::I32(v) => CpuIn::I32(v),
            Data::E4M3(v) => CpuIn::E4M3(v),
            Data::I8(v) => CpuIn::I8(v),
        }
    }
    fn as_out(&mut self) -> CpuOut<'_> {
        match self {
            Data::F32(v) => CpuOut::F32(v),
            Data::F16(v) => CpuOut::F16(v),
            Data::BF16(v) => CpuOut::BF16(v),
            Data::I32(v) => CpuOut::I32(v),
            Data::E4M3(v) => CpuOut::E4M3(v),
            Data::I8(v) => CpuOut::I8(v),
        }
    }
    fn to_f64(&self) -> Vec<f64> {
        match self {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F16(v) => v.iter().map(|&x| x.to_f64()).collect(),
            Data::BF16(v) => v.iter().map(|&x| x.to_f64()).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::E4M3(v) => v.iter().map(|&x| math::e4m3_to_f32(x) as f64).collect(),
            Data::I8(v) => v.iter().map(|&x| if x == i8::MIN { f64::NAN } else { x as f64 }).collect(),
        }
    }
}

/// One problem shape: `rows` rows of `width` columns, `stride` elements apart.
#[derive(Clone, Copy, Debug)]
struct Shape {
    rows: usize,
    width: usize,
    stride: usize,
}

impl Shape {
    fn len(&self) -> usize {
        (self.rows - 1) * self.stride + self.width
    }
    /// The rows of a strided buffer, without padding.
    fn rows<'a>(&self, v: &'a [f64]) -> impl Iterator<Item = &'a [f64]> + 'a {
        let s = *self;
        (0..s.rows).map(move |r| &v[r * s.stride..r * s.stride + s.width])
    }
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Widths: 1, odd, below and above a vector, 576 (SmolLM2 hidden), 1025 and 4099 (odd, long).
const SHAPES: [Shape; 8] = [
    Shape { rows: 3, width: 1, stride: 1 },
    Shape { rows: 4, width: 7, stride: 7 },
    Shape { rows: 2, width: 64, stride: 64 },
    Shape { rows: 3, width: 333, stride: 340 },
    Shape { rows: 5, width: 576, stride: 576 },
    Shape { rows: 2, width: 576, stride: 600 },
    Shape { rows: 2, width: 1025, stride: 1025 },
    Shape { rows: 2, width: 4099, stride: 4099 },
];

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

/// Compare a kernel output (strided, poisoned padding) with the reference rows.
fn check(what: &str, dtype: DType, shape: Shape, got: &Data, want: &[Vec<f64>], tol: f64) {
    let got = got.to_f64();
    for (r, (g, w)) in shape.rows(&got).zip(want).enumerate() {
        let rms = (w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64).sqrt();
        for (c, (g, w)) in g.iter().zip(w).enumerate() {
            let bound = tol * (w.abs() + rms);
            assert!(
                (g - w).abs() <= bound,
                "{what} {dtype} {shape:?}: row {r} col {c}: got {g}, want {w} (bound {bound})"
            );
        }
        if r + 1 < shape.rows {
            let pad = &got[r * shape.stride + shape.width..(r + 1) * shape.stride];
            assert!(pad.iter().all(|v| v.is_nan()), "{what} {dtype} {shape:?}: padding after row {r} was written");
        }
    }
}

/// Run `f` over every dtype × shape with a fixed seed per case.
fn for_each_case(f: impl Fn(&mut StdRng, DType, Shape)) {
    for (di, &dtype) in DTYPES.iter().enumerate() {
        for (si, &shape) in SHAPES.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64((di * 100 + si) as u64 + 1);
            f(&mut rng, dtype, shape);
        }
    }
}

fn row<'a>(d: &'a Data, s: Shape) -> CpuParam<'a> {
    CpuParam::row(d.as_in(), s.stride)
}
fn out<'a>(d: &'a mut Data, s: Shape) -> CpuOutArg<'a> {
    CpuOutArg::row(d.as_out(), s.stride)
}

#[test]
fn rms_norm_matches_ref() {
    for_each_case(|rng, dt, s| {
        let (x, w) = (Data::random(rng, dt, s.len(), 0.1, 2.0), Data::random(rng, dt, s.width, 0.5, 1.5));
        let eps = rng.random_range(1e-6f32..1e-4);
        let mut y = Data::poisoned(dt, s.len());
        let params = [row(&x, s), CpuParam::bcast(w.as_in()), CpuParam::Comptime(CpuScalar::F32(eps))];
        norm::rms_norm::cpu(dt, &params, &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let (xs, ws) = (x.to_f64(), w.to_f64());
        let want: Vec<_> = s.rows(&xs).map(|r| norm::rms_norm_ref(r, &ws, eps as f64)).collect();
        check("rms_norm", dt, s, &y, &want, tol(dt));
    });
}

#[test]
fn add_rms_norm_matches_ref() {
    for_each_case(|rng, dt, s| {
        let x = Data::random(rng, dt, s.len(), 0.1, 2.0);
        let res = Data::random(rng, dt, s.len(), 0.1, 2.0);
        let w = Data::random(rng, dt, s.width, 0.5, 1.5);
        let eps = rng.random_range(1e-6f32..1e-4);
        let (mut h, mut y) = (Data::poisoned(dt, s.len()), Data::poisoned(dt, s.len()));
        let params = [row(&x, s), row(&res, s), CpuParam::bcast(w.as_in()), CpuParam::Comptime(CpuScalar::F32(eps))];
        norm::add_rms_norm::cpu(dt, &params, &mut [out(&mut h, s), out(&mut y, s)], s.rows, s.width).unwrap();
        let (xs, rs, ws) = (x.to_f64(), res.to_f64(), w.to_f64());
        let (want_h, want_y): (Vec<_>, Vec<_>) =
            s.rows(&xs).zip(s.rows(&rs)).map(|(x, r)| norm::add_rms_norm_ref(x, r, &ws, eps as f64)).unzip();
        check("add_rms_norm.h", dt, s, &h, &want_h, tol(dt));
        check("add_rms_norm.y", dt, s, &y, &want_y, tol(dt));
    });
}

/// Per-token 8-bit output `(q, s)` against the reference row `y` and scale: `s` within f32
/// rounding, every `q · s` within half a step of `y` (e4m3: 2^-4 of the value in the normal
/// range, 2^-10 · s among the subnormals; int8: s / 2), and no byte a NaN; strided padding
/// untouched.
fn check_quant(what: &str, dtype: DType, shape: Shape, q: &Data, s: &[f32], want: &[(Vec<f64>, f64)]) {
    let got = q.to_f64();
    for (r, (g, (y, want_s))) in shape.rows(&got).zip(want).enumerate() {
        let got_s = s[r] as f64;
        assert!(
            (got_s - want_s).abs() <= 1e-5 * want_s,
            "{what} {dtype} {shape:?}: row {r} scale {got_s}, want {want_s}"
        );
        for (c, (g, y)) in g.iter().zip(y).enumerate() {
            let step = match q {
                Data::I8(_) => got_s / 2.0,
                _ => (y.abs() / 16.0).max(got_s / 1024.0),
            };
            let bound = 1.01 * step + 1e-5 * y.abs();
            assert!(
                (g * got_s - y).abs() <= bound,
                "{what} {dtype} {shape:?}: row {r} col {c}: q·s = {}, want {y} (bound {bound})",
                g * got_s
            );
        }
        if r + 1 < shape.rows {
            let pad = &got[r * shape.stride + shape.width..(r + 1) * shape.stride];
            assert!(pad.iter().all(|v| v.is_nan()), "{what} {dtype} {shape:?}: padding after row {r} was written");
        }
    }
}

/// A generated kernel's CPU entry point (`NAME::cpu`).
type CpuFn = fn(DType, &[CpuParam<'_>], &mut [CpuOutArg<'_>], usize, usize) -> Result<(), FusedError>;

/// `rms_norm_quant_{e4m3,i8}` (`codes`, range `top`) against the reference on every case.
fn check_rms_norm_quant(what: &str, cpu: CpuFn, codes: DType, top: f64) {
    for_each_case(|rng, dt, s| {
        let (x, w) = (Data::random(rng, dt, s.len(), 0.1, 2.0), Data::random(rng, dt, s.width, 0.5, 1.5));
        let eps = rng.random_range(1e-6f32..1e-4);
        let (mut q, mut scale) = (Data::poisoned(codes, s.len()), vec![f32::NAN; s.rows]);
        let params = [row(&x, s), CpuParam::bcast(w.as_in()), CpuParam::Comptime(CpuScalar::F32(eps))];
        let outs = &mut [out(&mut q, s), CpuOutArg::per_row(CpuOut::F32(&mut scale))];
        cpu(dt, &params, outs, s.rows, s.width).unwrap();
        let (xs, ws) = (x.to_f64(), w.to_f64());
        let want: Vec<_> = s.rows(&xs).map(|r| norm_quant::rms_norm_quant_ref(r, &ws, eps as f64, top)).collect();
        check_quant(what, dt, s, &q, &scale, &want);
    });
}

/// `add_rms_norm_quant_{e4m3,i8}` against the reference: the sum, then the quantized norm.
fn check_add_rms_norm_quant(what: &str, cpu: CpuFn, codes: DType, top: f64) {
    for_each_case(|rng, dt, s| {
        let [x, res] = [0; 2].map(|_| Data::random(rng, dt, s.len(), 0.1, 2.0));
        let w = Data::random(rng, dt, s.width, 0.5, 1.5);
        let eps = rng.random_range(1e-6f32..1e-4);
        let (mut h, mut q) = (Data::poisoned(dt, s.len()), Data::poisoned(codes, s.len()));
        let mut scale = vec![f32::NAN; s.rows];
        let params = [row(&x, s), row(&res, s), CpuParam::bcast(w.as_in()), CpuParam::Comptime(CpuScalar::F32(eps))];
        let outs = &mut [out(&mut h, s), out(&mut q, s), CpuOutArg::per_row(CpuOut::F32(&mut scale))];
        cpu(dt, &params, outs, s.rows, s.width).unwrap();
        let (xs, rs, ws) = (x.to_f64(), res.to_f64(), w.to_f64());
        let sums: Vec<Vec<f64>> =
            s.rows(&xs).zip(s.rows(&rs)).map(|(x, r)| x.iter().zip(r).map(|(a, b)| a + b).collect()).collect();
        // h is written in the storage dtype; the norm reads the f32 sum.
        check(&format!("{what}.h"), dt, s, &h, &sums, tol(dt));
        let want: Vec<_> = sums.iter().map(|h| norm_quant::rms_norm_quant_ref(h, &ws, eps as f64, top)).collect();
        check_quant(what, dt, s, &q, &scale, &want);
    });
}

#[test]
fn rms_norm_quant_matches_ref() {
    check_rms_norm_quant("rms_norm_quant_e4m3", norm_quant::rms_norm_quant_e4m3::cpu, DType::F8E4M3, 448.0);
    check_rms_norm_quant("rms_norm_quant_i8", norm_quant::rms_norm_quant_i8::cpu, DType::I8, 127.0);
}

#[test]
fn add_rms_norm_quant_matches_ref() {
    let (e4m3, i8) = (norm_quant::add_rms_norm_quant_e4m3::cpu, norm_quant::add_rms_norm_quant_i8::cpu);
    check_add_rms_norm_quant("add_rms_norm_quant_e4m3", e4m3, DType::F8E4M3, 448.0);
    check_add_rms_norm_quant("add_rms_norm_quant_i8", i8, DType::I8, 127.0);
}

/// A zero row quantizes to zero bytes with scale 1 (no division by zero, no NaN); a row whose
/// largest value is far past 448 still fits (the scale takes it).
#[test]
fn rms_norm_quant_e4m3_zero_and_large_rows() {
    let (width, eps) = (64, 1e-6f32);
    let mut x = vec![0f32; width];
    x.extend((0..width).map(|i| if i == 5 { 3.0e4 } else { (i as f32 - 30.0) * 0.01 }));
    let w = vec![1f32; width];
    let (mut q, mut scale) = (vec![0x55u8; 2 * width], vec![f32::NAN; 2]);
    let params = [
        CpuParam::row(CpuIn::F32(&x), width),
        CpuParam::bcast(CpuIn::F32(&w)),
        CpuParam::Comptime(CpuScalar::F32(eps)),
    ];
    let outs = &mut [CpuOutArg::row(CpuOut::E4M3(&mut q), width), CpuOutArg::per_row(CpuOut::F32(&mut scale))];
    norm_quant::rms_norm_quant_e4m3::cpu(DType::F32, &params, outs, 2, width).unwrap();
    assert_eq!(scale[0], 1.0);
    assert!(q[..width].iter().all(|&b| b == 0), "zero row: {:?}", &q[..width]);
    assert_eq!(q[width + 5], 0x7e, "the row maximum is e4m3's largest value, 448");
    assert!(q[width..].iter().all(|&b| b & 0x7f != 0x7f), "no NaN byte");
}

/// The same for int8: a zero row gives zero codes and scale 1, the row maximum the code 127.
#[test]
fn rms_norm_quant_i8_zero_and_large_rows() {
    let (width, eps) = (64, 1e-6f32);
    let mut x = vec![0f32; width];
    x.extend((0..width).map(|i| if i == 5 { -3.0e4 } else { (i as f32 - 30.0) * 0.01 }));
    let w = vec![1f32; width];
    let (mut q, mut scale) = (vec![0x55i8; 2 * width], vec![f32::NAN; 2]);
    let params = [
        CpuParam::row(CpuIn::F32(&x), width),
        CpuParam::bcast(CpuIn::F32(&w)),
        CpuParam::Comptime(CpuScalar::F32(eps)),
    ];
    let outs = &mut [CpuOutArg::row(CpuOut::I8(&mut q), width), CpuOutArg::per_row(CpuOut::F32(&mut scale))];
    norm_quant::rms_norm_quant_i8::cpu(DType::F32, &params, outs, 2, width).unwrap();
    assert_eq!(scale[0], 1.0);
    assert!(q[..width].iter().all(|&b| b == 0), "zero row: {:?}", &q[..width]);
    assert_eq!(q[width + 5], -127, "the row maximum is the range's end");
    assert!(q[width..].iter().all(|&b| b != i8::MIN), "no code outside ±127");
}

#[test]
fn layer_norm_matches_ref() {
    for_each_case(|rng, dt, s| {
        let x = Data::random(rng, dt, s.len(), 0.1, 2.0);
        let (w, b) = (Data::random(rng, dt, s.width, 0.5, 1.5), Data::random(rng, dt, s.width, 0.1, 1.0));
        let eps = rng.random_range(1e-6f32..1e-4);
        let mut y = Data::poisoned(dt, s.len());
        let params = [
            row(&x, s),
            CpuParam::bcast(w.as_in()),
            CpuParam::bcast(b.as_in()),
            CpuParam::Comptime(CpuScalar::F32(eps)),
        ];
        norm::layer_norm::cpu(dt, &params, &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let (xs, ws, bs) = (x.to_f64(), w.to_f64(), b.to_f64());
        let want: Vec<_> = s.rows(&xs).map(|r| norm::layer_norm_ref(r, &ws, &bs, eps as f64)).collect();
        check("layer_norm", dt, s, &y, &want, tol(dt));
    });
}

#[test]
fn add2_layer_norm_matches_ref() {
    for_each_case(|rng, dt, s| {
        let [a, b, res] = [0; 3].map(|_| Data::random(rng, dt, s.len(), 0.1, 2.0));
        let (w, bias) = (Data::random(rng, dt, s.width, 0.5, 1.5), Data::random(rng, dt, s.width, 0.1, 1.0));
        let eps = rng.random_range(1e-6f32..1e-4);
        let (mut h, mut y) = (Data::poisoned(dt, s.len()), Data::poisoned(dt, s.len()));
        let params = [
            row(&a, s),
            row(&b, s),
            row(&res, s),
            CpuParam::bcast(w.as_in()),
            CpuParam::bcast(bias.as_in()),
            CpuParam::Comptime(CpuScalar::F32(eps)),
        ];
        norm::add2_layer_norm::cpu(dt, &params, &mut [out(&mut h, s), out(&mut y, s)], s.rows, s.width).unwrap();
        let (as_, bs, rs, ws, biases) = (a.to_f64(), b.to_f64(), res.to_f64(), w.to_f64(), bias.to_f64());
        let (want_h, want_y): (Vec<_>, Vec<_>) = s
            .rows(&as_)
            .zip(s.rows(&bs))
            .zip(s.rows(&rs))
            .map(|((a, b), r)| norm::add2_layer_norm_ref(a, b, r, &ws, &biases, eps as f64))
            .unzip();
        check("add2_layer_norm.h", dt, s, &h, &want_h, tol(dt));
        check("add2_layer_norm.y", dt, s, &y, &want_y, tol(dt));
    });
}

/// The two gated activations share their harness.
fn gated(name: &str, cpu: GatedCpu, reference: fn(&[f64], &[f64]) -> Vec<f64>) {
    for_each_case(|rng, dt, s| {
        let (g, u) = (Data::random(rng, dt, s.len(), 0.05, 6.0), Data::random(rng, dt, s.len(), 0.1, 2.0));
        let mut y = Data::poisoned(dt, s.len());
        cpu(dt, &[row(&g, s), row(&u, s)], &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let (gs, us) = (g.to_f64(), u.to_f64());
        let want: Vec<_> = s.rows(&gs).zip(s.rows(&us)).map(|(g, u)| reference(g, u)).collect();
        check(name, dt, s, &y, &want, tol(dt));
    });
}

type GatedCpu = fn(
    DType,
    &[CpuParam<'_>],
    &mut [CpuOutArg<'_>],
    usize,
    usize,
) -> Result<(), kiln_runtime::device::fused::FusedError>;

#[test]
fn silu_mul_matches_ref() {
    gated("silu_mul", activation::silu_mul::cpu, activation::silu_mul_ref);
}

#[test]
fn gelu_tanh_mul_matches_ref() {
    gated("gelu_tanh_mul", activation::gelu_tanh_mul::cpu, activation::gelu_tanh_mul_ref);
}

#[test]
fn gelu_matches_ref() {
    for_each_case(|rng, dt, s| {
        // `1 + erf(x/√2)` cancels for x ≪ 0 in f32 (as in PyTorch's own f32 GELU): the error is
        // ~1e-8 absolute there, which `check` measures against the row's scale; a one-column
        // row has no scale but its own tiny value, so it is left out.
        if s.width == 1 {
            return;
        }
        let x = Data::random(rng, dt, s.len(), 0.05, 6.0);
        let mut y = Data::poisoned(dt, s.len());
        activation::gelu::cpu(dt, &[row(&x, s)], &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let want: Vec<_> = s.rows(&x.to_f64()).map(activation::gelu_ref).collect();
        check("gelu", dt, s, &y, &want, tol(dt));
    });
}

#[test]
fn scale_and_softcap_match_ref() {
    for_each_case(|rng, dt, s| {
        let x = Data::random(rng, dt, s.len(), 0.1, 40.0);
        let xs = x.to_f64();
        let mut y = Data::poisoned(dt, s.len());
        let sc = CpuParam::Comptime(CpuScalar::F32(8.0));
        epilogue::scale::cpu(dt, &[row(&x, s), sc], &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let want: Vec<_> = s.rows(&xs).map(|r| epilogue::scale_ref(r, 8.0)).collect();
        check("scale", dt, s, &y, &want, tol(dt));
        let mut y = Data::poisoned(dt, s.len());
        let cap = CpuParam::Comptime(CpuScalar::F32(30.0));
        epilogue::softcap::cpu(dt, &[row(&x, s), cap], &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let want: Vec<_> = s.rows(&xs).map(|r| epilogue::softcap_ref(r, 30.0)).collect();
        check("softcap", dt, s, &y, &want, tol(dt));
    });
}

#[test]
fn softmax_matches_ref() {
    for_each_case(|rng, dt, s| {
        let x = Data::random(rng, dt, s.len(), 0.1, 8.0);
        let mut y = Data::poisoned(DType::F32, s.len());
        softmax::softmax::cpu(dt, &[row(&x, s)], &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let xs = x.to_f64();
        let want: Vec<_> = s.rows(&xs).map(softmax::softmax_ref).collect();
        // The output is f32 whatever the input dtype, and the reference reads the rounded input.
        check("softmax", dt, s, &y, &want, 1e-5);
    });
}

#[test]
fn bias_add_matches_ref() {
    for_each_case(|rng, dt, s| {
        let (x, b) = (Data::random(rng, dt, s.len(), 0.1, 4.0), Data::random(rng, dt, s.width, 0.1, 4.0));
        let mut y = Data::poisoned(dt, s.len());
        epilogue::bias_add::cpu(dt, &[row(&x, s), CpuParam::bcast(b.as_in())], &mut [out(&mut y, s)], s.rows, s.width)
            .unwrap();
        let (xs, bs) = (x.to_f64(), b.to_f64());
        let want: Vec<_> = s.rows(&xs).map(|r| epilogue::bias_add_ref(r, &bs)).collect();
        check("bias_add", dt, s, &y, &want, tol(dt));
    });
}

#[test]
fn residual_add_matches_ref() {
    for_each_case(|rng, dt, s| {
        let (x, r) = (Data::random(rng, dt, s.len(), 0.1, 4.0), Data::random(rng, dt, s.len(), 0.1, 4.0));
        let mut y = Data::poisoned(dt, s.len());
        epilogue::residual_add::cpu(dt, &[row(&x, s), row(&r, s)], &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let (xs, rs) = (x.to_f64(), r.to_f64());
        let want: Vec<_> = s.rows(&xs).zip(s.rows(&rs)).map(|(x, r)| epilogue::residual_add_ref(x, r)).collect();
        check("residual_add", dt, s, &y, &want, tol(dt));
    });
}

/// Widening is exact, so `cast_to_f32` must reproduce its input bit for bit.
#[test]
fn cast_to_f32_is_exact() {
    for_each_case(|rng, dt, s| {
        let x = Data::random(rng, dt, s.len(), 1e-3, 1e3);
        let mut y = Data::poisoned(DType::F32, s.len());
        epilogue::cast_to_f32::cpu(dt, &[row(&x, s)], &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let xs = x.to_f64();
        let want: Vec<_> = s.rows(&xs).map(epilogue::cast_ref).collect();
        check("cast_to_f32", dt, s, &y, &want, 0.0);
    });
}

/// Narrowing rounds to nearest-even: the result must equal `half`'s conversion exactly, and
/// be within the dtype's tolerance of the reference.
#[test]
fn cast_from_f32_rounds_to_nearest_even() {
    for_each_case(|rng, dt, s| {
        let x = Data::random(rng, DType::F32, s.len(), 1e-3, 1e3);
        let mut y = Data::poisoned(dt, s.len());
        epilogue::cast_from_f32::cpu(dt, &[row(&x, s)], &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let Data::F32(xv) = &x else { unreachable!() };
        let rounded: Vec<f64> = Data::from_f32(dt, xv).to_f64();
        let want_exact: Vec<_> = s.rows(&rounded).map(|r| r.to_vec()).collect();
        check("cast_from_f32 (exact rounding)", dt, s, &y, &want_exact, 0.0);
        let xs = x.to_f64();
        let want: Vec<_> = s.rows(&xs).map(epilogue::cast_ref).collect();
        check("cast_from_f32", dt, s, &y, &want, tol(dt));
    });
}

/// RoPE shapes: `(head_dim, n_heads, stride padding)`; SmolLM2 has head_dim 64 and 9 query
/// heads (576 columns); head_dim 10 and 2 are small unaligned cases.
const ROPE_SHAPES: [(usize, usize, usize); 5] = [(64, 9, 0), (64, 1, 8), (128, 2, 0), (10, 5, 3), (2, 3, 0)];

/// Run a rope kernel over every dtype × shape with positions below `max_pos`.
fn rope_cases(
    name: &str,
    max_pos: i32,
    tol_f32: f64,
    run: impl Fn(DType, &[CpuParam<'_>], &mut [CpuOutArg<'_>], usize, usize),
    comptime: &[CpuScalar],
    reference: impl Fn(&[f64], i32, usize) -> Vec<f64>,
) {
    for (di, &dt) in DTYPES.iter().enumerate() {
        for (si, &(head_dim, heads, pad)) in ROPE_SHAPES.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64((di * 100 + si) as u64 + 7);
            let width = head_dim * heads;
            let s = Shape { rows: 6, width, stride: width + pad };
            let x = Data::random(&mut rng, dt, s.len(), 0.1, 2.0);
            let pos: Vec<i32> = (0..s.rows).map(|_| rng.random_range(1..max_pos)).collect();
            let pos_data = Data::I32(pos.clone());
            let mut y = Data::poisoned(dt, s.len());
            let mut params = vec![row(&x, s), CpuParam::per_row(pos_data.as_in())];
            params.push(CpuParam::Comptime(comptime[0]));
            params.push(CpuParam::Comptime(CpuScalar::I32(head_dim as i32)));
            params.extend(comptime[1..].iter().map(|&c| CpuParam::Comptime(c)));
            run(dt, &params, &mut [out(&mut y, s)], s.rows, s.width);
            let xs = x.to_f64();
            let want: Vec<_> = s.rows(&xs).zip(&pos).map(|(r, &p)| reference(r, p, head_dim)).collect();
            let t = if dt == DType::F32 { tol_f32 } else { tol(dt) };
            check(name, dt, s, &y, &want, t);
        }
    }
}

const THETA: f32 = 10000.0;

/// Positions below 48 keep the f32 angle `pos * inv_freq` within 1e-5 of exact.
#[test]
fn rope_half_matches_ref() {
    rope_cases(
        "rope_half",
        48,
        1e-5,
        |dt, p, o, r, w| rope::rope_half::cpu(dt, p, o, r, w).unwrap(),
        &[CpuScalar::F32(THETA)],
        |x, pos, hd| rope::rope_half_ref(x, pos, THETA as f64, hd),
    );
}

#[test]
fn rope_interleaved_matches_ref() {
    rope_cases(
        "rope_interleaved",
        48,
        1e-5,
        |dt, p, o, r, w| rope::rope_interleaved::cpu(dt, p, o, r, w).unwrap(),
        &[CpuScalar::F32(THETA)],
        |x, pos, hd| rope::rope_interleaved_ref(x, pos, THETA as f64, hd),
    );
}

/// Llama-3.1's published scaling (theta 500000, factor 8, low 1, high 4, original 8192).
const LLAMA3: rope::Llama3Scaling =
    rope::Llama3Scaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192.0 };

fn llama3_scalars() -> [CpuScalar; 5] {
    [
        CpuScalar::F32(500000.0),
        CpuScalar::F32(LLAMA3.factor as f32),
        CpuScalar::F32(LLAMA3.low_freq_factor as f32),
        CpuScalar::F32(LLAMA3.high_freq_factor as f32),
        CpuScalar::F32(LLAMA3.original_max_position as f32),
    ]
}

#[test]
fn rope_half_llama3_matches_ref() {
    rope_cases(
        "rope_half_llama3",
        48,
        1e-5,
        |dt, p, o, r, w| rope::rope_half_llama3::cpu(dt, p, o, r, w).unwrap(),
        &llama3_scalars(),
        |x, pos, hd| rope::rope_half_llama3_ref(x, pos, 500000.0, hd, LLAMA3),
    );
}

/// At long-context positions the f32 angle `pos * inv_freq` is off by up to half an ulp of
/// `pos` radians (2.4e-4 at 4096), so f32 is held to 1e-3 there; halves keep 1e-2.
#[test]
fn rope_at_long_context_positions() {
    rope_cases(
        "rope_half (long context)",
        8192,
        1e-3,
        |dt, p, o, r, w| rope::rope_half::cpu(dt, p, o, r, w).unwrap(),
        &[CpuScalar::F32(THETA)],
        |x, pos, hd| rope::rope_half_ref(x, pos, THETA as f64, hd),
    );
    rope_cases(
        "rope_half_llama3 (long context)",
        8192,
        1e-3,
        |dt, p, o, r, w| rope::rope_half_llama3::cpu(dt, p, o, r, w).unwrap(),
        &llama3_scalars(),
        |x, pos, hd| rope::rope_half_llama3_ref(x, pos, 500000.0, hd, LLAMA3),
    );
}

/// `rope_kv_write(_llama3)`: K rotated and V copied into the cache rows named by `slot`, in a
/// shuffled order with one negative slot (skipped); every untouched cache row stays poisoned.
fn kv_write_cases(
    name: &str,
    run: impl Fn(DType, &[CpuParam<'_>], &mut [CpuOutArg<'_>], usize, usize),
    comptime: &[CpuScalar],
    reference: impl Fn(&[f64], i32, usize) -> Vec<f64>,
) {
    for (di, &dt) in DTYPES.iter().enumerate() {
        for (si, &(head_dim, heads, pad)) in ROPE_SHAPES.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64((di * 100 + si) as u64 + 11);
            let width = head_dim * heads;
            let s = Shape { rows: 5, width, stride: width + pad };
            let cache_rows = 9;
            let cache = Shape { rows: cache_rows, width, stride: width };
            let k = Data::random(&mut rng, dt, s.len(), 0.1, 2.0);
            let v = Data::random(&mut rng, dt, s.len(), 0.1, 2.0);
            let pos: Vec<i32> = (0..s.rows).map(|_| rng.random_range(1..48)).collect();
            let slot = vec![7, 2, -1, 0, 5];
            let (pos_d, slot_d) = (Data::I32(pos.clone()), Data::I32(slot.clone()));
            let mut kc = Data::poisoned(dt, cache.len());
            let mut vc = Data::poisoned(dt, cache.len());
            let mut params =
                vec![row(&k, s), row(&v, s), CpuParam::per_row(pos_d.as_in()), CpuParam::per_row(slot_d.as_in())];
            params.push(CpuParam::Comptime(comptime[0]));
            params.push(CpuParam::Comptime(CpuScalar::I32(head_dim as i32)));
            params.extend(comptime[1..].iter().map(|&c| CpuParam::Comptime(c)));
            run(dt, &params, &mut [out(&mut kc, cache), out(&mut vc, cache)], s.rows, s.width);
            let (ks, vs) = (k.to_f64(), v.to_f64());
            let (kc, vc) = (kc.to_f64(), vc.to_f64());
            let krows: Vec<&[f64]> = s.rows(&ks).collect();
            let vrows: Vec<&[f64]> = s.rows(&vs).collect();
            for c in 0..cache_rows {
                let (kg, vg) = (&kc[c * width..(c + 1) * width], &vc[c * width..(c + 1) * width]);
                match slot.iter().position(|&x| x == c as i32) {
                    None => assert!(kg.iter().chain(vg).all(|x| x.is_nan()), "{name} {dt}: cache row {c} was written"),
                    Some(r) => {
                        let one = Shape { rows: 1, width, stride: width };
                        let want_k = reference(krows[r], pos[r], head_dim);
                        check(
                            name,
                            dt,
                            one,
                            &Data::from_f32(DType::F32, &kg.iter().map(|&x| x as f32).collect::<Vec<_>>()),
                            &[want_k],
                            tol(dt),
                        );
                        assert_eq!(vg, vrows[r], "{name} {dt}: V of token {r} is not copied exactly");
                    }
                }
            }
        }
    }
}

#[test]
fn rope_kv_write_matches_ref() {
    kv_write_cases(
        "rope_kv_write",
        |dt, p, o, r, w| rope::rope_kv_write::cpu(dt, p, o, r, w).unwrap(),
        &[CpuScalar::F32(THETA)],
        |x, pos, hd| rope::rope_half_ref(x, pos, THETA as f64, hd),
    );
}

#[test]
fn rope_kv_write_llama3_matches_ref() {
    kv_write_cases(
        "rope_kv_write_llama3",
        |dt, p, o, r, w| rope::rope_kv_write_llama3::cpu(dt, p, o, r, w).unwrap(),
        &llama3_scalars(),
        |x, pos, hd| rope::rope_half_llama3_ref(x, pos, 500000.0, hd, LLAMA3),
    );
}

/// `x + bias` per column, the biased projection the `_bias` rope kernels rotate.
fn biased(x: &[f64], b: &[f64]) -> Vec<f64> {
    x.iter().zip(b).map(|(x, b)| x + b).collect()
}

/// Qwen2's q: the bias add inside the rotation equals rotating the biased row.
#[test]
fn rope_half_bias_matches_ref() {
    for (di, &dt) in DTYPES.iter().enumerate() {
        for (si, &(head_dim, heads, pad)) in ROPE_SHAPES.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64((di * 100 + si) as u64 + 13);
            let width = head_dim * heads;
            let s = Shape { rows: 6, width, stride: width + pad };
            let (x, b) = (Data::random(&mut rng, dt, s.len(), 0.1, 2.0), Data::random(&mut rng, dt, width, -1.0, 1.0));
            let pos: Vec<i32> = (0..s.rows).map(|_| rng.random_range(1..48)).collect();
            let pos_d = Data::I32(pos.clone());
            let mut y = Data::poisoned(dt, s.len());
            let params = [
                row(&x, s),
                CpuParam::bcast(b.as_in()),
                CpuParam::per_row(pos_d.as_in()),
                CpuParam::Comptime(CpuScalar::F32(THETA)),
                CpuParam::Comptime(CpuScalar::I32(head_dim as i32)),
            ];
            rope::rope_half_bias::cpu(dt, &params, &mut [out(&mut y, s)], s.rows, width).unwrap();
            let (xs, bs) = (x.to_f64(), b.to_f64());
            let want: Vec<_> = s
                .rows(&xs)
                .zip(&pos)
                .map(|(r, &p)| rope::rope_half_ref(&biased(r, &bs), p, THETA as f64, head_dim))
                .collect();
            let t = if dt == DType::F32 { 1e-5 } else { tol(dt) };
            check("rope_half_bias", dt, s, &y, &want, t);
        }
    }
}

/// Qwen2's k and v: `k + bias_k` rotated and `v + bias_v` written to the cache rows of `slot`
/// (a negative slot skips its token; untouched rows stay poisoned).
#[test]
fn rope_kv_write_bias_matches_ref() {
    for (di, &dt) in DTYPES.iter().enumerate() {
        for (si, &(head_dim, heads, pad)) in ROPE_SHAPES.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64((di * 100 + si) as u64 + 17);
            let width = head_dim * heads;
            let s = Shape { rows: 4, width, stride: width + pad };
            let cache = Shape { rows: 6, width, stride: width };
            let (k, v) = (Data::random(&mut rng, dt, s.len(), 0.1, 2.0), Data::random(&mut rng, dt, s.len(), 0.1, 2.0));
            let (bk, bv) = (Data::random(&mut rng, dt, width, -1.0, 1.0), Data::random(&mut rng, dt, width, -1.0, 1.0));
            let pos: Vec<i32> = (0..s.rows).map(|_| rng.random_range(1..48)).collect();
            let slot = vec![5, -1, 0, 3];
            let (pos_d, slot_d) = (Data::I32(pos.clone()), Data::I32(slot.clone()));
            let (mut kc, mut vc) = (Data::poisoned(dt, cache.len()), Data::poisoned(dt, cache.len()));
            let params = [
                row(&k, s),
                row(&v, s),
                CpuParam::bcast(bk.as_in()),
                CpuParam::bcast(bv.as_in()),
                CpuParam::per_row(pos_d.as_in()),
                CpuParam::per_row(slot_d.as_in()),
                CpuParam::Comptime(CpuScalar::F32(THETA)),
                CpuParam::Comptime(CpuScalar::I32(head_dim as i32)),
            ];
            rope::rope_kv_write_bias::cpu(dt, &params, &mut [out(&mut kc, cache), out(&mut vc, cache)], s.rows, width)
                .unwrap();
            let (ks, vs, bks, bvs) = (k.to_f64(), v.to_f64(), bk.to_f64(), bv.to_f64());
            let (krows, vrows): (Vec<&[f64]>, Vec<&[f64]>) = (s.rows(&ks).collect(), s.rows(&vs).collect());
            let t = if dt == DType::F32 { 1e-5 } else { tol(dt) };
            let one = Shape { rows: 1, width, stride: width };
            let cache_row = |d: &Data, c: usize| {
                Data::from_f32(
                    DType::F32,
                    &d.to_f64()[c * width..(c + 1) * width].iter().map(|&x| x as f32).collect::<Vec<_>>(),
                )
            };
            for c in 0..cache.rows {
                let (kg, vg) = (cache_row(&kc, c), cache_row(&vc, c));
                match slot.iter().position(|&x| x == c as i32) {
                    None => assert!(
                        kg.to_f64().iter().chain(&vg.to_f64()).all(|x| x.is_nan()),
                        "{dt}: cache row {c} written"
                    ),
                    Some(r) => {
                        let want_k = rope::rope_half_ref(&biased(krows[r], &bks), pos[r], THETA as f64, head_dim);
                        check("rope_kv_write_bias k", dt, one, &kg, &[want_k], t);
                        check("rope_kv_write_bias v", dt, one, &vg, &[biased(vrows[r], &bvs)], t);
                    }
                }
            }
        }
    }
}

/// Qwen3 / Gemma 3: one row per (token, head) of the fused projection; each head is normed
/// (with `wq` or `wk`), rotated and stored where its row says — q into the query buffer, k and v
/// into the cache (a value head unnormed and exact) — and nothing else is written.
fn qk_norm_rope_cases(name: &str, llama3: bool) {
    let (nh, nkv, tokens) = (2usize, 1usize, 3usize);
    let all = nh + 2 * nkv;
    for (di, &dt) in DTYPES.iter().enumerate() {
        for (si, &hd) in [64usize, 10, 2].iter().enumerate() {
            let mut rng = StdRng::seed_from_u64((di * 100 + si) as u64 + 19);
            let s = Shape { rows: tokens * all, width: hd, stride: hd };
            let x = Data::random(&mut rng, dt, s.len(), -2.0, 2.0);
            let (wq, wk) = (Data::random(&mut rng, dt, hd, 0.5, 1.5), Data::random(&mut rng, dt, hd, 0.5, 1.5));
            let (pos, slot) = (vec![3, 17, 40], vec![4, -1, 1]);
            let (mut hpos, mut qr, mut kr, mut vr) = (vec![], vec![], vec![], vec![]);
            for t in 0..tokens {
                for h in 0..all {
                    hpos.push(pos[t]);
                    qr.push(if h < nh { (t * nh + h) as i32 } else { -1 });
                    let cache = |j: usize| if slot[t] < 0 { -1 } else { slot[t] * nkv as i32 + j as i32 };
                    kr.push(if (nh..nh + nkv).contains(&h) { cache(h - nh) } else { -1 });
                    vr.push(if h >= nh + nkv { cache(h - nh - nkv) } else { -1 });
                }
            }
            let qs = Shape { rows: tokens * nh, width: hd, stride: hd };
            let cs = Shape { rows: 6 * nkv, width: hd, stride: hd };
            let (mut q, mut kc, mut vc) =
                (Data::poisoned(dt, qs.len()), Data::poisoned(dt, cs.len()), Data::poisoned(dt, cs.len()));
            let eps = 1e-6f32;
            let mut params = vec![
                row(&x, s),
                CpuParam::bcast(wq.as_in()),
                CpuParam::bcast(wk.as_in()),
                CpuParam::per_row(CpuIn::I32(&hpos)),
                CpuParam::per_row(CpuIn::I32(&qr)),
                CpuParam::per_row(CpuIn::I32(&kr)),
                CpuParam::per_row(CpuIn::I32(&vr)),
                CpuParam::Comptime(CpuScalar::F32(eps)),
            ];
            let theta = if llama3 { 500000.0 } else { THETA };
            params.push(CpuParam::Comptime(CpuScalar::F32(theta)));
            params.push(CpuParam::Comptime(CpuScalar::I32(hd as i32)));
            if llama3 {
                params.extend(llama3_scalars()[1..].iter().map(|&c| CpuParam::Comptime(c)));
            }
            let mut outs = [out(&mut q, qs), out(&mut kc, cs), out(&mut vc, cs)];
            let run = if llama3 {
                qk_norm_rope::qk_norm_rope_write_llama3::cpu
            } else {
                qk_norm_rope::qk_norm_rope_write::cpu
            };
            run(dt, &params, &mut outs, s.rows, hd).unwrap();
            let (xs, wqs, wks) = (x.to_f64(), wq.to_f64(), wk.to_f64());
            let rot = |r: &[f64], p: i32| match llama3 {
                true => rope::rope_half_llama3_ref(r, p, 500000.0, hd, LLAMA3),
                false => rope::rope_half_ref(r, p, THETA as f64, hd),
            };
            let one = Shape { rows: 1, width: hd, stride: hd };
            let t = if dt == DType::F32 { 1e-5 } else { tol(dt) };
            let row_of = |d: &Data, r: usize| {
                Data::from_f32(
                    DType::F32,
                    &d.to_f64()[r * hd..(r + 1) * hd].iter().map(|&v| v as f32).collect::<Vec<_>>(),
                )
            };
            let mut written = (vec![false; qs.rows], vec![false; cs.rows], vec![false; cs.rows]);
            for (r, xr) in s.rows(&xs).enumerate() {
                let kind = (r % all >= nh) as i32 + (r % all >= nh + nkv) as i32;
                let normed = norm::head_rms_norm_ref(xr, &wqs, &wks, kind, eps as f64);
                if qr[r] >= 0 {
                    check(name, dt, one, &row_of(&q, qr[r] as usize), &[rot(&normed, hpos[r])], t);
                    written.0[qr[r] as usize] = true;
                }
                if kr[r] >= 0 {
                    check(name, dt, one, &row_of(&kc, kr[r] as usize), &[rot(&normed, hpos[r])], t);
                    written.1[kr[r] as usize] = true;
                }
                if vr[r] >= 0 {
                    assert_eq!(
                        row_of(&vc, vr[r] as usize).to_f64(),
                        xr,
                        "{name} {dt}: value head {r} is copied exactly"
                    );
                    written.2[vr[r] as usize] = true;
                }
            }
            for (d, w) in [(&q, &written.0), (&kc, &written.1), (&vc, &written.2)] {
                for (r, _) in w.iter().enumerate().filter(|(_, w)| !**w) {
                    assert!(row_of(d, r).to_f64().iter().all(|v| v.is_nan()), "{name} {dt}: row {r} written");
                }
            }
        }
    }
}

#[test]
fn qk_norm_rope_write_matches_ref() {
    qk_norm_rope_cases("qk_norm_rope_write", false);
}

#[test]
fn qk_norm_rope_write_llama3_matches_ref() {
    qk_norm_rope_cases("qk_norm_rope_write_llama3", true);
}

/// A frequency table for `rope_half_table`: per pair, LongRoPE-like `1 / (f_i * theta^(2i/rd))`
/// over the first `rd = 3/4 head_dim` dims (rounded to pairs) and 0 (pass-through) for the
/// rest; tiled per head over `width` columns as the loader writes it. Returns (pairs, tiled).
fn freq_table(rng: &mut StdRng, head_dim: usize, width: usize) -> (Vec<f64>, Vec<f32>) {
    let half = head_dim / 2;
    let rot_pairs = (3 * half).div_ceil(4);
    let pairs: Vec<f64> = (0..half)
        .map(|i| {
            if i < rot_pairs {
                let f = rng.random_range(1.0..4.0f32) as f64;
                (1.0 / (f * (THETA as f64).powf(2.0 * i as f64 / (2 * rot_pairs) as f64))) as f32 as f64
            } else {
                0.0
            }
        })
        .collect();
    let tiled = (0..width).map(|c| pairs[(c % head_dim) % half] as f32).collect();
    (pairs, tiled)
}

#[test]
fn rope_half_table_matches_ref() {
    for (di, &dt) in DTYPES.iter().enumerate() {
        for (si, &(head_dim, heads, pad)) in ROPE_SHAPES.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64((di * 100 + si) as u64 + 13);
            let width = head_dim * heads;
            let s = Shape { rows: 6, width, stride: width + pad };
            let x = Data::random(&mut rng, dt, s.len(), 0.1, 2.0);
            let (pairs, tiled) = freq_table(&mut rng, head_dim, width);
            let pos: Vec<i32> = (0..s.rows).map(|_| rng.random_range(1..48)).collect();
            let (pos_d, tab) = (Data::I32(pos.clone()), Data::F32(tiled));
            let mut y = Data::poisoned(dt, s.len());
            let params = [
                row(&x, s),
                CpuParam::per_row(pos_d.as_in()),
                CpuParam::bcast(tab.as_in()),
                CpuParam::Comptime(CpuScalar::I32(head_dim as i32)),
            ];
            rope::rope_half_table::cpu(dt, &params, &mut [out(&mut y, s)], s.rows, s.width).unwrap();
            let xs = x.to_f64();
            let want: Vec<_> =
                s.rows(&xs).zip(&pos).map(|(r, &p)| rope::rope_half_table_ref(r, p, &pairs, head_dim)).collect();
            check("rope_half_table", dt, s, &y, &want, tol(dt));
        }
    }
}

/// The table kernel with every pair at the formula's frequency is `rope_half`.
#[test]
fn rope_half_table_of_the_formula_is_rope_half() {
    let (head_dim, heads) = (64, 3);
    let width = head_dim * heads;
    let s = Shape { rows: 4, width, stride: width };
    let mut rng = StdRng::seed_from_u64(5);
    let x = Data::random(&mut rng, DType::F32, s.len(), 0.1, 2.0);
    let pos_d = Data::I32(vec![0, 1, 17, 47]);
    let inv = |i: usize| 1.0 / THETA.powf((2 * i) as f32 / head_dim as f32);
    let tab = Data::F32((0..width).map(|c| inv((c % head_dim) % (head_dim / 2))).collect());
    let (mut a, mut b) = (Data::poisoned(DType::F32, s.len()), Data::poisoned(DType::F32, s.len()));
    let hd = CpuParam::Comptime(CpuScalar::I32(head_dim as i32));
    let p = [row(&x, s), CpuParam::per_row(pos_d.as_in()), CpuParam::bcast(tab.as_in()), hd];
    rope::rope_half_table::cpu(DType::F32, &p, &mut [out(&mut a, s)], s.rows, width).unwrap();
    let p = [row(&x, s), CpuParam::per_row(pos_d.as_in()), CpuParam::Comptime(CpuScalar::F32(THETA)), hd];
    rope::rope_half::cpu(DType::F32, &p, &mut [out(&mut b, s)], s.rows, width).unwrap();
    assert_eq!(a.to_f64(), b.to_f64());
}

#[test]
fn rope_kv_write_table_matches_ref() {
    for (di, &dt) in DTYPES.iter().enumerate() {
        for (si, &(head_dim, heads, pad)) in ROPE_SHAPES.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64((di * 100 + si) as u64 + 17);
            let width = head_dim * heads;
            let s = Shape { rows: 5, width, stride: width + pad };
            let cache = Shape { rows: 9, width, stride: width };
            let k = Data::random(&mut rng, dt, s.len(), 0.1, 2.0);
            let v = Data::random(&mut rng, dt, s.len(), 0.1, 2.0);
            let (pairs, tiled) = freq_table(&mut rng, head_dim, width);
            let pos: Vec<i32> = (0..s.rows).map(|_| rng.random_range(1..48)).collect();
            let slot = vec![7, 2, -1, 0, 5];
            let (pos_d, slot_d, tab) = (Data::I32(pos.clone()), Data::I32(slot.clone()), Data::F32(tiled));
            let mut kc = Data::poisoned(dt, cache.len());
            let mut vc = Data::poisoned(dt, cache.len());
            let params = [
                row(&k, s),
                row(&v, s),
                CpuParam::per_row(pos_d.as_in()),
                CpuParam::per_row(slot_d.as_in()),
                CpuParam::bcast(tab.as_in()),
                CpuParam::Comptime(CpuScalar::I32(head_dim as i32)),
            ];
            rope::rope_kv_write_table::cpu(dt, &params, &mut [out(&mut kc, cache), out(&mut vc, cache)], s.rows, width)
                .unwrap();
            let (ks, vs, kc, vc) = (k.to_f64(), v.to_f64(), kc.to_f64(), vc.to_f64());
            let krows: Vec<&[f64]> = s.rows(&ks).collect();
            let vrows: Vec<&[f64]> = s.rows(&vs).collect();
            for c in 0..cache.rows {
                let (kg, vg) = (&kc[c * width..(c + 1) * width], &vc[c * width..(c + 1) * width]);
                match slot.iter().position(|&x| x == c as i32) {
                    None => assert!(kg.iter().chain(vg).all(|x| x.is_nan()), "{dt}: cache row {c} was written"),
                    Some(r) => {
                        let one = Shape { rows: 1, width, stride: width };
                        let want = rope::rope_half_table_ref(krows[r], pos[r], &pairs, head_dim);
                        let got = Data::from_f32(DType::F32, &kg.iter().map(|&x| x as f32).collect::<Vec<_>>());
                        check("rope_kv_write_table", dt, one, &got, &[want], tol(dt));
                        assert_eq!(vg, vrows[r], "{dt}: V of token {r} is not copied exactly");
                    }
                }
            }
        }
    }
}

#[test]
fn rope_kv_write_rejects_a_slot_outside_the_cache() {
    let dt = DType::F32;
    let s = Shape { rows: 2, width: 8, stride: 8 };
    let k = Data::from_f32(dt, &[1.0; 16]);
    let (pos, slot) = (Data::I32(vec![1, 2]), Data::I32(vec![0, 3]));
    let mut kc = Data::poisoned(dt, 3 * 8);
    let mut vc = Data::poisoned(dt, 3 * 8);
    let params = [
        row(&k, s),
        row(&k, s),
        CpuParam::per_row(pos.as_in()),
        CpuParam::per_row(slot.as_in()),
        CpuParam::Comptime(CpuScalar::F32(THETA)),
        CpuParam::Comptime(CpuScalar::I32(8)),
    ];
    let cache = Shape { rows: 3, width: 8, stride: 8 };
    let e = rope::rope_kv_write::cpu(dt, &params, &mut [out(&mut kc, cache), out(&mut vc, cache)], 2, 8).unwrap_err();
    assert!(e.to_string().contains("row 3"), "{e}");
    assert!(kc.to_f64().iter().chain(&vc.to_f64()).all(|x| x.is_nan()), "a rejected call wrote");
}

#[test]
fn gather_rows_matches_ref() {
    for_each_case(|rng, dt, s| {
        let table_rows = 11;
        let table = Shape { rows: table_rows, width: s.width, stride: s.stride };
        let t = Data::random(rng, dt, table.len(), 0.1, 2.0);
        let ids: Vec<i32> = (0..s.rows).map(|_| rng.random_range(0..table_rows as i32)).collect();
        let ids_d = Data::I32(ids.clone());
        let mut y = Data::poisoned(dt, s.len());
        let params = [CpuParam::row(t.as_in(), table.stride), CpuParam::per_row(ids_d.as_in())];
        gather::gather_rows::cpu(dt, &params, &mut [out(&mut y, s)], s.rows, s.width).unwrap();
        let flat: Vec<f64> = table.rows(&t.to_f64()).flatten().copied().collect();
        let want = gather::gather_rows_ref(&flat, s.width, &ids);
        check("gather_rows", dt, s, &y, &want, 0.0);
    });
    // An id past the table is an error, not a read out of bounds.
    let t = Data::from_f32(DType::F32, &[1.0; 8]);
    let ids = Data::I32(vec![0, 2]);
    let mut y = Data::poisoned(DType::F32, 8);
    let s = Shape { rows: 2, width: 4, stride: 4 };
    let params = [CpuParam::row(t.as_in(), 4), CpuParam::per_row(ids.as_in())];
    assert!(gather::gather_rows::cpu(DType::F32, &params, &mut [out(&mut y, s)], 2, 4).is_err());
}
