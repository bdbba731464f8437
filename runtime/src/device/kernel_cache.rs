//! Compiled fused kernels on one GPU: modules cached in memory, PTX from [`crate::device::ptx_cache`].
//!
//! In memory, modules are keyed by the address of the spec's `&'static str` CUDA source (a
//! spec's source is a compile-time constant, so its address identifies it for the life of the
//! process and the hot path hashes nothing). A PTX file from the disk cache that fails to load
//! (corrupt, or from an NVRTC newer than the driver) is recompiled and replaced once.

use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::{drv, guarded, CudaError};
use crate::device::ptx_cache::{ptx_for, PtxOrigin};
use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use kiln_codegen::abi;
use kiln_codegen::fused::FusedSpec;
use kiln_codegen::ir::Kernel;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Both entry points of one loaded specialisation.
pub(crate) struct LoadedKernel {
    /// Elements per access of the vectorised entry (`_v{vec}`).
    pub vec: usize,
    pub vec_fn: CudaFunction,
    pub scalar_fn: CudaFunction,
    /// Keeps the module loaded while its functions are in use.
    _module: LoadedModule,
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
    /// Modules of other generated sources (attention templates), with their entries; keyed by
    /// the source's address and a variant (an attention head dim; 0 for a whole source).
    modules: Mutex<HashMap<(usize, String), Arc<LoadedModule>>>,
    stats: Mutex<KernelCacheStats>,
}

impl KernelCache {
    pub fn new() -> KernelCache {
        KernelCache {
            loaded: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            stats: Mutex::new(KernelCacheStats::default()),
        }
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

impl CudaBackend {
    /// The loaded module of a specialisation, compiling or reading it from disk on first use.
    pub(crate) fn fused_kernel(
        &self,
        spec: &'static FusedSpec,
        kernel: &Kernel,
    ) -> Result<Arc<LoadedKernel>, CudaError> {
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
        let (vec_name, scalar_name) = abi::entry_names(kernel);
        let module = self.compile_and_load(spec.cuda, &kernel.spec_name(), &[vec_name.clone(), scalar_name.clone()])?;
        Ok(LoadedKernel {
            vec: abi::kernel_vec(kernel),
            vec_fn: module.func(&vec_name)?.clone(),
            scalar_fn: module.func(&scalar_name)?.clone(),
            _module: module,
        })
    }

    /// PTX for `source` (disk cache or NVRTC), loaded with `entries`. A cache file that fails
    /// to load (stale or corrupt) is compiled afresh once, which overwrites it.
    fn compile_and_load(&self, source: &str, name: &str, entries: &[String]) -> Result<LoadedModule, CudaError> {
        let cc = self.compute_capability();
        let (ptx, origin) = ptx_for(source, name, cc, false)?;
        self.count_origin(origin);
        match self.load_entries(ptx, name, entries) {
            Ok(m) => Ok(m),
            Err(_) if origin == PtxOrigin::Disk => {
                let (ptx, origin) = ptx_for(source, name, cc, true)?;
                self.count_origin(origin);
                self.load_entries(ptx, name, entries)
            }
            Err(e) => Err(e),
        }
    }

    fn count_origin(&self, origin: PtxOrigin) {
        self.kernels.count(|s| match origin {
            PtxOrigin::Disk => s.disk_hits += 1,
            PtxOrigin::Compiled => s.compiled += 1,
            PtxOrigin::CompiledNotCached => {
                s.compiled += 1;
                s.disk_errors += 1;
            }
        });
    }
}

/// A loaded module and the entry points asked for when it was loaded, by name.
pub(crate) struct LoadedModule {
    pub funcs: HashMap<String, CudaFunction>,
    _module: Arc<CudaModule>,
}

impl LoadedModule {
    pub fn func(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.funcs.get(name).ok_or_else(|| CudaError::Nvrtc {
            kernel: name.to_string(),
            arch: String::new(),
            msg: "entry point was not loaded with its module".into(),
        })
    }
}

impl CudaBackend {
    /// The module of a `'static` CUDA source with the named entry points, compiled or read from
    /// the disk cache on first use (keyed, like the row kernels, by the source's address).
    pub(crate) fn module_with(
        &self,
        source: &'static str,
        name: &str,
        entries: &[String],
    ) -> Result<Arc<LoadedModule>, CudaError> {
        self.module_variant(source, &[], name, entries)
    }

    /// The module of `source` compiled with `#define {macro} {value}` lines in front (the
    /// variant), so one generated file yields a module per variant with only that variant's
    /// entries (an attention template per head dim and KV-cache element type); no defines: the
    /// source as it is.
    pub(crate) fn module_variant(
        &self,
        source: &'static str,
        defines: &[(&str, usize)],
        name: &str,
        entries: &[String],
    ) -> Result<Arc<LoadedModule>, CudaError> {
        let prefix: String = defines.iter().map(|(d, v)| format!("#define {d} {v}\n")).collect();
        let key = (source.as_ptr() as usize, prefix.clone());
        if let Some(m) = self.kernels.modules.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(m.clone());
        }
        let loaded = Arc::new(if prefix.is_empty() {
            self.compile_and_load(source, name, entries)?
        } else {
            self.compile_and_load(&format!("{prefix}{source}"), name, entries)?
        });
        let mut map = self.kernels.modules.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(key).or_insert(loaded).clone())
    }

    fn load_entries(&self, ptx: String, name: &str, entries: &[String]) -> Result<LoadedModule, CudaError> {
        guarded("loading a kernel module", || {
            // load_module turns the text into a C string: an interior NUL would panic there.
            if ptx.contains('\0') {
                return Err(CudaError::Nvrtc {
                    kernel: name.to_string(),
                    arch: String::new(),
                    msg: "PTX text contains a NUL byte".into(),
                });
            }
            let module =
                drv(format!("loading the PTX module of `{name}`"), self.context().load_module(Ptx::from_src(ptx)))?;
            let mut funcs = HashMap::new();
            for e in entries {
                funcs.insert(e.clone(), drv(format!("finding entry `{e}`"), module.load_function(e))?);
            }
            Ok(LoadedModule { funcs, _module: module })
        })
    }
}
