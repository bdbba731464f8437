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

/// What one compile gave: the log (always) and the PTX (when it compiled).
#[derive(Debug, Clone)]
pub struct NvrtcOutcome {
    pub log: String,
    pub ptx: Option<String>,
}

/// Compile `source` (named `file` in messages) for `arch` (`sm_80`, `sm_90`, ...) with extra
/// NVRTC options, keeping the log whatever the result. `Err` only when NVRTC itself could not
/// be used (library missing, NUL bytes, program creation failed).
pub fn compile_with_log(file: &str, source: &str, arch: &str, extra: &[&str]) -> Result<NvrtcOutcome, String> {
    if !nvrtc_present() {
        return Err("libnvrtc.so.13 could not be loaded".into());
    }
    let src = CString::new(source).map_err(|_| "source has a NUL byte".to_string())?;
    let name = CString::new(file).map_err(|_| "file name has a NUL byte".to_string())?;
    let prog = result::create_program(&src, Some(&name)).map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let mut opts = vec![format!("--gpu-architecture={arch}")];
    opts.extend(extra.iter().map(|s| s.to_string()));
    // SAFETY: `prog` was just created and is destroyed once, below; `src`/`name` outlive it.
    let ok = unsafe { result::compile_program(prog, &opts) }.is_ok();
    let log =
        unsafe { result::get_program_log(prog) }.map(|raw| c_text(&raw)).unwrap_or_else(|e| format!("<no log: {e:?}>"));
    let ptx = if ok { unsafe { result::get_ptx(prog) }.ok().map(|raw| c_text(&raw)) } else { None };
    // SAFETY: destroyed exactly once.
    let _ = unsafe { result::destroy_program(prog) };
    Ok(NvrtcOutcome { log, ptx })
}

/// Compile `source` for `arch`. `Err` holds the log (or the failure) when the compile failed or
/// printed anything.
pub fn compile_strict(file: &str, source: &str, arch: &str) -> Result<String, String> {
    let out = compile_with_log(file, source, arch, &[])?;
    match out.ptx {
        Some(ptx) if out.log.trim().is_empty() => Ok(ptx),
        Some(_) => Err(format!("compiled with warnings:\n{}", out.log)),
        None => Err(format!("failed:\n{}", out.log)),
    }
}

fn c_text(raw: &[std::ffi::c_char]) -> String {
    if raw.is_empty() {
        return String::new();
    }
    // SAFETY: NVRTC returns NUL-terminated text in a buffer of the size it reported.
    unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().into_owned()
}
