//! What the quantized-weight check programs (`kiln-check-int4`, `kiln-check-w8`) share:
//! reproducible random draws, activations rounded as the GPU reads them, the error measure,
//! and the device's copy bandwidth (the roofline their speed is judged against).

use crate::device::timing::median_us;
use crate::{DType, Device, Tensor};

/// Reproducible inputs: the sampler's counter-based SplitMix64 (seed, draw count).
pub struct Rand(pub u64, pub u64);

impl Rand {
    pub fn u64(&mut self) -> u64 {
        self.1 += 1;
        crate::sample::rng::bits(self.0, self.1)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `v` rounded to `dtype` and back (what the GPU reads).
pub fn as_dtype(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        DType::BF16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// The largest `|got - want|` as a fraction of the largest `|want|` (NaN stays NaN, so a
/// caller's `err <= tol` fails on it).
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() {
        return f32::NAN;
    }
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-6);
    // `f32::max` drops a NaN operand, so a NaN is kept by hand once seen.
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, |a, d| {
        if a.is_nan() || d.is_nan() {
            f32::NAN
        } else {
            a.max(d)
        }
    });
    worst / scale
}

/// The device's copy bandwidth in GB/s (a 1 GiB device-to-device copy: read + write).
pub fn copy_gbs(dev: &Device) -> Result<f64, Box<dyn std::error::Error>> {
    let Device::Cuda(b) = dev else { return Err("copy bandwidth needs a GPU".into()) };
    let n = 1usize << 28;
    let src = Tensor::zeros(dev, DType::F32, 1, n)?;
    let mut dst = Tensor::zeros(dev, DType::F32, 1, n)?;
    let us = median_us(b, 3, 10, |_| dst.copy_from(&src).map_err(Box::<dyn std::error::Error>::from))?;
    Ok(2.0 * (n * 4) as f64 / us / 1e3)
}

/// `--max-rows N` of the command line (time only batches of up to N rows), or no limit.
pub fn max_rows_arg() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == "--max-rows").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(usize::MAX)
}

/// A check program's `main`: `check` on GPU 0 (its pass and fail counts) unless `--no-check`
/// is given, then `speed` unless `--no-speed` is; exit status 0 when every comparison passed
/// and the speed run ended.
pub fn main_with(
    name: &str,
    check: impl FnOnce(&Device) -> Result<(usize, usize), Box<dyn std::error::Error>>,
    speed: impl FnOnce(&Device) -> Result<(), Box<dyn std::error::Error>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{name} needs a GPU: {e}");
            return ExitCode::FAILURE;
        }
    };
    let skip = std::env::args().any(|a| a == "--no-check");
    match if skip { Ok((0, 0)) } else { check(&dev) } {
        Ok((_, 0)) if skip => println!("{name}: GPU vs CPU check skipped (--no-check)"),
        Ok((p, 0)) => println!("{name}: GPU vs CPU, all {p} comparisons passed"),
        Ok((p, f)) => {
            println!("{name}: GPU vs CPU, {f} of {} comparisons FAILED", p + f);
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    if std::env::args().any(|a| a == "--no-speed") {
        return ExitCode::SUCCESS;
    }
    match speed(&dev) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Passed and failed comparisons of a check program.
#[derive(Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
}

impl Tally {
    /// One comparison: it passes when `err <= tol` (a NaN error fails); a failure is printed
    /// with `what()` naming the case.
    pub fn record(&mut self, err: f32, tol: f32, what: impl FnOnce() -> String) {
        if err <= tol {
            self.passed += 1;
        } else {
            self.failed += 1;
            println!("FAIL {}: max error {err:.2e} of max |ref| (tol {tol:.0e})", what());
        }
    }
}
