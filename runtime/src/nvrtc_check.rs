//! A strict NVRTC compile for tests and CI: compile a CUDA source for an architecture and
//! return the PTX only when the log is empty (no error, no warning). NVRTC needs no GPU.
//!
//! cudarc's `compile_ptx_with_opts` returns the log only on failure, so warnings would go
//! unseen; this uses the `nvrtc::result` layer to read the log after a successful compile too.

use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString};

/// Whether libnvrtc can be loaded (cudarc panics on first use when it cannot).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes whether the library can be opened.
    unsafe { sys::is_culib_present() }
}

/// Compile `source` (named `file` in messages) for `arch` (`sm_80`, `sm_90`, ...).
/// `Err` holds the log (or the failure) when the compile failed or printed anything.
pub fn compile_strict(file: &str, source: &str, arch: &str) -> Result<String, String> {
    if !nvrtc_present() {
        return Err("libnvrtc.so.13 could not be loaded".into());
    }
    let src = CString::new(source).map_err(|_| "source has a NUL byte".to_string())?;
    let name = CString::new(file).map_err(|_| "file name has a NUL byte".to_string())?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let opts = [format!("--gpu-architecture={arch}")];
    // SAFETY: `prog` was just created and is destroyed once, below; `src`/`name` outlive it.
    let ok = unsafe { result::compile_program(prog, &opts) }.is_ok();
    let log = unsafe { result::get_program_log(prog) }.map(|raw| c_text(&raw)).unwrap_or_default();
    let ptx = if ok { unsafe { result::get_ptx(prog) }.ok().map(|raw| c_text(&raw)) } else { None };
    // SAFETY: destroyed exactly once.
    let _ = unsafe { result::destroy_program(prog) };
    match ptx {
        Some(ptx) if log.trim().is_empty() => Ok(ptx),
        Some(_) => Err(format!("compiled with warnings:\n{log}")),
        None => Err(format!("failed:\n{log}")),
    }
}

fn c_text(raw: &[std::ffi::c_char]) -> String {
    if raw.is_empty() {
        return String::new();
    }
    // SAFETY: NVRTC returns NUL-terminated text in a buffer of the size it reported.
    unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().into_owned()
}
