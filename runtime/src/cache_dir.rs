//! The one rule for where kiln keeps what it downloads and compiles (models, the NVRTC
//! library, compiled kernels): `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
//! `~/.cache/kiln` (the platform cache folder + `kiln` elsewhere). The fetcher, the kernel
//! cache, the CUDA library search, the tests and `scripts/test.sh` all follow it.

use std::path::PathBuf;

/// The environment variable that overrides the cache root.
pub const CACHE_DIR_ENV: &str = "KILN_CACHE_DIR";

/// The cache root, or `None` when no rule gives one (no home directory).
pub fn cache_root() -> Option<PathBuf> {
    match std::env::var_os(CACHE_DIR_ENV) {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        // `dirs::cache_dir` is `$XDG_CACHE_HOME` when set (and absolute), else `~/.cache`.
        _ => dirs::cache_dir().map(|d| d.join("kiln")),
    }
}
