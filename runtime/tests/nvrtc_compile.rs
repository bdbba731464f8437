//! Every reference kernel's CUDA (`kiln_codegen::cuda::samples` in all storage dtypes, emitted
//! directly and through the whole `kiln_codegen::compile` pipeline) compiles with NVRTC for
//! sm_80 and sm_90 with an empty log: no error and no warning. NVRTC needs no GPU, so this runs
//! wherever the library is.
//!
//! NVRTC is loaded by cudarc by name: put `libnvrtc.so.13` and `libnvrtc-builtins.so.13.0`
//! on the library path (see [`HOWTO`]). Without it the tests fail with that advice, unless
//! `KILN_SKIP_NVRTC=1`. `KILN_NVRTC_VERBOSE=1` also prints ptxas's register and spill counts.
//!
//! cudarc's `compile_ptx_with_opts` returns the log only on failure, so warnings would go
//! unseen; the tests compile through `kiln_runtime::device::nvrtc_check`, which reads the log after a
//! successful compile as well.

use cudarc::nvrtc::sys;
use kiln_codegen::abi;
use kiln_codegen::builder::Builder;
use kiln_codegen::compile;
use kiln_codegen::cuda::{self, prelude, samples};
use kiln_codegen::ir::{DType, Kernel, Op, OutputKind, ParamKind, UnaryOp};
use kiln_codegen::schedule::schedule;
use kiln_runtime::device::nvrtc_check::{compile_with_log, NvrtcOutcome};

const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

const HOWTO: &str = "NVRTC (libnvrtc.so.13) was not found. Get it from the PyPI wheel \
nvidia-cuda-nvrtc==13.0.88: `python3 -m pip download --no-deps nvidia-cuda-nvrtc==13.0.88`, unzip \
the wheel into ~/.cache/kiln/nvrtc, then run with \
LD_LIBRARY_PATH=$HOME/.cache/kiln/nvrtc/nvidia/cu13/lib (libnvrtc.so.13 loads \
libnvrtc-builtins.so.13.0 from the same path). Set KILN_SKIP_NVRTC=1 to skip these tests.";

/// Whether NVRTC can be used; panics with [`HOWTO`] when it is missing and skipping was not
/// asked for (cudarc itself would panic without advice).
fn nvrtc_ready() -> bool {
    // SAFETY: only probes whether the library can be opened.
    if unsafe { sys::is_culib_present() } {
        return true;
    }
    if std::env::var("KILN_SKIP_NVRTC").as_deref() == Ok("1") {
        eprintln!("KILN_SKIP_NVRTC=1: skipping NVRTC compile checks");
        return false;
    }
    panic!("{HOWTO}");
}

/// Compile `src` with NVRTC for `arch`, keeping the log whatever the result.
fn nvrtc(file: &str, src: &str, arch: &str, extra: &[&str]) -> NvrtcOutcome {
    compile_with_log(file, src, arch, extra).expect("NVRTC could be used")
}

/// Every sample as emitted directly and as the whole pipeline (`kiln_codegen::compile`) emits
/// it (identical texts once), plus a frontend-level softmax that only the pipeline can lower.
fn kernels() -> Vec<(Kernel, String)> {
    let mut out: Vec<(Kernel, String)> = vec![];
    let mut push = |k: Kernel, src: String| {
        if !out.iter().any(|(_, s)| *s == src) {
            out.push((k, src));
        }
    };
    let mut frontend = samples::all().expect("sample kernels build");
    for d in DType::STORAGE {
        let mut b = Builder::new("softmax_op", "nvrtc_compile", d);
        let x = b.param("x", ParamKind::Row(d)).expect("param");
        let xf = b.widen(x).expect("widen");
        let y = b.softmax(xf).expect("softmax");
        b.output("y", OutputKind::Row(d), y).expect("output");
        frontend.push(b.finish().expect("softmax kernel builds"));
    }
    for k in frontend {
        if !k.nodes.iter().any(|n| matches!(n.op, Op::Softmax(_))) {
            let src = cuda::emit(&k, &schedule(&k)).unwrap_or_else(|e| panic!("{e}"));
            push(k.clone(), src);
        }
        let c = compile(k).unwrap_or_else(|e| panic!("{e}"));
        push(c.kernel, c.cuda);
    }
    out
}

