//! Damaged GGUF files on disk: each must be rejected by `GgufFile::open` with an error that
//! names the file (and the tensor, where one is at fault) — never a panic.

use std::path::{Path, PathBuf};

use kiln_models::fetch::default_model_path;
use kiln_models::gguf::{GgmlType, GgufBuilder, GgufError, GgufFile, MetadataValue};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-gguf-corrupt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small valid file: two tensors with non-zero data.
fn good_image() -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.metadata("general.architecture", MetadataValue::String("llama".into())).unwrap();
    b.metadata("general.name", MetadataValue::String("corrupt-test".into())).unwrap();
    let f32s: Vec<u8> = (0..64).flat_map(|i| (i as f32 * 0.125 - 2.0).to_le_bytes()).collect();
    b.tensor("first.weight", &[16, 4], GgmlType::F32, f32s).unwrap();
    let q8: Vec<u8> = (0..68u32).map(|i| (i * 37 % 251) as u8).collect();
    b.tensor("second.weight", &[32, 2], GgmlType::Q8_0, q8).unwrap();
    b.to_bytes()
}

/// Byte offset of the `type` field of tensor `name`'s info record in `image`.
fn type_field(image: &[u8], name: &str, n_dims: usize) -> usize {
    let pos = image.windows(name.len()).position(|w| w == name.as_bytes()).unwrap();
    pos + name.len() + 4 + 8 * n_dims
}

fn open_bytes(dir: &Path, file: &str, bytes: &[u8]) -> (PathBuf, Result<GgufFile, GgufError>) {
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    let r = GgufFile::open(&path);
    (path, r)
}

fn assert_names(e: &GgufError, path: &Path, tensor: Option<&str>) {
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "message lacks the path: {msg}");
    if let Some(t) = tensor {
        assert!(msg.contains(&format!("'{t}'")), "message lacks the tensor: {msg}");
    }
}

#[test]
fn the_good_image_opens_and_reads() {
    let dir = tmpdir("good");
    let (_, r) = open_bytes(&dir, "good.gguf", &good_image());
    let f = r.unwrap();
    assert_eq!(f.dequantize("first.weight").unwrap()[..3], [-2.0, -1.875, -1.75]);
    assert!(f.dequantize("second.weight").unwrap().iter().any(|&v| v != 0.0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_magic() {
    let dir = tmpdir("magic");
    let mut img = good_image();
    img[..4].copy_from_slice(b"GGML");
    let (path, r) = open_bytes(&dir, "magic.gguf", &img);
    let e = r.unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { found, .. } if &found == b"GGML"), "{e}");
    assert_names(&e, &path, None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_files() {
    let dir = tmpdir("trunc");
    let img = good_image();
    let header_len = GgufFile::from_bytes("x", img.clone()).unwrap().data_offset() as usize;
    for cut in [0, 3, 4, 7, 15, 23, 40, header_len / 2, header_len - 33] {
        let (path, r) = open_bytes(&dir, "trunc.gguf", &img[..cut]);
        let e = r.unwrap_err();
        assert!(matches!(e, GgufError::Truncated { .. }), "cut at {cut}: {e}");
        assert_names(&e, &path, None);
    }
    // Header complete, data cut short: the tensor whose bytes are missing is named.
    let (path, r) = open_bytes(&dir, "short-data.gguf", &img[..img.len() - 1]);
    let e = r.unwrap_err();
    assert!(matches!(&e, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "second.weight"), "{e}");
    assert_names(&e, &path, Some("second.weight"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tensor_offset_out_of_range() {
    let dir = tmpdir("offset");
    for bad_offset in [1u64 << 20, u64::MAX - 31] {
        let mut img = good_image();
        let at = type_field(&img, "first.weight", 2) + 4;
        img[at..at + 8].copy_from_slice(&bad_offset.to_le_bytes());
        let (path, r) = open_bytes(&dir, "offset.gguf", &img);
        let e = r.unwrap_err();
        assert!(matches!(&e, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "first.weight"), "{e}");
        assert_names(&e, &path, Some("first.weight"));
    }
    // A misaligned offset is rejected too.
    let mut img = good_image();
    let at = type_field(&img, "second.weight", 2) + 4;
    img[at] = img[at].wrapping_add(1);
    let (path, r) = open_bytes(&dir, "misaligned.gguf", &img);
    let e = r.unwrap_err();
    assert!(matches!(&e, GgufError::BadTensorInfo { tensor, .. } if tensor == "second.weight"), "{e}");
    assert_names(&e, &path, Some("second.weight"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_tensor_type() {
    let dir = tmpdir("type");
    for bad in [4u32, 31, 99, u32::MAX] {
        let mut img = good_image();
        let at = type_field(&img, "second.weight", 2);
        img[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        let (path, r) = open_bytes(&dir, "type.gguf", &img);
        let e = r.unwrap_err();
        assert!(
            matches!(&e, GgufError::UnknownTensorType { tensor, type_id, .. } if tensor == "second.weight" && *type_id == bad),
            "{e}"
        );
        assert_names(&e, &path, Some("second.weight"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn absurd_dims_are_rejected() {
    let dir = tmpdir("dims");
    let mut img = good_image();
    let pos = img.windows(12).position(|w| w == b"first.weight").unwrap() + 12;
    img[pos..pos + 4].copy_from_slice(&9u32.to_le_bytes()); // n_dims = 9
    let (path, r) = open_bytes(&dir, "dims.gguf", &img);
    let e = r.unwrap_err();
    assert_names(&e, &path, Some("first.weight"));
    let mut img = good_image();
    img[pos + 4..pos + 12].copy_from_slice(&(1u64 << 62).to_le_bytes()); // dim 0 huge
    let (path, r) = open_bytes(&dir, "dims2.gguf", &img);
    let e = r.unwrap_err();
    assert_names(&e, &path, Some("first.weight"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_file_and_directory_are_io_errors() {
    let dir = tmpdir("io");
    let e = GgufFile::open(dir.join("absent.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
    assert_names(&e, &dir.join("absent.gguf"), None);
    assert!(GgufFile::open(&dir).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_copies_of_the_real_model() {
    let real = std::fs::read(default_model_path().unwrap()).unwrap();
    let header_len = GgufFile::from_bytes("real", real.clone()).unwrap().data_offset() as usize;
    let dir = tmpdir("real");
    // Inside the tokenizer metadata: a truncated header.
    let (path, r) = open_bytes(&dir, "real-header.gguf", &real[..header_len / 3]);
    let e = r.unwrap_err();
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    assert_names(&e, &path, None);
    // Halfway through the data: the first tensor not entirely present is named.
    let (path, r) = open_bytes(&dir, "real-data.gguf", &real[..real.len() / 2]);
    let e = r.unwrap_err();
    match &e {
        GgufError::TensorOutOfBounds { tensor, end, .. } => {
            assert!(*end > (real.len() / 2) as u64);
            assert_names(&e, &path, Some(tensor));
        }
        other => panic!("expected TensorOutOfBounds, got {other}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
