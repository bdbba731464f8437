//! `kiln build [--arch sm_XY]`: compile every kernel kiln can launch (the models' `#[fused]`
//! row kernels and attention template instances, the runtime's utility kernels and device
//! sampler) with NVRTC for one GPU architecture and store the PTX in the kernel cache, so a
//! server starts warm. Without `--arch` the local GPU's architecture is used; with it no GPU
//! is needed.

use anyhow::{bail, Context, Result};
use kiln_runtime::device::ptx_cache::{ptx_for, PtxOrigin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Target architecture, e.g. `sm_90`; default: the first local GPU's.
    #[arg(long)]
    arch: Option<String>,
}

fn parse_arch(s: &str) -> Result<(i32, i32)> {
    let digits = s.strip_prefix("sm_").with_context(|| format!("--arch {s}: expected sm_XY, e.g. sm_90"))?;
    let n: i32 = digits.parse().with_context(|| format!("--arch {s}: expected sm_XY"))?;
    if n < 80 {
        bail!("--arch {s}: kiln's kernels need sm_80 or newer");
    }
    Ok((n / 10, n % 10))
}

pub fn run(a: BuildArgs) -> Result<()> {
    let cc = match &a.arch {
        Some(s) => parse_arch(s)?,
        None => {
            let dev =
                kiln_runtime::Device::cuda(0).context("no GPU to take the architecture from (give --arch sm_XY)")?;
            dev.cuda_backend().map(|b| b.compute_capability()).context("not a CUDA device")?
        }
    };
    let mut sources: Vec<(String, &'static str)> = vec![];
    for def in kiln_models::kernels::ALL {
        sources.extend(def.specs.iter().map(|s| (format!("{}_{}", def.name, s.dtype), s.cuda)));
    }
    for def in kiln_models::kernels::ATTENTION {
        sources.extend(def.specs.iter().map(|s| (format!("{}_{}", def.name, s.dtype), s.cuda)));
    }
    sources.push(("kiln_device_kernels".into(), kiln_runtime::device::device_kernels::source()));
    sources.push(("kiln_sampler".into(), kiln_runtime::sample::device::source()));
    sources.push(("kiln_int4".into(), kiln_runtime::device::quant::int4_cuda::source()));
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let counts = Mutex::new([0usize; 3]);
    let failures = Mutex::new(vec![]);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some((name, src)) = sources.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match ptx_for(src, name, cc, false) {
                        Ok((_, origin)) => {
                            let i = match origin {
                                PtxOrigin::Disk => 0,
                                PtxOrigin::Compiled => 1,
                                PtxOrigin::CompiledNotCached => 2,
                            };
                            counts.lock().unwrap_or_else(|e| e.into_inner())[i] += 1;
                        }
                        Err(e) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{name}: {e}")),
                    }
                }
            });
        }
    });
    let [disk, compiled, uncached] = *counts.lock().unwrap_or_else(|e| e.into_inner());
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let dir =
        kiln_runtime::device::ptx_cache::cache_dir().map_or("(no cache folder)".into(), |d| d.display().to_string());
    eprintln!(
        "kiln build: {} sources for sm_{}{} in {:.1} s: {compiled} compiled, {disk} already cached, {uncached} not cachable; cache {dir}",
        sources.len(),
        cc.0,
        cc.1,
        t.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!("{} failed:\n{}", failures.len(), failures.join("\n"));
    }
    if uncached > 0 {
        bail!("{uncached} kernels could not be written to the cache folder {dir}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_arch;

    #[test]
    fn arches() {
        assert_eq!(parse_arch("sm_90").unwrap(), (9, 0));
        assert_eq!(parse_arch("sm_86").unwrap(), (8, 6));
        assert!(parse_arch("sm_75").is_err() && parse_arch("90").is_err() && parse_arch("sm_x").is_err());
    }
}
