//! Finding the CUDA shared libraries before cudarc looks for them.
//!
//! cudarc (feature `dynamic-loading`) opens `libcuda`, `libnvrtc` and `libcublas` by *name* the
//! first time one of their functions is called, and **panics** when a library is missing. So
//! every CUDA entry point in kiln first calls [`probe`], which answers "is each library
//! loadable?" without panicking.
//!
//! A machine often has the toolkit libraries in a folder that is not on the loader's search
//! path (`/usr/local/cuda/lib64`, a Python wheel's `nvidia/cu13/lib`). [`probe`] therefore
//! first opens, by full path, the libraries it finds in the folders of `$KILN_CUDA_LIB_DIRS`
//! (`:`-separated), a few standard places and `<cache root>/nvrtc/nvidia/cu13/lib` (see `cache_dir`) (where the
//! project unpacks the NVRTC wheel), and keeps them open for the life of the process.
//! The dynamic loader then satisfies cudarc's later open-by-name from the already loaded
//! object (a loaded library matches its soname, e.g. `libnvrtc.so.13`).
//!
//! Invariants: [`probe`] never panics; preloading happens at most once per process; a library
//! is preloaded only when it cannot already be found by name.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The CUDA major version of the bindings compiled into cudarc (`cuda-13000` feature): the
/// soname suffix of the toolkit libraries we look for.
const CUDA_MAJOR: &str = "13";

/// Folders searched after `$KILN_CUDA_LIB_DIRS`, in order.
const STANDARD_DIRS: &[&str] = &[
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/local/cuda-13.0/lib64",
    "/usr/local/nvidia/lib64",
    "/usr/lib/x86_64-linux-gnu",
];

/// Which CUDA libraries can be loaded in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibStatus {
    /// The driver API (`libcuda.so`), installed with the GPU driver.
    pub driver: bool,
    /// The run-time compiler (`libnvrtc.so.13`).
    pub nvrtc: bool,
    /// cuBLAS (`libcublas.so.13`, which needs `libcublasLt.so.13`).
    pub cublas: bool,
    /// Full paths this process preloaded (for the human-readable device line).
    pub preloaded: Vec<PathBuf>,
}

impl LibStatus {
    pub fn all_present(&self) -> bool {
        self.driver && self.nvrtc && self.cublas
    }

    /// Names of the missing libraries, for messages.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = vec![];
        if !self.driver {
            m.push("libcuda (the NVIDIA driver)");
        }
        if !self.nvrtc {
            m.push("libnvrtc.so.13");
        }
        if !self.cublas {
            m.push("libcublas.so.13");
        }
        m
    }
}

/// Preload what can be found, then report which libraries cudarc will be able to open.
/// Cached: the answer cannot change once libraries are loaded.
pub fn probe() -> &'static LibStatus {
    static STATUS: OnceLock<LibStatus> = OnceLock::new();
    STATUS.get_or_init(|| {
        let mut preloaded = vec![];
        // SAFETY (all `is_culib_present` calls): they only try to dlopen candidate names; the
        // libraries' initialisers are trusted system code.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            // nvrtc opens its builtins library by name at compile time: load it first.
            preload(&["libnvrtc-builtins.so.", "libnvrtc.so."], &mut preloaded);
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            // libcublas needs libcublasLt; load the dependency first so it resolves.
            preload(&["libcublasLt.so.", "libcublas.so."], &mut preloaded);
        }
        LibStatus {
            driver: unsafe { cudarc::driver::sys::is_culib_present() },
            nvrtc: unsafe { cudarc::nvrtc::sys::is_culib_present() },
            cublas: unsafe { cudarc::cublas::sys::is_culib_present() },
            preloaded,
        }
    })
}

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("KILN_CUDA_LIB_DIRS")
        .map(|v| v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default();
    dirs.extend(STANDARD_DIRS.iter().map(PathBuf::from));
    // Where the project's docs unpack the NVRTC wheel (nvidia-cuda-nvrtc) on a GPU-less machine.
    if let Some(c) = crate::cache_dir::cache_root() {
        dirs.push(c.join("nvrtc/nvidia/cu13/lib"));
    }
    dirs
}

/// For each prefix (e.g. `libnvrtc.so.`), open the first `<prefix>13[.x...]` file found in the
/// search folders, in that order, and leak the handle so it stays loaded.
fn preload(prefixes: &[&str], loaded: &mut Vec<PathBuf>) {
    let dirs = search_dirs();
    for prefix in prefixes {
        let want = format!("{prefix}{CUDA_MAJOR}");
        let found = dirs.iter().find_map(|d| find_in(d, &want));
        if let Some(path) = found {
            // SAFETY: loading a vendor library runs its initialisers; that is what cudarc
            // would do a moment later by name.
            if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                // Kept loaded for the life of the process: cudarc resolves symbols from it.
                std::mem::forget(lib);
                loaded.push(path);
            }
        }
    }
}

/// `dir/<want>` or, failing that, the lexically last `dir/<want>.*` (e.g. `libnvrtc-builtins.so.13.0`).
fn find_in(dir: &Path, want: &str) -> Option<PathBuf> {
    let exact = dir.join(want);
    if exact.is_file() {
        return Some(exact);
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut hits: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{want}."))))
        .collect();
    hits.sort();
    hits.pop()
}

/// `(major, minor)` of the CUDA version the driver supports, if libcuda loads.
pub fn driver_version() -> Option<(i32, i32)> {
    if !probe().driver {
        return None;
    }
    let mut v = 0i32;
    // SAFETY: the library is present (probed); the call only writes the out-parameter.
    let ok = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) } == cudarc::driver::sys::CUresult::CUDA_SUCCESS;
    ok.then_some((v / 1000, (v % 1000) / 10))
}

/// `(major, minor)` of the loaded NVRTC, if it loads. PTX from an NVRTC newer than the
/// driver's CUDA version is rejected at module load (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !probe().nvrtc {
        return None;
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: the library is present (probed); the call only writes the out-parameters.
    let ok = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS;
    ok.then_some((major, minor))
}

/// One line for reports: driver and NVRTC versions and what was preloaded from where.
pub fn summary() -> String {
    let v = |x: Option<(i32, i32)>| x.map_or("-".to_string(), |(a, b)| format!("{a}.{b}"));
    let p = probe();
    let pre: Vec<String> = p.preloaded.iter().map(|x| x.display().to_string()).collect();
    format!(
        "driver CUDA {}, NVRTC {}, cuBLAS {}; preloaded: {}",
        v(driver_version()),
        v(nvrtc_version()),
        if p.cublas { "found" } else { "missing" },
        if pre.is_empty() { "none".into() } else { pre.join(", ") }
    )
}
