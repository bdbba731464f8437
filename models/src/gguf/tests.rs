//! Round trips through `GgufBuilder` and the parser: every metadata value type, alignment,
//! tensor layout; and malformed images rejected with the right error.

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn all_value_kinds() -> Vec<(&'static str, MetadataValue)> {
    use MetadataArray as A;
    use MetadataValue as V;
    vec![
        ("t.u8", V::U8(200)),
        ("t.i8", V::I8(-100)),
        ("t.u16", V::U16(60000)),
        ("t.i16", V::I16(-30000)),
        ("t.u32", V::U32(4_000_000_000)),
        ("t.i32", V::I32(-2_000_000_000)),
        ("t.f32", V::F32(1.5e-5)),
        ("t.bool", V::Bool(true)),
        ("t.string", V::String("héllo ✓".into())),
        ("t.u64", V::U64(u64::MAX - 1)),
        ("t.i64", V::I64(i64::MIN + 1)),
        ("t.f64", V::F64(-1e300)),
        ("a.u8", V::Array(A::U8(vec![1, 2, 255]))),
        ("a.i8", V::Array(A::I8(vec![-1, 2]))),
        ("a.u16", V::Array(A::U16(vec![7, 65535]))),
        ("a.i16", V::Array(A::I16(vec![-7]))),
        ("a.u32", V::Array(A::U32(vec![9, 10, 11]))),
        ("a.i32", V::Array(A::I32(vec![-9, 1, 3]))),
        ("a.f32", V::Array(A::F32(vec![0.5, -0.25]))),
        ("a.bool", V::Array(A::Bool(vec![true, false, true]))),
        ("a.string", V::Array(A::String(vec!["a".into(), String::new(), "<|im_end|>".into()]))),
        ("a.u64", V::Array(A::U64(vec![1 << 40]))),
        ("a.i64", V::Array(A::I64(vec![-(1 << 40)]))),
        ("a.f64", V::Array(A::F64(vec![std::f64::consts::PI]))),
        ("a.empty", V::Array(A::F32(vec![]))),
        ("a.nested", V::Array(A::Array(vec![A::I32(vec![1, 2]), A::I32(vec![]), A::I32(vec![3])]))),
    ]
}

fn random_tensor_bytes(ty: GgmlType, n: u64, rng: &mut StdRng) -> Vec<u8> {
    let (bl, bb) = ty.block_layout();
    (0..n / bl * bb).map(|_| rng.random::<u8>() & 0x3f).collect() // small exponents: finite
}

#[test]
fn every_metadata_type_and_tensor_layout_round_trips() {
    let mut rng = StdRng::seed_from_u64(3);
    for (version, alignment) in [(3u32, None), (2, Some(64u32)), (3, Some(8))] {
        let mut b = GgufBuilder::new();
        b.version(version);
        for (k, v) in all_value_kinds() {
            b.metadata(k, v).unwrap();
        }
        if let Some(a) = alignment {
            b.metadata(ALIGNMENT_KEY, MetadataValue::U32(a)).unwrap();
        }
        let specs: [(&str, &[u64], GgmlType); 5] = [
            ("a", &[64, 3], GgmlType::Q4_1),
            ("b", &[7], GgmlType::F32),
            ("c", &[32, 2, 2], GgmlType::Q8_0),
            ("d", &[5, 3], GgmlType::F16),
            ("e", &[32], GgmlType::Q4_0),
        ];
        let mut blobs = Vec::new();
        for (name, dims, ty) in specs {
            let bytes = random_tensor_bytes(ty, dims.iter().product(), &mut rng);
            b.tensor(name, dims, ty, bytes.clone()).unwrap();
            blobs.push(bytes);
        }
        let image = b.to_bytes();
        // The streamed file is the image, and its count the file's length.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("streamed.gguf");
        assert_eq!(b.write_to(&path).unwrap(), image.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), image);
        let f = GgufFile::from_bytes("mem.gguf", image).unwrap();
        assert_eq!(f.version(), version);
        let align = alignment.map_or(32, u64::from);
        assert_eq!(f.alignment(), align);
        assert_eq!(f.data_offset() % align, 0);
        for (k, v) in all_value_kinds() {
            assert_eq!(f.get(k), Some(&v), "{k}");
        }
        assert_eq!(f.tensors().len(), 5);
        for ((name, dims, ty), blob) in specs.iter().zip(&blobs) {
            let info = f.tensor_info(name).unwrap();
            assert_eq!((&info.dims[..], info.ggml_type), (*dims, *ty));
            assert_eq!(info.offset % align, 0);
            assert_eq!(f.tensor_bytes(info).unwrap(), &blob[..]);
            let rev: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
            assert_eq!(info.hf_shape(), rev);
        }
    }
}

