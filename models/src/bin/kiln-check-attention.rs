//! `kiln-check-attention [--quick] [--fp8-only] [--no-check] [--cpu] [--no-speed] [--speed-pools | --speed-4k | --speed-heads] [--out FILE]`:
//! the attention template on the GPU against the dense reference, then its decode speed next to a copy (see
//! `kiln_models::kernels::attention_gpu`). `--cpu` runs the checks with the CPU as the device
//! (a self-test of the harness). Exit status 1 when a case fails.

use kiln_models::kernels::attention_gpu::{check_all, copy_speed, decode_speed, markdown, DecodeShape};
use kiln_runtime::Device;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    let out = args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).cloned();
    let dev = if has("--cpu") {
        Device::Cpu
    } else {
        match Device::cuda(0) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("kiln-check-attention: {e} (use --cpu for the harness self-test)");
                return std::process::ExitCode::FAILURE;
            }
        }
    };
    println!("device: {}", dev.describe());
    let checks = if has("--no-check") { vec![] } else { check_all(&dev, has("--quick"), has("--fp8-only"), 1000) };
    let mut speeds = vec![];
    let mut copy = None;
    if !dev.is_cpu() && !has("--no-speed") {
        // The default split on several shapes, then other split lengths on 64 × 4k, then a
        // 4096-key sliding window at 32k context (its time should follow the window).
        let cases = [(64, 4096, None), (1, 4096, None), (1, 32768, None), (256, 1024, None), (8, 8192, None)];
        let sweep = [4, 8, 32].map(|n| (64, 4096, Some(n)));
        let plain = cases.into_iter().chain(sweep).map(|(s, c, n)| (s, c, n, None));
        let windowed = [(1, 32768, None, Some(4096)), (16, 32768, None, None), (16, 32768, None, Some(4096))];
        let bf16 = plain.chain(windowed).map(|(s, c, n, w)| (s, c, n, w, false));
        // FP8 pools: half the bytes of the same shapes.
        let fp8_shapes = [(64, 4096), (1, 32768), (256, 1024), (16, 32768)];
        let over_both = |shapes: Vec<(usize, usize, Option<usize>)>| {
            let pools = [false, true].into_iter();
            pools.flat_map(move |fp8| shapes.clone().into_iter().map(move |(s, c, n)| (s, c, n, None, fp8)))
        };
        // Head dims 128 / 96 / 80 (Llama, Phi-3, Phi-2-like) on the same shapes: each row's share
        // of the copy bandwidth says what the padded rows and idle threads of 80 / 96 cost.
        let head_dims: &[usize] = if has("--speed-heads") { &[128, 96, 80] } else { &[128] };
        let cases: Vec<_> = if has("--speed-heads") {
            [(64, 4096), (256, 1024), (1, 32768)].map(|(s, c)| (s, c, None, None, false)).to_vec()
        } else if has("--speed-4k") {
            // Only 64 × 4k, default split and 4 splits, over both pools.
            over_both(vec![(64, 4096, None), (64, 4096, Some(4))]).collect()
        } else if has("--speed-pools") {
            // Only the FP8 shapes, over bf16 pools and then FP8 pools.
            over_both(fp8_shapes.iter().map(|&(s, c)| (s, c, None)).collect()).collect()
        } else {
            bf16.chain(fp8_shapes.map(|(s, c)| (s, c, None, None, true))).collect()
        };
        for (seqs, ctx, splits, window, fp8) in cases {
            for &hd in head_dims {
                let shape = DecodeShape { seqs, ctx, splits, window, fp8, head_dim: hd };
                match decode_speed(&dev, &shape, 20) {
                    Ok(r) => speeds.push(r),
                    Err(e) => eprintln!("decode speed {seqs}x{ctx}, head dim {hd}: {e}"),
                }
            }
        }
        copy = copy_speed(&dev, 1 << 30, 20).map_err(|e| eprintln!("copy: {e}")).ok();
    }
    let md = markdown(&checks, &speeds, copy);
    println!("{md}");
    if let Some(path) = out {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("writing {path}: {e}");
        }
    }
    let failed = checks.iter().filter(|r| !r.pass).count();
    println!("result: {}", if failed == 0 { "ALL PASSED".to_string() } else { format!("{failed} FAILED") });
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
