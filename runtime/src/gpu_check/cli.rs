//! The command line of a GPU-check binary, shared so that any crate can make one in three
//! lines: `fn main() -> ExitCode { kiln_runtime::gpu_check::cli::main(MY_DEFS) }`.
//!
//! Exit status: 0 all passed, 1 a check failed, 2 the check could not run (no GPU, bad
//! arguments). The report goes to stdout (and to `--out FILE` when given).

use super::{run_all, CheckConfig};
use crate::device::Device;
use kiln_codegen::fused::FusedDef;
use kiln_codegen::ir::DType;
use std::process::ExitCode;

const USAGE: &str = "options: [--rows 1,7,512,4096] [--widths 576,4096,5120] [--dtypes f32,f16,bf16]
         [--only kernel,...] [--reps 50] [--warmup 10] [--seed N] [--gpu N]
         [--peak-gbps 2980] [--tolerance X] [--no-offset] [--no-baselines] [--quick]
         [--out report.md] [--list] [--cpu]
--cpu: run the harness with the CPU on both sides (a self-test without a GPU; no timing)
env: KILN_CUDA_LIB_DIRS (folders holding libnvrtc.so.13 / libcublas.so.13), KILN_CACHE_DIR";

pub fn main(defs: &[&'static FusedDef]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(defs, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(msg) => {
            eprintln!("{}: {msg}", program());
            ExitCode::from(2)
        }
    }
}

fn run(defs: &[&'static FusedDef], args: &[String]) -> Result<bool, String> {
    let mut cfg = CheckConfig::default();
    let mut only: Option<Vec<String>> = None;
    let mut out: Option<String> = None;
    let mut gpu = 0usize;
    let mut cpu = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--rows" => cfg.rows = list(&val()?)?,
            "--widths" => cfg.widths = list(&val()?)?,
            "--dtypes" => cfg.dtypes = val()?.split(',').map(dtype).collect::<Result<_, _>>()?,
            "--only" => only = Some(val()?.split(',').map(str::to_string).collect()),
            "--reps" => cfg.reps = num(&val()?)?,
            "--warmup" => cfg.warmup = num(&val()?)?,
            "--seed" => cfg.seed = num(&val()?)?,
            "--gpu" => gpu = num(&val()?)?,
            "--peak-gbps" => cfg.peak_gbps = num(&val()?)?,
            "--tolerance" => cfg.tolerance = Some(num(&val()?)?),
            "--out" => out = Some(val()?),
            "--no-offset" => cfg.offset_case = None,
            "--cpu" => cpu = true,
            "--no-baselines" => {
                cfg.copy_shape = None;
                cfg.gemm_n = None;
                cfg.gemm_checks.clear();
            }
            "--quick" => {
                cfg.rows = vec![1, 512];
                cfg.widths = vec![576, 4096];
                cfg.reps = 20;
            }
            "--list" => {
                for d in defs {
                    let dts: Vec<&str> = d.specs.iter().map(|s| s.dtype.name()).collect();
                    println!("{} ({}) at {}", d.name, dts.join(", "), d.source);
                }
                return Ok(true);
            }
            "-h" | "--help" => {
                println!("usage: {} ...\n{USAGE}", program());
                return Ok(true);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let chosen: Vec<&'static FusedDef> = match &only {
        Some(names) => {
            let unknown: Vec<&String> = names.iter().filter(|n| !defs.iter().any(|d| d.name == n.as_str())).collect();
            if !unknown.is_empty() {
                return Err(format!("no kernel named {unknown:?} (try --list)"));
            }
            defs.iter().copied().filter(|d| names.iter().any(|n| n == d.name)).collect()
        }
        None => defs.to_vec(),
    };
    let dev = if cpu {
        Device::Cpu
    } else {
        Device::cuda(gpu)
            .map_err(|e| format!("cannot open GPU {gpu}: {e}\n({})", crate::device::cuda_libs::summary()))?
    };
    eprintln!("{}: {} — {} kernel(s), seed {}", program(), dev.describe(), chosen.len(), cfg.seed);
    let report = run_all(&dev, &chosen, &cfg).map_err(|e| e.to_string())?;
    let md = report.markdown();
    println!("{md}");
    if let Some(path) = out {
        std::fs::write(&path, &md).map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(report.all_passed())
}

/// The binary's file name, for messages.
fn program() -> String {
    std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "kiln-gpu-check".into())
}

fn list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',').map(num).collect()
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("not a number: {s:?}"))
}

fn dtype(s: &str) -> Result<DType, String> {
    DType::STORAGE
        .into_iter()
        .find(|d| d.name() == s.trim())
        .ok_or_else(|| format!("unknown dtype {s:?} (f32, f16, bf16)"))
}