/// The PTX of one entry point (from its `.entry` line to the next one).
fn entry_ptx<'a>(ptx: &'a str, entry: &str) -> &'a str {
    let start = ptx.find(&format!(".entry {entry}(")).unwrap_or_else(|| panic!("no entry {entry} in PTX"));
    let rest = &ptx[start + 1..];
    let end = rest.find(".entry ").map(|e| start + 1 + e).unwrap_or(ptx.len());
    &ptx[start..end]
}

#[test]
fn every_sample_compiles_cleanly_for_sm80_and_sm90() {
    if !nvrtc_ready() {
        return;
    }
    let verbose = std::env::var("KILN_NVRTC_VERBOSE").as_deref() == Ok("1");
    let mut failures = vec![];
    for (k, src) in kernels() {
        for arch in ARCHS {
            let out = nvrtc(&format!("{}.cu", k.spec_name()), &src, arch, &[]);
            if out.ptx.is_none() || !out.log.trim().is_empty() {
                let hint = if out.log.contains("libnvrtc-builtins") { format!("\n{HOWTO}") } else { String::new() };
                failures.push(format!("{} for {arch}:\n{}{hint}", k.spec_name(), out.log));
                continue;
            }
            let ptx = out.ptx.unwrap_or_default();
            let (ve, se) = abi::entry_names(&k);
            for e in [&ve, &se] {
                entry_ptx(&ptx, e);
            }
            if verbose {
                let v = nvrtc(&format!("{}.cu", k.spec_name()), &src, arch, &["--ptxas-options=-v"]);
                for l in
                    v.log.lines().filter(|l| l.contains("Compiling entry") || l.contains("spill") || l.contains("Used"))
                {
                    eprintln!("{arch} {}", l.trim());
                }
            }
        }
    }
    assert!(failures.is_empty(), "NVRTC rejected or warned about generated CUDA:\n\n{}", failures.join("\n\n"));
}

/// The vectorised entry really issues 16-byte accesses (`.v4` of 32-bit words), and the
/// scalar entry none; kernels without sin/cos keep every array in registers (no `.local` in
/// the PTX; precise sinf/cosf use a local buffer for large-argument reduction).
#[test]
fn ptx_has_vector_accesses_and_no_local_arrays() {
    if !nvrtc_ready() {
        return;
    }
    for (k, src) in kernels() {
        let has_row_tensor = k.params.iter().any(|p| matches!(p.kind, ParamKind::Row(_) | ParamKind::Bcast(_)));
        if !has_row_tensor {
            continue;
        }
        let out = nvrtc("k.cu", &src, "sm_90", &[]);
        let ptx = out.ptx.unwrap_or_else(|| panic!("{}: {}", k.spec_name(), out.log));
        let (ve, se) = abi::entry_names(&k);
        let (vp, sp) = (entry_ptx(&ptx, &ve), entry_ptx(&ptx, &se));
        let v4 = |p: &str| p.lines().any(|l| l.contains("ld.global.nc.v4.") || l.contains("st.global.v4."));
        assert!(v4(vp), "{ve}: no 16-byte access in its PTX");
        assert!(!v4(sp), "{se}: the scalar entry must not assume alignment");
        let trig = k.nodes.iter().any(|n| {
            matches!(n.op, Op::Rope { .. } | Op::RopeTable { .. } | Op::Unary(UnaryOp::Sin | UnaryOp::Cos, _))
        });
        if !trig {
            assert!(!ptx.contains(".local"), "{}: an array was not promoted to registers", k.spec_name());
        }
    }
}

