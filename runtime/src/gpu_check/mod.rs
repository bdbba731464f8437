//! The GPU check: every fused kernel × dtype × shape run on the GPU, compared with the CPU
//! backend, timed; plus copy/GEMM baselines. [`run_all`] is the library entry; the
//! `kiln-gpu-check-samples` and `kiln-check-kernels` binaries (the latter with the models' `kernels::ALL`) print
//! [`Report::markdown`].
//!
//! Per case (see [`case`]): random non-zero inputs (the same bits on both backends), outputs
//! poisoned with NaN, the GPU result compared with the CPU one ([`compare`]: max relative
//! error, unwritten elements), then CUDA-event timing (warm-up, median of `reps`, buffer sets
//! rotated when the working set would sit in L2). GB/s counts each input read once and each
//! output written once. A case's failure is recorded in its row; the run goes on.

mod baselines;
pub mod case;
pub mod cli;
pub mod compare;
pub mod inputs;
pub mod quant;
mod report;
pub mod samples;
mod timing;

use crate::device::cuda_error::CudaError;
use crate::device::fused::FusedError;
use crate::device::gemm::GemmError;
use crate::device::tensor::TensorError;
use crate::device::{Device, DeviceError};
pub use case::Layout;
pub use compare::Diff;
use kiln_codegen::fused::FusedDef;
use kiln_codegen::ir::DType;
use rand::SeedableRng;

/// What to check and how.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    pub rows: Vec<usize>,
    pub widths: Vec<usize>,
    pub dtypes: Vec<DType>,
    /// Untimed launches before timing.
    pub warmup: usize,
    /// Timed launches (0: check only).
    pub reps: usize,
    /// Also run each kernel × dtype once on offset/strided views (scalar entry), at this shape.
    pub offset_case: Option<(usize, usize)>,
    /// Memory bandwidth the GB/s column is compared with.
    pub peak_gbps: f64,
    /// Comptime values by parameter name, overriding [`inputs::comptime_value`].
    pub comptime: Vec<(String, f64)>,
    /// Overrides the per-dtype `max_rel` bound ([`compare::tolerance`]).
    pub tolerance: Option<f64>,
    /// Random seed (printed in the report, so a run can be repeated).
    pub seed: u64,
    /// Copy baseline shape (bf16), GEMM throughput size (bf16 n³), GEMM correctness shapes.
    pub copy_shape: Option<(usize, usize)>,
    pub gemm_n: Option<usize>,
    pub gemm_checks: Vec<(usize, usize, usize)>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            rows: vec![1, 7, 512, 4096],
            widths: vec![576, 4096, 5120],
            dtypes: DType::STORAGE.to_vec(),
            warmup: 10,
            reps: 50,
            offset_case: Some((7, 576)),
            peak_gbps: 2980.0,
            comptime: vec![],
            tolerance: None,
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            copy_shape: Some((4096, 4096)),
            gemm_n: Some(4096),
            gemm_checks: vec![(1, 576, 1536), (7, 577, 129), (33, 4096, 4096)],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Fused(#[from] FusedError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Gemm(#[from] GemmError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error("kernel `{kernel}` wrote {count} element(s) outside its output views")]
    Stray { kernel: String, count: usize },
}

/// One kernel × dtype × shape × layout.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub kernel: String,
    pub dtype: DType,
    pub rows: usize,
    pub width: usize,
    pub layout: Layout,
    pub diff: Diff,
    pub pass: bool,
    pub median_us: Option<f64>,
    /// Bytes read once + written once.
    pub bytes: usize,
    pub error: Option<String>,
}

impl CaseResult {
    pub fn gbps(&self) -> Option<f64> {
        self.median_us.map(|us| self.bytes as f64 / (us * 1e-6) / 1e9)
    }
}

#[derive(Clone, Debug)]
pub struct CopyResult {
    pub rows: usize,
    pub cols: usize,
    pub bytes: usize,
    pub median_us: f64,
}

#[derive(Clone, Debug)]
pub struct GemmSpeed {
    pub n: usize,
    pub dtype: crate::DType,
    pub median_us: f64,
    pub tflops: f64,
}

#[derive(Clone, Debug)]
pub struct GemmCheck {
    pub dtype: crate::DType,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub offset: bool,
    pub diff: Diff,
    pub error: Option<String>,
}

impl GemmCheck {
    pub fn pass(&self) -> bool {
        self.error.is_none() && self.diff.passes(compare::tolerance(self.dtype.to_ir()))
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub device: String,
    /// Driver / NVRTC versions and preloaded libraries.
    pub libraries: String,
    pub seed: u64,
    pub peak_gbps: f64,
    pub cases: Vec<CaseResult>,
    pub copy: Option<Result<CopyResult, String>>,
    pub gemm_speed: Option<Result<GemmSpeed, String>>,
    pub gemm_checks: Vec<GemmCheck>,
    pub cache: crate::device::kernel_cache::KernelCacheStats,
}

impl Report {
    pub fn all_passed(&self) -> bool {
        self.cases.iter().all(|c| c.pass)
            && self.gemm_checks.iter().all(|g| g.pass())
            && !matches!(self.copy, Some(Err(_)))
            && !matches!(self.gemm_speed, Some(Err(_)))
    }

    pub fn markdown(&self) -> String {
        report::markdown(self)
    }
}

/// Check every def × dtype × shape on `gpu`. On a CUDA device: compare with the CPU, time,
/// measure the baselines. On the CPU device: the CPU against itself with no timing or
/// baselines — a self-test of the harness that needs no GPU.
pub fn run_all(gpu: &Device, defs: &[&'static FusedDef], cfg: &CheckConfig) -> Result<Report, CheckError> {
    let backend = gpu.cuda_backend().cloned();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut cases = vec![];
    for def in defs {
        for &dtype in &cfg.dtypes {
            if def.spec(dtype).is_none() {
                continue;
            }
            let mut shapes: Vec<(usize, usize, Layout)> = vec![];
            for &w in &cfg.widths {
                for &r in &cfg.rows {
                    shapes.push((r, w, Layout::Dense));
                }
            }
            if let Some((r, w)) = cfg.offset_case {
                shapes.push((r, w, Layout::Offset));
            }
            for (rows, width, layout) in shapes {
                let case = case::Case { def, dtype, rows, width, layout, cfg };
                cases.push(case.run(gpu, &mut rng));
            }
        }
    }
    let (mut copy, mut gemm_speed, mut gemm_checks) = (None, None, vec![]);
    if let Some(b) = &backend {
        copy = cfg.copy_shape.map(|(r, c)| baselines::copy(gpu, b, cfg, r, c).map_err(|e| e.to_string()));
        gemm_speed = cfg.gemm_n.map(|n| baselines::gemm_speed(gpu, b, cfg, n, &mut rng).map_err(|e| e.to_string()));
        for &shape in &cfg.gemm_checks {
            for dtype in cfg.dtypes.iter().filter_map(|&d| crate::DType::from_ir(d)) {
                for offset in [false, true] {
                    gemm_checks.push(baselines::gemm_check(gpu, dtype, shape, offset, &mut rng));
                }
            }
        }
    }
    Ok(Report {
        device: gpu.describe(),
        libraries: crate::device::cuda_libs::summary(),
        seed: cfg.seed,
        peak_gbps: cfg.peak_gbps,
        cases,
        copy,
        gemm_speed,
        gemm_checks,
        cache: backend.map(|b| b.kernel_cache_stats()).unwrap_or_default(),
    })
}
