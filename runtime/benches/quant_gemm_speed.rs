//! Quantized products on the CPU by activation row count: the one-row kernels (`matmul_q16` /
//! `matmul_q8`, which `linear` uses for a few rows) against the blocked GEMM (`gemm_q16` /
//! `gemm_q8`) on each SIMD path this CPU has, on the default model's projection shapes
//! (SmolLM2-135M: fused q/k/v 960×576, o 576×576, fused gate/up 3072×576, down 576×1536),
//! random blocks. Prints the median CPU time per product (all threads' run time from
//! /proc/self/task/*/schedstat, so time spent preempted by other work on a shared machine does
//! not count; wall time where that is not readable), the runs interleaved; `linear` switches to
//! the GEMM where it wins (`GEMM_MIN_ROWS`).
//!
//! Run: `cargo bench -p kiln-runtime --bench quant_gemm_speed` (`RAYON_NUM_THREADS=1` for one
//! core; `FORMATS=q4_1,q8_0`, `ROWS=1,4,55`, `ACTS=16,8` to narrow it; `REPS` repetitions).

use kiln_runtime::device::quant::activations::{quantize_row8_for, ActBlock8};
use kiln_runtime::device::quant::blocks::half_fields;
use kiln_runtime::device::quant::cpu::gemm::{gemm_q16, gemm_q8};
use kiln_runtime::device::quant::cpu::gemv::{gemv_q16, gemv_q8, GEMV_MAX_ROWS};
use kiln_runtime::device::quant::cpu::{matmul_q16, matmul_q8, quantize_row, ActBlock, Simd};
use kiln_runtime::device::quant::{QuantFormat, QuantMatrix};
use kiln_runtime::device::timing::process_cpu_seconds;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

const SHAPES: [(&str, usize, usize); 4] =
    [("qkv 960x576", 960, 576), ("o 576x576", 576, 576), ("gate/up 3072x576", 3072, 576), ("down 576x1536", 576, 1536)];

fn random_matrix(rng: &mut StdRng, format: QuantFormat, rows: usize, cols: usize) -> QuantMatrix {
    let mut bytes: Vec<u8> = (0..rows * format.row_bytes(cols)).map(|_| rng.random()).collect();
    for b in bytes.chunks_exact_mut(format.block_bytes()) {
        for &at in half_fields(format) {
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
        }
    }
    QuantMatrix::new(format, rows, cols, bytes).unwrap()
}

/// Seconds of CPU (else wall) time, per run of each of `fs`, median over `reps` interleaved
/// rounds after one warm-up of each.
fn medians(reps: usize, fs: &mut [Box<dyn FnMut() + '_>]) -> Vec<f64> {
    let now = || process_cpu_seconds().unwrap_or_else(|| START.with(|s| s.elapsed().as_secs_f64()));
    fs.iter_mut().for_each(|f| f());
    let mut t = vec![vec![]; fs.len()];
    for _ in 0..reps {
        for (f, t) in fs.iter_mut().zip(t.iter_mut()) {
            let s = now();
            f();
            t.push(now() - s);
        }
    }
    t.into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[reps / 2]
        })
        .collect()
}

thread_local! {
    static START: Instant = Instant::now();
}

fn list<T>(var: &str, default: &str, parse: impl Fn(&str) -> T) -> Vec<T> {
    std::env::var(var).unwrap_or_else(|_| default.into()).split(',').map(|s| parse(s.trim())).collect()
}

fn main() {
    let simd = Simd::detect();
    let paths: Vec<Simd> = if simd == Simd::Portable { vec![simd] } else { Simd::available()[1..].to_vec() };
    let reps: usize = std::env::var("REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(9);
    let formats = list("FORMATS", "q4_1,q8_0,q5_0,q4_k,q6_k", |f| {
        *QuantFormat::ALL.iter().find(|q| q.name().eq_ignore_ascii_case(f)).expect("a format name")
    });
    let rows = list("ROWS", "1,2,4,5,8,16,55,256", |r| r.parse::<usize>().unwrap());
    let acts = list("ACTS", "16,8", |a| a.parse::<u32>().unwrap());
    let clock = if process_cpu_seconds().is_some() { "CPU" } else { "wall" };
    println!(
        "one-row kernels and gemv {simd:?}, {} threads, median {clock} µs of {reps}",
        rayon::current_num_threads()
    );
    print!("{:8} {:18} {:>4} {:>5} {:>9} {:>9}", "format", "shape", "acts", "rows", "one-row", "gemv");
    paths.iter().for_each(|p| print!(" {:>16}", format!("gemm {p:?}")));
    println!(" {:>7}", "gemm ×");
    let mut rng = StdRng::seed_from_u64(1);
    for &format in &formats {
        for (name, n, k) in SHAPES {
            if k % format.block_len() != 0 {
                continue;
            }
            let w = random_matrix(&mut rng, format, n, k);
            for &m in &rows {
                let x: Vec<Vec<f32>> = (0..m).map(|_| (0..k).map(|_| rng.random_range(-2.0..2.0)).collect()).collect();
                for &a in &acts {
                    let t = if a == 16 {
                        let xq: Vec<Vec<ActBlock>> = x
                            .iter()
                            .map(|r| {
                                let mut q = vec![];
                                quantize_row(r, &mut q);
                                q
                            })
                            .collect();
                        let mut fs: Vec<Box<dyn FnMut()>> = vec![
                            Box::new(|| drop(black_box(matmul_q16(simd, &xq, &w)))),
                            Box::new(|| drop(black_box((m <= GEMV_MAX_ROWS).then(|| gemv_q16(simd, &xq, &w))))),
                        ];
                        for &p in &paths {
                            let (xq, w) = (&xq, &w);
                            fs.push(Box::new(move || drop(black_box(gemm_q16(p, xq, w)))));
                        }
                        medians(reps, &mut fs)
                    } else {
                        let mut wide = vec![];
                        let xq: Vec<Vec<ActBlock8>> = x
                            .iter()
                            .map(|r| {
                                let mut q = vec![];
                                quantize_row8_for(format, r, &mut wide, &mut q);
                                q
                            })
                            .collect();
                        let mut fs: Vec<Box<dyn FnMut()>> = vec![
                            Box::new(|| drop(black_box(matmul_q8(simd, &xq, &w)))),
                            Box::new(|| drop(black_box((m <= GEMV_MAX_ROWS).then(|| gemv_q8(simd, &xq, &w))))),
                        ];
                        for &p in &paths {
                            let (xq, w) = (&xq, &w);
                            fs.push(Box::new(move || drop(black_box(gemm_q8(p, xq, w)))));
                        }
                        medians(reps, &mut fs)
                    };
                    let gemv = if m <= GEMV_MAX_ROWS { format!("{:.1}", t[1] * 1e6) } else { "-".into() };
                    print!("{:8} {:18} {:>4} {:>5} {:>9.1} {:>9}", format.name(), name, a, m, t[0] * 1e6, gemv);
                    t[2..].iter().for_each(|g| print!(" {:>16.1}", g * 1e6));
                    println!(" {:>7.2}", t[0] / t[2..].iter().copied().fold(f64::INFINITY, f64::min));
                }
            }
        }
    }
}