/// Prelude sections are guarded, so several kernels can share one module; and the whole
/// prelude compiles on its own.
#[test]
fn sources_join_into_one_module_and_the_prelude_stands_alone() {
    if !nvrtc_ready() {
        return;
    }
    // One source per specialisation name: two texts of one name define the same entry points.
    let mut names = std::collections::BTreeSet::new();
    let joined: String = kernels()
        .into_iter()
        .filter(|(k, _)| k.dtype == DType::BF16 && names.insert(k.spec_name()))
        .map(|(_, s)| s)
        .collect();
    let probe = format!("{}\nextern \"C\" __global__ void kiln_prelude_probe(float* o) {{ o[0] = kiln_to_f32(kiln_f32_to_bf16(1.5f)); }}\n", prelude::full());
    for arch in ARCHS {
        for (what, src) in [("joined bf16 kernels", &joined), ("prelude", &probe)] {
            let out = nvrtc("joined.cu", src, arch, &[]);
            assert!(out.ptx.is_some() && out.log.trim().is_empty(), "{what} for {arch}:\n{}", out.log);
        }
    }
}

/// The runtime's hand-written kernels (utility kernels, the device sampler) compile for sm_80
/// and sm_90 with an empty log and export their entry points. The sampler's f32 arithmetic is
/// bit-specified, so its PTX must hold no contracted f32 FMA (every operation is an `_rn`
/// intrinsic, which ptxas never fuses).
#[test]
fn runtime_kernels_compile_cleanly_for_sm80_and_sm90() {
    if !nvrtc_ready() {
        return;
    }
    let sources = [
        (
            "kiln_device_kernels",
            kiln_runtime::device::device_kernels::source(),
            &["kiln_fill_uniform_bf16", "kiln_argmax_bf16"][..],
        ),
        (
            "kiln_sampler",
            kiln_runtime::sample::device::source(),
            &["kiln_sample_f32", "kiln_sample_f16", "kiln_sample_bf16"][..],
        ),
        (
            "kiln_int4",
            kiln_runtime::device::quant::int4_cuda::source(),
            &[
                "kiln_i4_gemv1_bf16",
                "kiln_i4_gemv8_f16",
                "kiln_i4_gemv4_f32",
                "kiln_i4_dequant_bf16",
                "kiln_i4_mma4_q1_bf16",
                "kiln_i4_mma1_q2_f16",
                "kiln_i4_mma4_q2_bf16",
                "kiln_i4_reduce_bf16",
                "kiln_i4_gather_f16",
                "kiln_i4_tcgemv8_bf16",
                "kiln_i4_tcgemv4_f16",
            ][..],
        ),
        (
            "kiln_expert_combine",
            kiln_runtime::device::expert_combine::source(),
            &["kiln_expert_combine_f32", "kiln_expert_combine_f16", "kiln_expert_combine_bf16"][..],
        ),
        (
            "kiln_kv_fp8",
            kiln_runtime::model::kv_fp8::source(),
            &["kiln_kv_store_fp8_f32", "kiln_kv_store_fp8_f16", "kiln_kv_store_fp8_bf16"][..],
        ),
    ];
    for (name, src, entries) in sources {
        for arch in ARCHS {
            let out = nvrtc(&format!("{name}.cu"), src, arch, &[]);
            assert!(out.ptx.is_some() && out.log.trim().is_empty(), "{name} for {arch}:\n{}", out.log);
            if std::env::var("KILN_NVRTC_VERBOSE").as_deref() == Ok("1") {
                let v = nvrtc(&format!("{name}.cu"), src, arch, &["--ptxas-options=-v"]);
                for l in
                    v.log.lines().filter(|l| l.contains("Compiling entry") || l.contains("spill") || l.contains("Used"))
                {
                    eprintln!("{arch} {}", l.trim());
                }
            }
            let ptx = out.ptx.unwrap_or_default();
            for e in entries {
                let body = entry_ptx(&ptx, e);
                if name == "kiln_sampler" {
                    assert!(!body.contains("fma.rn.f32"), "{e} for {arch} contracts f32 arithmetic into an FMA");
                }
            }
        }
    }
}
