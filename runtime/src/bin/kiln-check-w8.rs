//! `kiln-check-w8 [--no-speed] [--no-check] [--lt-sweep]`: the 8-bit GPU kernels (`device::quant::w8_cuda`:
//! FP8 E4M3 and INT8 weights with block scales) against the CPU reference
//! (`W8Matrix::dequantize`, then an f64 product), then their speed against dense bf16 cuBLAS
//! of the same matrix and against the device's copy bandwidth. Needs an NVIDIA GPU.
//!
//! Correctness: random bytes (every finite e4m3 value; every int8) with scales per tensor, per
//! output channel, per group of 32 inputs and per 128×128 block (a row count cut inside the
//! last block), fused weights of two parts; 1 to 130 activation rows, each group of 128 inputs
//! at its own magnitude; f32 / f16 / bf16 activations; the W8A16 GEMV, dequantize + cuBLAS,
//! and for weights that take W8A8 (`act_quant::w8a8_act`: FP8, or INT8 per channel or tensor)
//! the 8-bit tensor cores and the W8A8 GEMV against a twin that quantizes the activations as
//! the kernels do — e4m3 per row or per 128 inputs for 128×128 blocks, int8 per row — (output
//! addresses aligned to 256 bytes and less), and for the per-row forms the product of rows
//! given already quantized (`linear_w8_cuda_quantized`). The product is
//! computed from the activations as the GPU sees them (rounded to the dtype); the GPU result
//! must be within `tol · max |ref|`.
//!
//! Speed: Llama-3-8B's projection shapes, FP8 per channel (two also in 128×128 blocks, three
//! as INT8 per channel), bf16:
//! median of CUDA-event-timed launches. `--lt-sweep` times instead each algorithm cuBLASLt's
//! heuristic offers for the FP8 tensor-core product of those shapes at 64–2048 rows — with the
//! engine's outer-vector scales (with and without fast accumulation), unscaled (what a
//! per-tensor scale pair costs) and with the weight's scales as an alpha vector — beside dense
//! bf16 cuBLAS (is its first pick the fastest? is the scale form what costs?).

use kiln_runtime::device::element::E4m3;
use kiln_runtime::device::quant::act_quant::{quantize_row_int8, w8a8_act, ActQuant};
use kiln_runtime::device::quant::fp8_lt::{
    heuristic_answers, quantize_groups_e4m3, quantize_row_e4m3, time_algorithms, ActScale, SweepForm, GROUP,
};
use kiln_runtime::device::quant::w8::{W8Elem, W8Matrix};
use kiln_runtime::device::quant::w8_cuda::{linear_w8_cuda_by, linear_w8_cuda_quantized, W8Cuda, W8Path};
use kiln_runtime::device::timing::median_us;
use kiln_runtime::gpu_check::quant::{as_dtype, copy_gbs, main_with, max_rel_err, max_rows_arg, Rand, Tally};
use kiln_runtime::{matmul, DType, Device, Tensor};
use std::process::ExitCode;

/// A random `[rows, cols]` weight of `elem` with scales in blocks of `block`.
fn random_matrix(r: &mut Rand, elem: W8Elem, (rows, cols): (usize, usize), block: [usize; 2]) -> W8Matrix {
    let bytes = (0..rows * cols)
        .map(|_| {
            let b = r.u64() as u8;
            // e4m3's NaN bytes (S.1111.111) become the largest finite value.
            if elem == W8Elem::Fp8E4M3 && b & 0x7F == 0x7F {
                b - 1
            } else {
                b
            }
        })
        .collect();
    // Values of order 1/√cols, like a trained layer's.
    let top = match elem {
        W8Elem::Fp8E4M3 => 448.0,
        W8Elem::Int8 => 127.0,
    };
    let n = rows.div_ceil(block[0]) * cols.div_ceil(block[1]);
    let scales = (0..n).map(|_| (0.5 + r.unit()) / (top * (cols as f32).sqrt())).collect();
    W8Matrix::new((rows, cols), elem, bytes, scales, block).expect("a well-formed matrix")
}

