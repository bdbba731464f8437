//! `kiln-check-tp`: tensor parallelism over NCCL on the GPUs of this machine.
//!
//! `kiln-check-tp [--model PATH] [--fixtures reference.json] [--tp 1,2,4] [--tokens 16] [--dtype bf16|f32]`
//!
//! 1. Collectives over every GPU the largest `--tp` asks for (rank `r` on GPU `r`): all-reduce
//!    (each rank holds `r + 1`: the sum must be `world (world + 1) / 2`), all-gather, broadcast,
//!    in f32 and bf16; then the all-reduce's time and bus bandwidth (`2 (n - 1) / n · bytes / t`,
//!    nccl-tests' definition) at the sizes a decode step reduces: 1 … 256 rows of 8192 bf16.
//! 2. The model split over each `--tp` (tp = 1 is a one-rank NCCL group) against the plain model
//!    on GPU 0: per fixture prompt, last-position logits and greedy tokens (decode steps from
//!    CUDA graphs, which then hold the NCCL calls).

use kiln_models::loader::{build_parallel, load_weights_only_with, WeightMode};
use kiln_models::model_check::{common_prefix, compare_logits, fixture_prompts, greedy};
use kiln_runtime::comm::nccl::NcclGroup;
use kiln_runtime::comm::Communicator;
use kiln_runtime::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => {
            println!("\nresult: ALL PASSED");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\nresult: FAILED");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kiln-check-tp: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<bool, String> {
    let path = match arg(args, "--model") {
        Some(p) => PathBuf::from(p),
        None => kiln_models::fetch::default_model_path().map_err(|e| e.to_string())?,
    };
    let fixtures = PathBuf::from(arg(args, "--fixtures").unwrap_or_else(|| "tests/fixtures/reference.json".into()));
    let n_tokens: usize = arg(args, "--tokens").and_then(|n| n.parse().ok()).unwrap_or(16);
    let tps: Vec<usize> = arg(args, "--tp")
        .unwrap_or_else(|| "1".into())
        .split(',')
        .map(|t| t.parse().map_err(|_| format!("--tp {t}")))
        .collect::<Result<_, _>>()?;
    let dtype = match arg(args, "--dtype").as_deref() {
        None | Some("bf16") => DType::BF16,
        Some("f32") => DType::F32,
        Some(o) => return Err(format!("--dtype {o}: bf16 or f32")),
    };
    let world = tps.iter().copied().max().unwrap_or(1);
    let devs = (0..world).map(Device::cuda).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    println!("devices: {world} × {}\nmodel: {}", devs[0].describe(), path.display());
    let mut ok = collectives(&devs)?;
    ok &= model(&path, &fixtures, &devs, &tps, dtype, n_tokens)?;
    Ok(ok)
}

/// Each rank's part of a collective check, on its own thread.
fn on_ranks<R: Send>(
    devs: &[Device],
    f: impl Fn(&Device, &dyn Communicator) -> Result<R, String> + Sync,
) -> Result<Vec<R>, String> {
    let comms = NcclGroup::one_host(devs).map_err(|e| e.to_string())?;
    std::thread::scope(|s| {
        let hs: Vec<_> = devs.iter().zip(&comms).map(|(d, c)| s.spawn(|| f(d, c.as_ref()))).collect();
        hs.into_iter().map(|h| h.join().map_err(|_| "a rank panicked".to_string())?).collect()
    })
}

