//! Compiled fused kernels on one GPU: NVRTC once per specialisation, PTX cached on disk,
//! modules cached in memory.
//!
//! - In memory: keyed by the address of the spec's `&'static str` CUDA source (a spec's source
//!   is a compile-time constant, so its address identifies it for the life of the process and
//!   the hot path hashes nothing).
//! - On disk: `<cache root>/kernels/<sha256(source, options)>-<compute_XY>-<kiln version>.ptx`,
//!   where the cache root is `$KILN_CACHE_DIR` or the platform cache folder + `kiln`. Files are
//!   written to a temporary name and renamed, so a reader never sees half a file. A file that
//!   fails to load (corrupt, written by an incompatible NVRTC) is recompiled and replaced.
//! - Disk problems never fail a launch: the cache is an optimisation; they are counted in
//!   [`KernelCacheStats::disk_errors`].
//!
//! PTX is compiled for the virtual architecture `compute_XY` of the device; the driver turns it
//! into machine code at load time (and keeps its own cache of that).

use crate::cuda_backend::CudaBackend;
use crate::cuda_error::{drv, guarded, CudaError};
use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};
use kiln_codegen::abi;
use kiln_codegen::fused::FusedSpec;
use kiln_codegen::ir::Kernel;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Both entry points of one loaded specialisation.
pub(crate) struct LoadedKernel {
    /// Elements per access of the vectorised entry (`_v{vec}`).
    pub vec: usize,
    pub vec_fn: CudaFunction,
    pub scalar_fn: CudaFunction,
    /// Keeps the module loaded while its functions are in use.
    _module: Arc<CudaModule>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCacheStats {
    /// Specialisations compiled by NVRTC in this process.
    pub compiled: usize,
    /// Specialisations loaded from PTX on disk.
    pub disk_hits: usize,
    /// Disk cache reads/writes that failed (the launch went on without the cache).
    pub disk_errors: usize,
}

pub(crate) struct KernelCache {
    loaded: Mutex<HashMap<usize, Arc<LoadedKernel>>>,
    stats: Mutex<KernelCacheStats>,
}

impl KernelCache {
    pub fn new() -> KernelCache {
        KernelCache { loaded: Mutex::new(HashMap::new()), stats: Mutex::new(KernelCacheStats::default()) }
    }

    pub fn stats(&self) -> KernelCacheStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    fn count(&self, f: impl FnOnce(&mut KernelCacheStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }
}

/// The folder compiled kernels are cached in.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("KILN_CACHE_DIR") {
        Some(root) if !root.is_empty() => Some(PathBuf::from(root).join("kernels")),
        _ => dirs::cache_dir().map(|d| d.join("kiln").join("kernels")),
    }
}

impl CudaBackend {
    /// The loaded module of a specialisation, compiling or reading it from disk on first use.
    pub(crate) fn fused_kernel(&self, spec: &'static FusedSpec, kernel: &Kernel) -> Result<Arc<LoadedKernel>, CudaError> {
        let key = spec.cuda.as_ptr() as usize;
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        if let Some(k) = self.kernels.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(k.clone());
        }
        let loaded = Arc::new(self.load_spec(spec, kernel)?);
        let mut map = self.kernels.loaded.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(key).or_insert(loaded).clone())
    }

    fn load_spec(&self, spec: &'static FusedSpec, kernel: &Kernel) -> Result<LoadedKernel, CudaError> {
        let virt = format!("compute_{}{}", self.compute_capability().0, self.compute_capability().1);
        let options = vec![format!("--gpu-architecture={virt}")];
        let file = cache_dir().map(|d| d.join(format!("{}-{virt}-{}.ptx", source_hash(spec.cuda, &options), env!("CARGO_PKG_VERSION"))));
        let name = kernel.spec_name();

        if let Some(path) = &file {
            match std::fs::read_to_string(path) {
                Ok(ptx) => {
                    if let Ok(k) = self.load_ptx(ptx, kernel) {
                        self.kernels.count(|s| s.disk_hits += 1);
                        return Ok(k);
                    }
                    // Unloadable cached file: fall through, recompile and overwrite it.
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => self.kernels.count(|s| s.disk_errors += 1),
            }
        }

        let ptx = compile(spec.cuda, &name, &virt, options)?;
        self.kernels.count(|s| s.compiled += 1);
        if let Some(path) = &file {
            if write_atomically(path, &ptx).is_err() {
                self.kernels.count(|s| s.disk_errors += 1);
            }
        }
        self.load_ptx(ptx, kernel)
    }

    fn load_ptx(&self, ptx: String, kernel: &Kernel) -> Result<LoadedKernel, CudaError> {
        let (vec_name, scalar_name) = abi::entry_names(kernel);
        guarded("loading a kernel module", || {
            // load_module turns the text into a C string: an interior NUL would panic there.
            if ptx.contains('\0') {
                return Err(CudaError::Nvrtc {
                    kernel: kernel.spec_name(),
                    arch: String::new(),
                    msg: "PTX text contains a NUL byte".into(),
                });
            }
            let module = drv(format!("loading the PTX module of `{}`", kernel.spec_name()), self.context().load_module(Ptx::from_src(ptx)))?;
            let vec_fn = drv(format!("finding entry `{vec_name}`"), module.load_function(&vec_name))?;
            let scalar_fn = drv(format!("finding entry `{scalar_name}`"), module.load_function(&scalar_name))?;
            Ok(LoadedKernel { vec: abi::kernel_vec(kernel), vec_fn, scalar_fn, _module: module })
        })
    }
}

/// Hex sha256 of the source and the NVRTC options (both change the PTX).
fn source_hash(source: &str, options: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    for o in options {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// NVRTC: CUDA C source to PTX text.
fn compile(source: &str, name: &str, arch: &str, options: Vec<String>) -> Result<String, CudaError> {
    let fail = |msg: String| CudaError::Nvrtc { kernel: name.to_string(), arch: arch.to_string(), msg };
    if source.contains('\0') {
        return Err(fail("source contains a NUL byte".into()));
    }
    let opts = CompileOptions { options, name: Some(format!("{name}.cu")), ..Default::default() };
    let ptx = guarded("NVRTC compilation", || {
        cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| fail(nvrtc_message(&e)))
    })?;
    let bytes = ptx.as_bytes().ok_or_else(|| fail("NVRTC returned no PTX image".into()))?;
    // The image is a C string: drop the terminating NUL(s).
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8(bytes[..end].to_vec()).map_err(|_| fail("PTX is not UTF-8".into()))
}

/// The compiler log is what a reader needs; cudarc's Debug form buries it in a CString.
fn nvrtc_message(e: &cudarc::nvrtc::CompileError) -> String {
    match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, options, log } => {
            format!("{nvrtc:?} (options {options:?}):\n{}", log.to_string_lossy())
        }
        other => format!("{other:?}"),
    }
}

fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("cache path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), rand::random::<u64>()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
