//! The device layer (`runtime/src/device/`) never imports from the serving core above it, so
//! it can be read, tested and reused (quantized kernels, a communicator) on its own.

use std::path::Path;

const SERVING_CORE: [&str; 7] = ["engine", "sched", "sample", "kv", "attention", "model", "gpu_check"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_device_layer_imports_nothing_from_the_serving_core() {
    let mut files = vec![];
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/device"), &mut files);
    assert!(files.len() > 10, "found the device layer's files");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for m in SERVING_CORE {
            let needle = format!("crate::{m}::");
            assert!(!text.contains(&needle), "{} uses {needle}: the device layer must not depend on it", f.display());
        }
    }
}
