//! Speed of the packed INT4 CPU product (`Int4Matrix::matmul`) against kiln's dense f32 GEMM
//! of the same weights: one 4096 × 4096 projection in groups of 128, 1 and 16 activation rows,
//! mean of 5 runs after a warm-up. `cargo run --release -p kiln-runtime --example int4_speed`
//! (`KILN_CPU_SIMD=0` for the portable loop).

use kiln_runtime::device::quant::int4::{Grouping, Int4Matrix};
use kiln_runtime::{matmul, DType, Device, Tensor};
use std::time::Instant;

fn mean_ms(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..5 {
        f();
    }
    t.elapsed().as_secs_f64() * 1e3 / 5.0
}

fn main() {
    let (n, k, group) = (4096usize, 4096usize, 128usize);
    let words: Vec<u32> = (0..n * k / 8).map(|i| (i as u32).wrapping_mul(0x9E37_79B9)).collect();
    let scales: Vec<f32> = (0..n * k / group).map(|i| 0.001 + (i % 7) as f32 * 1e-4).collect();
    let zeros: Vec<u8> = (0..n * k / group).map(|i| (i % 16) as u8).collect();
    let w = Int4Matrix::new((n, k), Grouping::Contiguous(group), words, scales, zeros).expect("a matrix");
    let mut dense = vec![0f32; n * k];
    for r in 0..n {
        w.dequantize_row(r, &mut dense[r * k..(r + 1) * k]);
    }
    let wt = Tensor::from_f32(&Device::Cpu, &dense, n, k).expect("dense weights");
    for m in [1usize, 16] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let xt = Tensor::from_f32(&Device::Cpu, &x, m, k).expect("x");
        let mut out = Tensor::zeros(&Device::Cpu, DType::F32, m, n).expect("out");
        let packed = mean_ms(|| {
            std::hint::black_box(w.matmul(&x, m));
        });
        let f32_ms = mean_ms(|| matmul(&Device::Cpu, &xt, &wt, &mut out).expect("gemm"));
        println!("rows {m:>2}: packed int4 {packed:7.2} ms, dense f32 {f32_ms:7.2} ms ({:.2}×)", f32_ms / packed);
    }
}