fn collectives(devs: &[Device]) -> Result<bool, String> {
    let n = devs.len();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut ok = true;
    for dtype in [DType::F32, DType::BF16] {
        let got = on_ranks(devs, |dev, c| {
            let r = c.rank() as f32;
            let mut t = Tensor::from_f32_as(dev, dtype, &[r + 1.0; 3 * 8], 3, 8).map_err(|x| e(&x))?;
            c.all_reduce_sum(&mut t).map_err(|x| e(&x))?;
            let send = Tensor::from_f32_as(dev, dtype, &[r; 8], 1, 8).map_err(|x| e(&x))?;
            let mut all = Tensor::zeros(dev, dtype, n, 8).map_err(|x| e(&x))?;
            c.all_gather_rows(&send, &mut all).map_err(|x| e(&x))?;
            let mut b = Tensor::from_f32_as(dev, dtype, &[r * 10.0; 4], 1, 4).map_err(|x| e(&x))?;
            c.broadcast(&mut b, n - 1).map_err(|x| e(&x))?;
            let host = |t: &Tensor| t.to_host_f32().map_err(|x| e(&x));
            Ok((host(&t)?, host(&all)?, host(&b)?))
        })?;
        let sum = (n * (n + 1) / 2) as f32;
        for (r, (t, all, b)) in got.iter().enumerate() {
            let pass = t.iter().all(|&x| x == sum)
                && all.chunks(8).enumerate().all(|(k, row)| row.iter().all(|&x| x == k as f32))
                && b.iter().all(|&x| x == (n - 1) as f32 * 10.0);
            ok &= pass;
            println!("collectives {dtype} rank {r}: {}", if pass { "ok" } else { "FAIL" });
        }
    }
    println!("\n| all-reduce bf16 | ranks | µs (median of 50) | bus GB/s |\n|---|---|---|---|");
    for rows in [1usize, 16, 64, 256] {
        let times = on_ranks(devs, |dev, c| {
            let mut t = Tensor::zeros(dev, DType::BF16, rows, 8192).map_err(|x| e(&x))?;
            let mut samples = Vec::new();
            for i in 0..60 {
                dev.synchronize().map_err(|x| e(&x))?;
                let t0 = Instant::now();
                c.all_reduce_sum(&mut t).map_err(|x| e(&x))?;
                dev.synchronize().map_err(|x| e(&x))?;
                if i >= 10 {
                    samples.push(t0.elapsed().as_secs_f64());
                }
            }
            samples.sort_by(f64::total_cmp);
            Ok(samples[samples.len() / 2])
        })?;
        let t = times.iter().copied().fold(0.0, f64::max);
        let bytes = (rows * 8192 * 2) as f64;
        let bus = if n > 1 { 2.0 * (n - 1) as f64 / n as f64 * bytes / t / 1e9 } else { 0.0 };
        println!("| {rows} × 8192 | {n} | {:.1} | {bus:.1} |", t * 1e6);
    }
    Ok(ok)
}

fn model(
    path: &Path,
    fixtures: &Path,
    devs: &[Device],
    tps: &[usize],
    dtype: DType,
    n_tokens: usize,
) -> Result<bool, String> {
    let prompts = fixture_prompts(fixtures)?;
    let plain = load_weights_only_with(path, &devs[0], dtype, WeightMode::Dense).map_err(|e| e.to_string())?;
    let refs = prompts.iter().map(|p| greedy(plain.as_ref(), p, n_tokens)).collect::<Result<Vec<_>, _>>();
    let refs = refs.map_err(|e| e.to_string())?;
    drop(plain);
    let tol = if dtype == DType::F32 { 1e-4 } else { 5e-2 };
    let mut ok = true;
    println!("\n| tp | prompt | logits max_rel vs plain | argmax same | greedy same (of {n_tokens}) |\n|---|---|---|---|---|");
    for &tp in tps {
        let t0 = Instant::now();
        let split = build_parallel(path, &devs[..tp], dtype, WeightMode::Dense).map_err(|e| e.to_string())?;
        eprintln!("tp {tp}: loaded in {:.1} s", t0.elapsed().as_secs_f64());
        for (i, (p, (want_logits, want_tokens))) in prompts.iter().zip(&refs).enumerate() {
            let (logits, tokens) = greedy(&split, p, n_tokens).map_err(|e| e.to_string())?;
            let (err, same) = compare_logits(&logits, want_logits);
            let prefix = common_prefix(&tokens, want_tokens);
            // tp = 1 adds only identity collectives: exactly the plain model.
            let pass = if tp == 1 { err == 0.0 && prefix == n_tokens } else { err <= tol && same };
            ok &= pass;
            println!("| {tp} | {i} | {err:.2e} | {same} | {prefix}{} |", if pass { "" } else { " FAIL" });
        }
    }
    Ok(ok)
}