struct Case {
    what: String,
    parts: Vec<W8Matrix>,
}

fn cases(r: &mut Rand) -> Vec<Case> {
    use W8Elem::{Fp8E4M3 as F, Int8 as I};
    let mut c = vec![];
    for (elem, rows, cols, block, how) in [
        (F, 256, 512, [1, 512], "per channel"),
        (F, 1003, 256, [1003, 256], "per tensor"),
        (F, 300, 640, [128, 128], "128×128 blocks"),
        (F, 272, 640, [128, 128], "128×128 blocks"),
        (F, 64, 1024, [1, 32], "groups of 32"),
        (I, 96, 384, [1, 384], "per channel"),
        (I, 208, 256, [208, 256], "per tensor"),
        (I, 130, 256, [1, 32], "groups of 32"),
    ] {
        let what = format!("{} {rows}x{cols} {how}", elem.name());
        c.push(Case { what, parts: vec![random_matrix(r, elem, (rows, cols), block)] });
    }
    let parts = vec![random_matrix(r, F, (128, 256), [1, 256]), random_matrix(r, F, (64, 256), [1, 256])];
    c.push(Case { what: "fp8e4m3 fused 128+64 x256 per channel".into(), parts });
    // The second part's columns start 48 values in: an output address aligned to 32 bytes or less.
    let parts = vec![random_matrix(r, F, (48, 256), [48, 256]), random_matrix(r, F, (32, 256), [1, 256])];
    c.push(Case { what: "fp8e4m3 fused 48+32 x256 per tensor, per channel".into(), parts });
    let parts = vec![random_matrix(r, F, (256, 384), [128, 128]), random_matrix(r, F, (144, 384), [128, 128])];
    c.push(Case { what: "fp8e4m3 fused 256+144 x384 128×128 blocks".into(), parts });
    // SmoothQuant's separate q, k, v: per channel and per tensor, joined at upload.
    let parts = vec![
        random_matrix(r, I, (128, 256), [1, 256]),
        random_matrix(r, I, (48, 256), [48, 256]),
        random_matrix(r, I, (32, 256), [1, 256]),
    ];
    c.push(Case { what: "int8 fused 128+48+32 x256 per channel, per tensor".into(), parts });
    c
}

/// `x · Wᵀ` of the stacked parts in f64, rounded to f32 (`[m, n]`).
fn reference(x: &[f32], m: usize, parts: &[W8Matrix]) -> Vec<f32> {
    let k = parts[0].cols();
    let ws: Vec<Vec<f32>> = parts.iter().map(W8Matrix::dequantize).collect();
    let mut out = vec![];
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        for w in &ws {
            out.extend(
                w.chunks(k).map(|row| row.iter().zip(xi).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32),
            );
        }
    }
    out
}

/// The W8A8 product of the stacked parts as the W8A8 kernels compute it: each row of `x`
/// quantized in `form` (e4m3 with one scale per row or per 128 inputs; int8 per row), exact
/// products summed in f64 per scale group, the scales applied.
fn reference_w8a8(x: &[f32], m: usize, parts: &[W8Matrix], form: ActQuant) -> Vec<f32> {
    let k = parts[0].cols();
    let e4m3 = |q: Vec<u8>| q.iter().map(|&b| W8Elem::Fp8E4M3.value(b) as f64).collect::<Vec<f64>>();
    let mut out = vec![];
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        let (sx, qx) = match form {
            ActQuant::E4m3(ActScale::Group) => {
                let (s, q) = quantize_groups_e4m3(xi);
                (s, e4m3(q))
            }
            ActQuant::E4m3(ActScale::Row) => {
                let (s, q) = quantize_row_e4m3(xi);
                (vec![s], e4m3(q))
            }
            ActQuant::Int8Row => {
                let (s, q) = quantize_row_int8(xi);
                (vec![s], q.into_iter().map(f64::from).collect())
            }
        };
        let g = k / sx.len();
        for w in parts {
            let ([bo, bi], sc) = (w.block(), w.scale_cols());
            for (j, row) in w.bytes().chunks(k).enumerate() {
                let mut d = 0f64;
                for (gi, (wg, xg)) in row.chunks(g).zip(qx.chunks(g)).enumerate() {
                    let p: f64 = wg.iter().zip(xg).map(|(&b, &q)| w.elem().value(b) as f64 * q).sum();
                    d += p * sx[gi] as f64 * w.scales()[(j / bo) * sc + (gi * g) / bi] as f64;
                }
                out.push(d as f32);
            }
        }
    }
    out
}

