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
/// split and combine entry of `kiln_codegen::attention::abi` present.
#[test]
fn every_attention_instance_compiles_for_sm80_and_sm90_without_warnings() {
    use kiln_codegen::attention::abi::{combine_entry, split_entry, GROUP_CAPS, HEAD_DIMS};
    if !nvrtc_present() {
        if std::env::var("KILN_SKIP_NVRTC").as_deref() == Ok("1") {
            eprintln!("KILN_SKIP_NVRTC=1: skipped");
            return;
        }
        panic!("libnvrtc.so.13 not found: run scripts/test.sh (it fetches the nvidia-cuda-nvrtc wheel) or set KILN_SKIP_NVRTC=1");
    }
    // Each instance takes NVRTC seconds: compile them on every core.
    let jobs: Vec<(&kiln_codegen::attention::def::AttnDef, &kiln_codegen::attention::def::AttnSpec, &str)> =
        kiln_models::kernels::ATTENTION
            .iter()
            .flat_map(|def| def.specs.iter().flat_map(move |spec| ["sm_80", "sm_90"].map(|arch| (*def, spec, arch))))
            .collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(def, spec, arch)) = jobs.get(i) else { break };
                let file = format!("{}_{}.cu", def.name, spec.dtype);
                let k = &def.compiled(spec.dtype).expect("embedded kernel").kernel;
                let mut bad = vec![];
                match compile_strict(&file, spec.cuda, arch) {
                    Ok(ptx) => {
                        let mut entries: Vec<String> = vec![];
                        for hd in HEAD_DIMS {
                            entries.extend(GROUP_CAPS.iter().map(|&g| split_entry(k, hd, g)));
                            entries.push(combine_entry(k, hd));
                        }
                        for e in entries {
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
