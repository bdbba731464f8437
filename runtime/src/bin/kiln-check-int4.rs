//! `kiln-check-int4`: the W4A16 GPU kernels (`device::quant::int4_cuda`) against the CPU path
//! (`Int4Matrix::matmul`, the reference), then their speed against dense bf16 cuBLAS of the
//! same matrix and against the device's copy bandwidth. Needs an NVIDIA GPU.
//!
//! Correctness: random 4-bit matrices (contiguous groups of 32/64/128, act-order with a random
//! permutation, a row count that is not a multiple of the GEMV's 4, a fused weight of parts
//! with different groupings, q/k/v parts the upload joins into one matrix), 1 to 130 activation
//! rows, f32/f16/bf16 activations, every path: the GEMV; the tensor-core GEMV (the GEMV where it
//! does not apply: f32, groups of 32 or 64); the tensor-core GEMM (dequantize + cuBLAS for f32
//! and for scratch too small for a tiny act-order case); dequantize + cuBLAS. The CPU product
//! is computed from the activations as the GPU sees them (rounded to the dtype); the GPU
//! result must be within `tol · max |ref|`.
//!
//! Speed: Llama-3-8B's projection shapes, g128, bf16: median of CUDA-event-timed launches
//! (`--max-rows N` times batches of up to N rows only; `--no-check`, `--no-speed` skip a part).

use kiln_runtime::device::quant::int4::{Grouping, Int4Matrix};
use kiln_runtime::device::quant::int4_cuda::{linear_int4_cuda_by, Int4Cuda, Int4Path};
use kiln_runtime::device::timing::median_us;
use kiln_runtime::gpu_check::quant::{as_dtype, copy_gbs, main_with, max_rel_err, max_rows_arg, Rand, Tally};
use kiln_runtime::{matmul, DType, Device, Tensor};
use std::process::ExitCode;

/// A random `[rows, cols]` matrix: f16-exact scales around 0.01, zeros 0..=15.
fn random_matrix(r: &mut Rand, rows: usize, cols: usize, group: usize, act_order: bool) -> Int4Matrix {
    let groups = cols / group;
    let words = (0..rows * cols / 8).map(|_| r.u64() as u32).collect();
    let scales = (0..rows * groups).map(|_| half::f16::from_f32(0.004 + 0.012 * r.unit()).to_f32()).collect();
    let zeros = (0..rows * groups).map(|_| (r.u64() % 16) as u8).collect();
    let grouping = if act_order {
        // Input i of group (position of i in a random order) / group: equal-sized groups.
        let mut order: Vec<usize> = (0..cols).collect();
        for i in (1..cols).rev() {
            order.swap(i, (r.u64() % (i as u64 + 1)) as usize);
        }
        let mut g_idx = vec![0u32; cols];
        for (at, &i) in order.iter().enumerate() {
            g_idx[i] = (at / group) as u32;
        }
        Grouping::Indexed { groups, g_idx }
    } else {
        Grouping::Contiguous(group)
    };
    Int4Matrix::new((rows, cols), grouping, words, scales, zeros).expect("a well-formed matrix")
}

struct Case {
    what: String,
    parts: Vec<Int4Matrix>,
}

fn cases(r: &mut Rand) -> Vec<Case> {
    let mut c = vec![];
    for (rows, cols, group, act) in [
        (256, 512, 128, false),
        (1003, 256, 32, false),
        (64, 1024, 64, true),
        (96, 384, 128, true),
        (1001, 640, 128, false),
    ] {
        let what = format!("{rows}x{cols} g{group}{}", if act { " act-order" } else { "" });
        c.push(Case { what, parts: vec![random_matrix(r, rows, cols, group, act)] });
    }
    let parts = vec![random_matrix(r, 128, 256, 128, true), random_matrix(r, 64, 256, 128, true)];
    c.push(Case { what: "fused 128+64 x256 act-order parts".into(), parts });
    // q / k / v stored apart: joined into one matrix at upload (one launch).
    let parts = vec![
        random_matrix(r, 256, 512, 128, false),
        random_matrix(r, 64, 512, 128, false),
        random_matrix(r, 64, 512, 128, false),
    ];
    c.push(Case { what: "q/k/v 256+64+64 x512 g128 parts, joined".into(), parts });
    c
}