fn check(dev: &Device) -> Result<(usize, usize), Box<dyn std::error::Error>> {
    let mut r = Rand(17, 0);
    let mut tally = Tally::default();
    for case in cases(&mut r) {
        let k = case.parts[0].cols();
        let n: usize = case.parts.iter().map(W8Matrix::rows).sum();
        for dtype in DType::FLOATS {
            let w = W8Cuda::upload(dev, dtype, &case.parts, true)?.ok_or("the kernels refused the layout")?;
            for m in [1, 2, 3, 5, 8, 9, 16, 33, 130] {
                // Each group of 128 inputs at its own magnitude (1×, 2×, 3×), so a group scale
                // applied to the wrong group shows.
                let x: Vec<f32> = (0..m * k).map(|i| (r.unit() * 2.0 - 1.0) * (1 + (i % k) / 128 % 3) as f32).collect();
                let x = as_dtype(&x, dtype);
                let want = reference(&x, m, &case.parts);
                let form = w8a8_act(&case.parts);
                let want_w8a8 = form.map(|f| reference_w8a8(&x, m, &case.parts, f));
                let xt = Tensor::from_f32_as(dev, dtype, &x, m, k)?;
                for path in [W8Path::Gemv, W8Path::Dequant, W8Path::TensorCores, W8Path::W8a8Gemv] {
                    // W8A8 where the path computes it (the tensor cores, the W8A8 GEMV), else
                    // W8A16.
                    let w8a8 = matches!(path, W8Path::TensorCores | W8Path::W8a8Gemv) && form.is_some();
                    // cuBLAS in half precision takes the dequantized weight rounded to the
                    // activations' type too; f32 cuBLAS may sum in another order; Hopper's FP8
                    // tensor cores add exact products with fewer bits between promotions.
                    let tol = match (dtype, path) {
                        (DType::F32, W8Path::Gemv | W8Path::W8a8Gemv) => 2e-5,
                        (DType::F32, W8Path::TensorCores) if w8a8 => 2e-3,
                        (DType::F32, _) => 1e-4,
                        (_, W8Path::Gemv | W8Path::W8a8Gemv) => 1e-2,
                        _ => 2e-2,
                    };
                    let want = match (w8a8, &want_w8a8) {
                        (true, Some(w)) => w,
                        _ => &want,
                    };
                    let mut out = Tensor::zeros(dev, dtype, m, n)?;
                    linear_w8_cuda_by(&xt, &w, &mut out, path)?;
                    let err = max_rel_err(&out.to_host_f32()?, want);
                    tally.record(err, tol, || format!("{} {dtype} m={m} {path:?}", case.what));
                }
                if let (Some(act), Some(want)) = (form, &want_w8a8) {
                    // Rows a norm already quantized (`linear_w8_cuda_quantized`): the codes and
                    // scales the reference quantized, uploaded as they are.
                    let mut s = vec![];
                    let (mut q8, mut qi) = (vec![], vec![]);
                    for row in x.chunks(k) {
                        let sr = match act {
                            ActQuant::E4m3(ActScale::Row) => {
                                let (sr, qr) = quantize_row_e4m3(row);
                                q8.extend(qr.into_iter().map(E4m3));
                                sr
                            }
                            ActQuant::Int8Row => {
                                let (sr, qr) = quantize_row_int8(row);
                                qi.extend(qr.into_iter().map(|v| v as i8));
                                sr
                            }
                            ActQuant::E4m3(ActScale::Group) => break,
                        };
                        s.push(sr);
                    }
                    if s.len() == m {
                        let q = match act {
                            ActQuant::Int8Row => Tensor::from_host(dev, &qi, m, k)?,
                            _ => Tensor::from_host(dev, &q8, m, k)?,
                        };
                        let s = Tensor::from_host(dev, &s, m, 1)?;
                        let mut out = Tensor::zeros(dev, dtype, m, n)?;
                        linear_w8_cuda_quantized(&q, &s, &w, &mut out)?;
                        let err = max_rel_err(&out.to_host_f32()?, want);
                        let tol = if dtype == DType::F32 { 2e-3 } else { 2e-2 };
                        tally.record(err, tol, || format!("{} {dtype} m={m} {act:?} rows given", case.what));
                    }
                }
            }
        }
        println!(
            "ok   {} (n {n}, k {k}, W8A8 {:?}): f32/f16/bf16 × m 1..130 × GEMV, dequant+cuBLAS, 8-bit tensor cores, W8A8 GEMV, quantized rows given",
            case.what,
            w8a8_act(&case.parts)
        );
    }
    Ok((tally.passed, tally.failed))
}

