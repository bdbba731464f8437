//! CUDA C source to PTX with NVRTC, cached on disk.
//!
//! - File: `<cache root>/kernels/<sha256(source, options)>-<compute_XY>-<kiln version>.ptx`;
//!   the cache root is `$KILN_CACHE_DIR` when set, else the platform cache folder + `kiln`
//!   (`~/.cache/kiln` on Linux).
//! - PTX is compiled for the virtual architecture `compute_XY` of the device; the driver turns
//!   it into machine code when the module is loaded (and keeps its own cache of that).
//! - Files are written to a temporary name and renamed, so a reader never sees half a file.
//! - The disk is an optimisation: a failed read or write never fails a compile, it is
//!   reported in the [`PtxOrigin`] so callers can count it.
//!
//! Needs only libnvrtc, no GPU: tests and tools can build PTX on any machine.

use crate::device::cuda_error::{guarded, CudaError};
use cudarc::nvrtc::CompileOptions;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where a PTX text came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtxOrigin {
    /// Read from the disk cache.
    Disk,
    /// Compiled now and written to the disk cache.
    Compiled,
    /// Compiled now; the disk cache could not be written (or there is no cache folder).
    CompiledNotCached,
}

/// The folder compiled kernels are cached in.
pub fn cache_dir() -> Option<PathBuf> {
    crate::cache_dir::cache_root().map(|root| root.join("kernels"))
}

/// The NVRTC options for a compute capability (they are part of the cache key). For kernel
/// experiments, `KILN_NVRTC_DEFINES=A=1,B` defines those macros in every kernel compiled.
pub fn nvrtc_options(cc: (i32, i32)) -> Vec<String> {
    let mut options = vec![format!("--gpu-architecture=compute_{}{}", cc.0, cc.1)];
    if let Ok(defines) = std::env::var("KILN_NVRTC_DEFINES") {
        options.extend(defines.split(',').filter(|d| !d.is_empty()).map(|d| format!("-D{d}")));
    }
    options
}

/// PTX for `source` on a device of compute capability `cc`: from the disk cache, or compiled
/// (and cached). `refresh` skips the read (to replace a file that failed to load). `name`
/// labels errors and the NVRTC program.
pub fn ptx_for(source: &str, name: &str, cc: (i32, i32), refresh: bool) -> Result<(String, PtxOrigin), CudaError> {
    let options = nvrtc_options(cc);
    let virt = format!("compute_{}{}", cc.0, cc.1);
    let file = cache_dir()
        .map(|d| d.join(format!("{}-{virt}-{}.ptx", source_hash(source, &options), env!("CARGO_PKG_VERSION"))));
    if let (Some(path), false) = (&file, refresh) {
        if let Ok(ptx) = std::fs::read_to_string(path) {
            return Ok((ptx, PtxOrigin::Disk));
        }
    }
    let ptx = compile(source, name, &virt, options)?;
    let origin = match &file {
        Some(path) if write_atomically(path, &ptx).is_ok() => PtxOrigin::Compiled,
        _ => PtxOrigin::CompiledNotCached,
    };
    Ok((ptx, origin))
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
    if !crate::device::cuda_libs::probe().nvrtc {
        return Err(fail("libnvrtc.so.13 not found (put it on the loader path or in KILN_CUDA_LIB_DIRS)".into()));
    }
    // cudarc turns both into C strings and would panic on an interior NUL.
    if source.contains('\0') || name.contains('\0') {
        return Err(fail("source or name contains a NUL byte".into()));
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

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("cache path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), rand::random::<u64>()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
