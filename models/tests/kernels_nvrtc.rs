//! Every specialisation of every kernel the models use (`kernels::ALL`, the files in
//! kernels-generated/) compiles with NVRTC for sm_80 and sm_90 with an empty log. NVRTC needs
//! no GPU: scripts/test.sh fetches it from the PyPI wheel nvidia-cuda-nvrtc==13.0.88 and puts
//! it on LD_LIBRARY_PATH. Set KILN_SKIP_NVRTC=1 to skip where it cannot be had.

use kiln_models::kernels::ALL;
use kiln_runtime::device::nvrtc_check::{compile_strict, nvrtc_present};

#[test]
fn every_model_kernel_compiles_for_sm80_and_sm90_without_warnings() {
    if !nvrtc_present() {
        if std::env::var("KILN_SKIP_NVRTC").as_deref() == Ok("1") {
            eprintln!("KILN_SKIP_NVRTC=1: skipped");
            return;
        }
        panic!("libnvrtc.so.13 not found: run scripts/test.sh (it fetches the nvidia-cuda-nvrtc wheel) or set KILN_SKIP_NVRTC=1");
    }
    let mut failures = vec![];
    let mut compiled = 0;
    for def in ALL {
        for spec in def.specs {
            let file = format!("{}_{}.cu", def.name, spec.dtype);
            for arch in ["sm_80", "sm_90"] {
                match compile_strict(&file, spec.cuda, arch) {
                    Ok(ptx) => {
                        compiled += 1;
                        let k = &def.compiled(spec.dtype).expect("embedded IR").kernel;
                        let (vec_entry, scalar_entry) = kiln_codegen::abi::entry_names(k);
                        for entry in [vec_entry, scalar_entry] {
                            if !ptx.contains(&format!(".entry {entry}(")) {
                                failures.push(format!("{file} ({arch}): no entry point {entry} in the PTX"));
                            }
                        }
                    }
                    Err(log) => failures.push(format!("{file} ({arch}): {log}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(compiled, ALL.iter().map(|d| d.specs.len() * 2).sum::<usize>());
}

/// Every attention template instance (kernels::ATTENTION) compiles the same way, with every
/// entry of `kiln_codegen::attention::abi` present: each file as the runtime compiles it for
/// pools of its own dtype (`KILN_ATTN_KV8 0`) on sm_80 and sm_90, and for FP8 pools
/// (`KILN_ATTN_KV8 1`) as bf16 on sm_90 and f16 on sm_80 for the plain and windowed instances —
/// the FP8 forms are one template instantiated for both halves and every modifier, and
/// compiling all of them made the test ~60% longer.
#[test]
fn every_attention_instance_compiles_for_sm80_and_sm90_without_warnings() {
    use kiln_codegen::attention::abi::{entries_for, fp8_kv_supported, HEAD_DIMS, KV8_MACRO};
    if !nvrtc_present() {
        if std::env::var("KILN_SKIP_NVRTC").as_deref() == Ok("1") {
            eprintln!("KILN_SKIP_NVRTC=1: skipped");
            return;
        }
        panic!("libnvrtc.so.13 not found: run scripts/test.sh (it fetches the nvidia-cuda-nvrtc wheel) or set KILN_SKIP_NVRTC=1");
    }
    type Job = (
        &'static kiln_codegen::attention::def::AttnDef,
        &'static kiln_codegen::attention::def::AttnSpec,
        &'static str,
        bool,
    );
    let mut jobs: Vec<Job> = vec![];
    for def in kiln_models::kernels::ATTENTION {
        for spec in def.specs {
            jobs.extend(["sm_80", "sm_90"].map(|arch| (*def, spec, arch, false)));
            let k = &def.compiled(spec.dtype).expect("embedded kernel").kernel;
            let fp8_arch = match spec.dtype {
                kiln_codegen::ir::DType::BF16 => Some("sm_90"),
                kiln_codegen::ir::DType::F16 => Some("sm_80"),
                _ => None,
            };
            // The FP8 forms of the plain and the windowed instance: the score modifier is
            // compiled with every instance's own pools above and does not meet the pool type.
            let fp8_instance = ["attn_causal", "attn_sliding_window"].contains(&def.name);
            if let Some(arch) = fp8_arch.filter(|_| fp8_kv_supported(k) && fp8_instance) {
                jobs.push((*def, spec, arch, true));
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(def, spec, arch, fp8)) = jobs.get(i) else { break };
                let file = format!("{}_{}.cu ({KV8_MACRO} {})", def.name, spec.dtype, u8::from(fp8));
                let k = &def.compiled(spec.dtype).expect("embedded kernel").kernel;
                let mut bad = vec![];
                let src = format!("#define {KV8_MACRO} {}\n{}", u8::from(fp8), spec.cuda);
                match compile_strict(&file, &src, arch) {
                    Ok(ptx) => {
                        for e in HEAD_DIMS.iter().flat_map(|&hd| entries_for(k, hd, fp8)) {
                            if !ptx.contains(&format!(".entry {e}(")) {
                                bad.push(format!("{file} ({arch}): no entry point {e} in the PTX"));
                            }
                        }
                    }
                    Err(log) => bad.push(format!("{file} ({arch}): {log}")),
                }
                failures.lock().unwrap().extend(bad);
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
