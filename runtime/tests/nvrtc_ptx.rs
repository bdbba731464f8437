//! The GPU launch path, checked without a GPU: every sample kernel's CUDA compiles to PTX
//! through `ptx_cache` (NVRTC, compute_90 and compute_80), both ABI entry points are in the
//! PTX, and each entry's parameter list has exactly the slots and C types that the launcher
//! marshals for `abi::args` (64-bit pointers, 32-bit ints, f32 values). A second request is
//! served from the disk cache.
//!
//! NVRTC is found by `cuda_libs::probe` (loader path, `KILN_CUDA_LIB_DIRS`, or
//! `~/.cache/kiln/nvrtc/nvidia/cu13/lib` where the project unpacks the `nvidia-cuda-nvrtc`
//! wheel). Without it this test fails with that advice, unless `KILN_SKIP_NVRTC=1`.

use kiln_codegen::abi::{self, AbiArg};
use kiln_codegen::ir::DType;
use kiln_runtime::device::cuda_libs;
use kiln_runtime::device::ptx_cache::{ptx_for, PtxOrigin};
use kiln_runtime::gpu_check::samples;

/// The `.param` types of entry `name` in `ptx`, in order (`u64`, `u32`, `f32`, ...).
fn entry_params(ptx: &str, name: &str) -> Option<Vec<String>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let body = &ptx[start..];
    let end = body.find(')')?;
    Some(
        body[..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".param ."))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
            .collect(),
    )
}

/// The PTX types the launcher's argument for this ABI slot is compatible with.
fn allowed(slot: &AbiArg) -> &'static [&'static str] {
    match slot {
        AbiArg::ParamPtr(_) | AbiArg::OutputPtr(_) => &["u64", "b64"],
        AbiArg::ParamStride(_) | AbiArg::OutputStride(_) | AbiArg::Rows | AbiArg::Width => &["u32", "s32", "b32"],
        AbiArg::ParamValue(_, DType::F32) => &["f32", "b32"],
        AbiArg::ParamValue(_, DType::F16 | DType::BF16) => &["b16", "u16", "f16"],
        AbiArg::ParamValue(_, _) => &["u32", "s32", "b32"],
    }
}

#[test]
fn samples_compile_to_ptx_matching_the_abi() {
    if !cuda_libs::probe().nvrtc {
        if std::env::var("KILN_SKIP_NVRTC").as_deref() == Ok("1") {
            eprintln!("KILN_SKIP_NVRTC=1: skipping");
            return;
        }
        panic!(
            "libnvrtc.so.13 not found: unpack the nvidia-cuda-nvrtc==13.0.88 wheel into \
             ~/.cache/kiln/nvrtc (or name its lib folder in KILN_CUDA_LIB_DIRS); \
             KILN_SKIP_NVRTC=1 skips this test"
        );
    }
    let cache = std::env::temp_dir().join(format!("kiln-nvrtc-ptx-test-{}", std::process::id()));
    // Single test in this binary: no other thread reads the environment.
    std::env::set_var("KILN_CACHE_DIR", &cache);

    for def in samples::all().unwrap() {
        for spec in def.specs {
            let k = &def.compiled(spec.dtype).unwrap().kernel;
            let (vec_name, scalar_name) = abi::entry_names(k);
            let slots = abi::args(k);
            for cc in [(9, 0), (8, 0)] {
                let (ptx, origin) = ptx_for(spec.cuda, &k.spec_name(), cc, false).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(origin, PtxOrigin::Compiled, "{} {cc:?}: first request compiles", k.spec_name());
                assert!(ptx.contains(&format!(".target sm_{}{}", cc.0, cc.1)), "{}: PTX target", k.spec_name());
                for entry in [&vec_name, &scalar_name] {
                    let params = entry_params(&ptx, entry).unwrap_or_else(|| panic!("entry {entry} not in the PTX"));
                    assert_eq!(params.len(), slots.len(), "{entry}: {params:?} vs ABI {slots:?}");
                    for (i, (ty, slot)) in params.iter().zip(&slots).enumerate() {
                        assert!(allowed(slot).contains(&ty.as_str()), "{entry} param {i}: PTX .{ty}, ABI {slot:?}");
                    }
                }
                let (again, origin) = ptx_for(spec.cuda, &k.spec_name(), cc, false).unwrap();
                assert_eq!(origin, PtxOrigin::Disk, "{}: second request from disk", k.spec_name());
                assert_eq!(again, ptx);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}