fn check(dev: &Device) -> Result<(usize, usize), Box<dyn std::error::Error>> {
    let mut r = Rand(7, 0);
    let mut tally = Tally::default();
    for case in cases(&mut r) {
        let k = case.parts[0].cols();
        let n: usize = case.parts.iter().map(Int4Matrix::rows).sum();
        for dtype in DType::FLOATS {
            let w = Int4Cuda::upload(dev, dtype, &case.parts)?.ok_or("the kernels refused the layout")?;
            for m in [1, 2, 3, 5, 8, 9, 16, 33, 64, 130] {
                let x: Vec<f32> = as_dtype(&(0..m * k).map(|_| r.unit() * 2.0 - 1.0).collect::<Vec<_>>(), dtype);
                let want: Vec<f32> = {
                    let ys: Vec<Vec<f32>> = case.parts.iter().map(|p| p.matmul(&x, m)).collect();
                    (0..m)
                        .flat_map(|i| {
                            ys.iter()
                                .zip(&case.parts)
                                .flat_map(move |(y, p)| y[i * p.rows()..(i + 1) * p.rows()].to_vec())
                        })
                        .collect()
                };
                let xt = Tensor::from_f32_as(dev, dtype, &x, m, k)?;
                let tol = match dtype {
                    DType::F32 => 2e-5,
                    _ => 1e-2,
                };
                for path in [Int4Path::Gemv, Int4Path::TcGemv, Int4Path::Mma, Int4Path::Dequant] {
                    // Tensor cores (and cuBLAS in half precision) take the dequantized weight
                    // rounded to the activations' type too (f16 has 11 bits).
                    let gemv = matches!(path, Int4Path::Gemv | Int4Path::TcGemv);
                    let tol = if !gemv && dtype != DType::F32 { 2e-2 } else { tol };
                    let mut out = Tensor::zeros(dev, dtype, m, n)?;
                    linear_int4_cuda_by(&xt, &w, &mut out, path)?;
                    let got = out.to_host_f32()?;
                    let err = max_rel_err(&got, &want);
                    tally.record(err, tol, || format!("{} {dtype} m={m} {path:?}", case.what));
                }
            }
        }
        println!(
            "ok   {} (n {n}, k {k}): f32/f16/bf16 × m 1..130 × GEMV, tensor-core GEMV, tensor cores and dequant+cuBLAS",
            case.what
        );
    }
    Ok((tally.passed, tally.failed))
}

fn speed(dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let Device::Cuda(b) = dev else { return Ok(()) };
    let max_rows = max_rows_arg();
    let mut r = Rand(11, 0);
    let copy_gbs = copy_gbs(dev)?;
    println!("\ndevice copy: {copy_gbs:.0} GB/s (read + write)\n");
    println!(
        "| shape n×k g128 | m | GEMV µs | tensor-core GEMV µs | tensor cores µs | dequant+cuBLAS µs | dense bf16 cuBLAS µs | best int4 GB/s (% of copy) | best vs dense |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, k, what) in [(6144, 4096, "qkv"), (4096, 4096, "o"), (28672, 4096, "gate_up"), (4096, 14336, "down")] {
        let w = random_matrix(&mut r, n, k, 128, false);
        let g = Int4Cuda::upload(dev, DType::BF16, std::slice::from_ref(&w))?.ok_or("refused")?;
        let mut dense = Tensor::zeros(dev, DType::BF16, n, k)?;
        g[0].dequantize_into(&mut dense)?;
        let bytes = (n * k / 2 + n * (k / 128) * 8) as f64;
        for m in [1usize, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048].into_iter().filter(|&m| m <= max_rows) {
            let x =
                Tensor::from_f32_as(dev, DType::BF16, &(0..m * k).map(|_| r.unit() - 0.5).collect::<Vec<_>>(), m, k)?;
            let mut out = Tensor::zeros(dev, DType::BF16, m, n)?;
            let mut time = |f: &mut dyn FnMut(&mut Tensor) -> Result<(), kiln_runtime::GemmError>| {
                median_us(b, 5, 30, |_| f(&mut out).map_err(Box::<dyn std::error::Error>::from))
            };
            let gemv = if m <= 16 { time(&mut |o| linear_int4_cuda_by(&x, &g, o, Int4Path::Gemv))? } else { f64::NAN };
            let tc = if m <= 16 { time(&mut |o| linear_int4_cuda_by(&x, &g, o, Int4Path::TcGemv))? } else { f64::NAN };
            let mma = time(&mut |o| linear_int4_cuda_by(&x, &g, o, Int4Path::Mma))?;
            let deq = time(&mut |o| linear_int4_cuda_by(&x, &g, o, Int4Path::Dequant))?;
            let cublas = time(&mut |o| matmul(dev, &x, &dense, o))?;
            let best = gemv.min(tc).min(mma).min(deq);
            let gbs = bytes / best / 1e3;
            println!(
                "| {what} {n}×{k} | {m} | {gemv:.1} | {tc:.1} | {mma:.1} | {deq:.1} | {cublas:.1} | {gbs:.0} ({:.0}%) | {:.2}× |",
                100.0 * gbs / copy_gbs,
                cublas / best
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    main_with("kiln-check-int4", check, speed)
}