fn speed(dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let Device::Cuda(b) = dev else { return Ok(()) };
    if std::env::args().any(|a| a == "--lt-sweep") {
        return lt_sweep(dev);
    }
    let max_rows = max_rows_arg();
    let mut r = Rand(19, 0);
    let copy_gbs = copy_gbs(dev)?;
    println!("\ndevice copy: {copy_gbs:.0} GB/s (read + write)\n");
    println!("| shape n×k fp8 (per channel unless named) | m | GEMV µs | W8A8 GEMV µs | dequant+cuBLAS µs | 8-bit tensor cores µs | dense bf16 cuBLAS µs | best 8-bit GB/s (% of copy) | best vs dense |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let shapes = [(6144, 4096, "qkv"), (4096, 4096, "o"), (28672, 4096, "gate_up"), (4096, 14336, "down")];
    let blocks = [(6144, 4096, "qkv 128×128 blocks"), (4096, 14336, "down 128×128 blocks")];
    let int8 = [(6144, 4096, "qkv int8"), (28672, 4096, "gate_up int8"), (4096, 14336, "down int8")];
    for (n, k, what) in shapes.into_iter().chain(blocks).chain(int8) {
        let block = if what.contains("blocks") { [GROUP; 2] } else { [1, k] };
        let elem = if what.contains("int8") { W8Elem::Int8 } else { W8Elem::Fp8E4M3 };
        let w = random_matrix(&mut r, elem, (n, k), block);
        let g = W8Cuda::upload(dev, DType::BF16, std::slice::from_ref(&w), true)?.ok_or("refused")?;
        let mut dense = Tensor::zeros(dev, DType::BF16, n, k)?;
        g[0].dequantize_into(&mut dense)?;
        let bytes = (n * k + n * 4) as f64;
        for m in [1usize, 2, 4, 8, 16, 32, 64, 128, 512, 2048].into_iter().filter(|&m| m <= max_rows) {
            let x =
                Tensor::from_f32_as(dev, DType::BF16, &(0..m * k).map(|_| r.unit() - 0.5).collect::<Vec<_>>(), m, k)?;
            let mut out = Tensor::zeros(dev, DType::BF16, m, n)?;
            let mut time = |f: &mut dyn FnMut(&mut Tensor) -> Result<(), kiln_runtime::GemmError>| {
                median_us(b, 5, 30, |_| f(&mut out).map_err(Box::<dyn std::error::Error>::from))
            };
            let gemv = if m <= 16 { time(&mut |o| linear_w8_cuda_by(&x, &g, o, W8Path::Gemv))? } else { f64::NAN };
            let gemv8 = if m <= 16 { time(&mut |o| linear_w8_cuda_by(&x, &g, o, W8Path::W8a8Gemv))? } else { f64::NAN };
            let deq = time(&mut |o| linear_w8_cuda_by(&x, &g, o, W8Path::Dequant))?;
            let tc = time(&mut |o| linear_w8_cuda_by(&x, &g, o, W8Path::TensorCores))?;
            let cublas = time(&mut |o| matmul(dev, &x, &dense, o))?;
            let best = gemv.min(deq).min(tc).min(gemv8);
            let gbs = bytes / best / 1e3;
            println!(
                "| {what} {n}×{k} | {m} | {gemv:.1} | {gemv8:.1} | {deq:.1} | {tc:.1} | {cublas:.1} | {gbs:.0} ({:.0}%) | {:.2}× |",
                100.0 * gbs / copy_gbs,
                cublas / best
            );
        }
    }
    Ok(())
}

/// Each FP8 algorithm cuBLASLt offers per shape and row count, timed (see the module header).
fn lt_sweep(dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let Device::Cuda(b) = dev else { return Ok(()) };
    println!("| shape n×k | m | scales, fast accum | algorithms | first pick µs | best µs (rank) | best config | best TFLOP/s | dense bf16 µs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let shapes = [(6144, 4096, "qkv"), (4096, 4096, "o"), (28672, 4096, "gate_up"), (4096, 14336, "down")];
    // Row counts (`KILN_SWEEP_ROWS`, comma-separated) and whether fast accumulation is swept too
    // (`KILN_SWEEP_FAST=1`).
    let rows: Vec<usize> = std::env::var("KILN_SWEEP_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 128, 256, 512, 1024, 2048]);
    let with_fast = std::env::var("KILN_SWEEP_FAST").is_ok_and(|v| v == "1");
    let mut r = Rand(23, 0);
    for (n, k, what) in shapes {
        let dense =
            Tensor::from_f32_as(dev, DType::BF16, &(0..n * k).map(|_| r.unit() - 0.5).collect::<Vec<_>>(), n, k)?;
        for &m in &rows {
            let x =
                Tensor::from_f32_as(dev, DType::BF16, &(0..m * k).map(|_| r.unit() - 0.5).collect::<Vec<_>>(), m, k)?;
            let mut out = Tensor::zeros(dev, DType::BF16, m, n)?;
            let bf16 = median_us(b, 3, 20, |_| matmul(dev, &x, &dense, &mut out))?;
            let forms = [
                (SweepForm::OuterVec, false),
                (SweepForm::OuterVec, true),
                (SweepForm::Unscaled, false),
                (SweepForm::AlphaVec, false),
            ];
            for form in forms.into_iter().filter(|f| with_fast || !f.1) {
                let t = time_algorithms(dev, (n, k, m), form, 32)?;
                let fast = format!("{:?}, {}", form.0, form.1);
                let Some(first) = t.first() else {
                    // What the heuristic answered, asked for 1, 4 and 32 algorithms.
                    let why = heuristic_answers(dev, (n, k, m), form, &[1, 4, 32])?
                        .iter()
                        .map(|(c, st, got, kept)| format!("{c}: {st} {got} ({kept} kept)"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    println!("| {what} {n}×{k} | {m} | {fast} | 0 ({why}) | – | – | – | – | {bf16:.1} |");
                    continue;
                };
                let best = t.iter().min_by(|a, b| a.us.total_cmp(&b.us)).unwrap_or(first);
                let tflops = 2.0 * (n * k * m) as f64 / best.us / 1e6;
                println!(
                    "| {what} {n}×{k} | {m} | {fast} | {} | {:.1} ({}) | {:.1} ({}) | {} | {tflops:.0} | {bf16:.1} |",
                    t.len(),
                    first.us,
                    first.config,
                    best.us,
                    best.rank,
                    best.config
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    main_with("kiln-check-w8", check, speed)
}
