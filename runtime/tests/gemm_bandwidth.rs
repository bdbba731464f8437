//! The CPU decode hot path: `m = 1` matmul (matrix × vector) must stream the weights at
//! memory bandwidth. Prints GB/s for SmolLM2-135M shapes (weights in f32); asserts only a
//! loose floor so a slow CI machine does not fail, the number is for reading.
//! Run: `cargo test -p kiln-runtime --release --test gemm_bandwidth -- --nocapture`.

use kiln_runtime::DType;
use kiln_runtime::{matmul, Device, Tensor};
use std::time::Instant;

/// (median µs, GB/s at the median, GB/s at the best run).
fn bench(k: usize, n: usize, m: usize) -> (f64, f64, f64) {
    let dev = Device::Cpu;
    let w: Vec<f32> = (0..n * k).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) / 13.0).collect();
    let wt = Tensor::from_f32(&dev, &w, n, k).unwrap();
    let xt = Tensor::from_f32(&dev, &x, m, k).unwrap();
    let mut out = Tensor::zeros(&dev, DType::F32, m, n).unwrap();
    matmul(&dev, &xt, &wt, &mut out).unwrap();
    // Enough repetitions for ~0.5 s of weight traffic at 10 GB/s.
    let reps = (5e9 / (n * k * 4) as f64).ceil().clamp(3.0, 200.0) as usize;
    let mut times = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        matmul(&dev, &xt, &wt, &mut out).unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let (best, med) = (times[0], times[times.len() / 2]);
    let bytes = (n * k + m * k + m * n) * 4;
    (med * 1e6, bytes as f64 / med / 1e9, bytes as f64 / best / 1e9)
}

#[test]
fn matvec_streams_weights() {
    println!("threads: {}", rayon::current_num_threads());
    let shapes = [
        ("q/o proj 576->576", 576, 576),
        ("mlp gate/up 576->1536", 576, 1536),
        ("mlp down 1536->576", 1536, 576),
        ("lm_head 576->49152 (113 MB)", 576, 49152),
    ];
    let mut lm_head_gbps = 0.0;
    for (name, k, n) in shapes {
        let ms: &[usize] = if n == 49152 { &[1, 4] } else { &[1, 4, 16, 64] };
        for &m in ms {
            let (us, gbps, best) = bench(k, n, m);
            let gflops = 2.0 * (m * n * k) as f64 / us / 1e3;
            println!("{name:30} m={m:3}: {us:9.1} µs  {gbps:6.1} GB/s (best run {best:6.1})  {gflops:6.1} GFLOP/s");
            if n == 49152 && m == 1 {
                lm_head_gbps = gbps;
            }
        }
    }
    assert!(lm_head_gbps > 1.0, "m=1 lm_head at {lm_head_gbps:.2} GB/s");
}