#[test]
fn file_dequantize_reads_the_right_bytes() {
    let vals: Vec<f32> = (0..12).map(|i| i as f32 * 0.75 - 3.0).collect();
    let mut b = GgufBuilder::new();
    b.tensor("x32", &[4, 3], GgmlType::F32, vals.iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
    b.tensor("x16", &[4, 3], GgmlType::F16, vals.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect())
        .unwrap();
    b.tensor("xbf", &[12], GgmlType::Bf16, vals.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect())
        .unwrap();
    // A type kiln reads the header of but cannot dequantize.
    b.tensor("iq4", &[256], GgmlType::Iq4Xs, vec![1u8; 136]).unwrap();
    let f = GgufFile::from_bytes("mem.gguf", b.to_bytes()).unwrap();
    for name in ["x32", "x16", "xbf"] {
        assert_eq!(f.dequantize(name).unwrap(), vals, "{name}");
    }
    assert!(
        matches!(f.dequantize("iq4"), Err(GgufError::UnsupportedType { tensor, ty: GgmlType::Iq4Xs, .. }) if tensor == "iq4")
    );
    assert!(matches!(f.dequantize("nope"), Err(GgufError::MissingTensor { tensor, .. }) if tensor == "nope"));
}

#[test]
fn builder_rejects_inconsistent_tensors() {
    let mut b = GgufBuilder::new();
    assert!(matches!(b.tensor("t", &[33], GgmlType::Q8_0, vec![0; 34]), Err(GgufWriteError::PartialBlock { .. })));
    assert!(matches!(b.tensor("t", &[32], GgmlType::Q8_0, vec![0; 33]), Err(GgufWriteError::SizeMismatch { .. })));
    b.tensor("t", &[32], GgmlType::Q8_0, vec![0; 34]).unwrap();
    assert!(matches!(b.tensor("t", &[32], GgmlType::Q8_0, vec![0; 34]), Err(GgufWriteError::Duplicate(_))));
    assert!(matches!(b.metadata(ALIGNMENT_KEY, MetadataValue::U32(24)), Err(GgufWriteError::BadAlignment)));
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes("bad.gguf", bytes)
}

#[test]
fn malformed_headers_are_errors() {
    let mut b = GgufBuilder::new();
    b.metadata("k", MetadataValue::Array(MetadataArray::String(vec!["x".into(); 3]))).unwrap();
    b.tensor("w", &[32, 2], GgmlType::Q8_0, vec![3; 68]).unwrap();
    let good = b.to_bytes();
    parse(good.clone()).unwrap();

    // Every truncation of the header is a Truncated error (or out-of-bounds data), never a panic.
    let header_end = parse(good.clone()).unwrap().data_offset() as usize;
    for cut in 0..good.len() {
        let e = parse(good[..cut].to_vec()).unwrap_err();
        if cut < header_end - 32 {
            assert!(matches!(e, GgufError::Truncated { .. }), "cut {cut}: {e}");
        } else {
            assert!(matches!(e, GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. }), "cut {cut}: {e}");
        }
        assert!(e.to_string().starts_with("bad.gguf: "), "{e}");
    }

    let mut v = good.clone();
    v[4] = 1;
    assert!(matches!(parse(v).unwrap_err(), GgufError::UnsupportedVersion { version: 1, .. }));
    let mut v = good.clone();
    v[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = parse(v).unwrap_err();
    assert!(e.to_string().contains("big-endian"), "{e}");

    // A metadata array claiming 2^60 strings must fail fast without allocating.
    let mut v = good.clone();
    let count_at = 24 + 8 + 1 + 4 + 4; // header, key "k", value type, array elem type
    v[count_at..count_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(parse(v).unwrap_err(), GgufError::Truncated { .. }));

    // Unknown metadata value type.
    let mut v = good.clone();
    v[24 + 8 + 1..24 + 8 + 1 + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(matches!(parse(v).unwrap_err(), GgufError::UnknownValueType { key, type_id: 77, .. } if key == "k"));

    // Huge tensor count.
    let mut v = good;
    v[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(v).unwrap_err(), GgufError::Truncated { .. }));
}
