//! `kernels-generated/`: one `{name}_{dtype}.cu` per specialisation in [`super::ALL`] and
//! [`super::ATTENTION`], the
//! place a reader goes to see what runs on the GPU. Written by `cargo run -p kiln-models --bin
//! write-kernels`; [`check`] (run by a test) reports what is missing, stale or changed.
//!
//! Invariants: the directory holds exactly the expected `.cu` files, each byte-equal to the
//! CUDA source embedded in its kernel (`FusedSpec::cuda`); that source equals what codegen
//! emits for the embedded IR today (else the build that embedded it is stale).

use super::{ALL, ATTENTION};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The directory in the source tree (independent of the working directory).
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("kernels-generated")
}

/// File name → contents, for every specialisation of every kernel.
pub fn expected() -> Result<BTreeMap<String, &'static str>, String> {
    let mut files = BTreeMap::new();
    for def in ALL {
        for spec in def.specs {
            let emitted = &def.compiled(spec.dtype).map_err(|e| e.to_string())?.cuda;
            add(&mut files, def.name, spec.dtype, spec.cuda, emitted)?;
        }
    }
    for def in ATTENTION {
        for spec in def.specs {
            let emitted = &def.compiled(spec.dtype).map_err(|e| e.to_string())?.cuda;
            add(&mut files, def.name, spec.dtype, spec.cuda, emitted)?;
        }
    }
    Ok(files)
}

/// One specialisation's file, after checking that its embedded source is what codegen emits
/// for its embedded kernel today.
fn add(
    files: &mut BTreeMap<String, &'static str>,
    name: &str,
    dtype: kiln_codegen::ir::DType,
    embedded: &'static str,
    emitted: &str,
) -> Result<(), String> {
    if emitted != embedded {
        return Err(format!(
            "{name} ({dtype}): the embedded CUDA differs from what codegen emits for its kernel; rebuild (cargo clean -p kiln-models)"
        ));
    }
    let file = format!("{name}_{dtype}.cu");
    if files.insert(file.clone(), embedded).is_some() {
        return Err(format!("two specialisations write {file}"));
    }
    Ok(())
}

/// What differs between `dir` and the expected files.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    pub missing: Vec<String>,
    pub changed: Vec<String>,
    /// `.cu` files no kernel writes any more.
    pub stale: Vec<String>,
}

impl Diff {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.changed.is_empty() && self.stale.is_empty()
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, list) in [("missing", &self.missing), ("changed", &self.changed), ("stale", &self.stale)] {
            for file in list {
                writeln!(f, "  {what}: {file}")?;
            }
        }
        Ok(())
    }
}

fn present(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = vec![];
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".cu") {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

pub fn check(dir: &Path) -> Result<Diff, String> {
    let want = expected()?;
    let have = present(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut d = Diff::default();
    for (name, text) in &want {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(t) if t == *text => {}
            Ok(_) => d.changed.push(name.clone()),
            Err(_) => d.missing.push(name.clone()),
        }
    }
    d.stale = have.into_iter().filter(|n| !want.contains_key(n)).collect();
    Ok(d)
}

/// Bring `dir` up to date; returns what was wrong before.
pub fn write(dir: &Path) -> Result<Diff, String> {
    let d = check(dir)?;
    let want = expected()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for name in d.missing.iter().chain(&d.changed) {
        std::fs::write(dir.join(name), want[name]).map_err(|e| format!("{name}: {e}"))?;
    }
    for name in &d.stale {
        std::fs::remove_file(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(d)
}
