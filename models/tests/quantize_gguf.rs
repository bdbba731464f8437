//! `quantize_gguf` on a small synthetic GGUF: which tensors change and to what, that the
//! values are the quantizer's, and that the input is never overwritten and no temporary file
//! is left behind; and every recipe's choice of types against llama.cpp's on synthetic models
//! (tests/fixtures/quant-recipes.json, made by tests/fixtures/make_quant_recipes.py).

use kiln_models::gguf::{GgmlType, GgufBuilder, GgufFile, MetadataValue};
use kiln_models::quantize_gguf::{quantize_gguf, QuantizeError, Recipe};
use kiln_runtime::device::quant::quantize::quantize;
use kiln_runtime::device::quant::QuantFormat;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0) - 0.5).collect()
}

fn write_input(dir: &std::path::Path) -> std::path::PathBuf {
    let mut b = GgufBuilder::new();
    b.metadata("general.architecture", MetadataValue::String("llama".into())).unwrap();
    b.metadata("general.file_type", MetadataValue::U32(0)).unwrap();
    b.tensor("token_embd.weight", &[64, 10], GgmlType::F32, f32_bytes(&values(640, 1))).unwrap();
    b.tensor("blk.0.attn_q.weight", &[64, 8], GgmlType::F32, f32_bytes(&values(512, 2))).unwrap();
    b.tensor("blk.0.attn_norm.weight", &[64], GgmlType::F32, f32_bytes(&values(64, 3))).unwrap();
    // Rows of 48 values are not whole blocks: copied as they are.
    b.tensor("blk.0.odd.weight", &[48, 2], GgmlType::F32, f32_bytes(&values(96, 4))).unwrap();
    let p = dir.join("in.gguf");
    b.write_to(&p).unwrap();
    p
}

#[test]
fn weight_matrices_take_the_type_and_the_rest_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let output = dir.path().join("out.gguf");
    let s = quantize_gguf(&input, &output, Recipe::Uniform(QuantFormat::Q4_0), false).unwrap();
    assert_eq!(s.tensors.len(), 2);
    let f = GgufFile::open(&output).unwrap();
    let ty = |n: &str| f.tensor_info(n).unwrap().ggml_type;
    // Tied embedding = the output projection: Q6_K, which 64-value rows cannot hold, so Q8_0
    // (llama.cpp's fallback).
    assert_eq!(ty("token_embd.weight"), GgmlType::Q8_0);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q4_0);
    assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
    assert_eq!(ty("blk.0.odd.weight"), GgmlType::F32);
    assert_eq!(f.get("general.file_type").and_then(|v| v.as_u64()), Some(2));
    let mut want = Vec::new();
    quantize(QuantFormat::Q4_0, &values(512, 2), &mut want).unwrap();
    assert_eq!(f.tensor_bytes(f.tensor_info("blk.0.attn_q.weight").unwrap()).unwrap(), &want[..]);
    let norm = f.tensor_bytes(f.tensor_info("blk.0.attn_norm.weight").unwrap()).unwrap();
    assert_eq!(norm, &f32_bytes(&values(64, 3))[..]);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}

#[test]
fn the_input_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let before = std::fs::read(&input).unwrap();
    let err = quantize_gguf(&input, &input, Recipe::Uniform(QuantFormat::Q8_0), true).unwrap_err();
    assert!(matches!(err, QuantizeError::SameFile(_)), "{err}");
    let output = dir.path().join("out.gguf");
    std::fs::write(&output, b"keep").unwrap();
    let err = quantize_gguf(&input, &output, Recipe::Uniform(QuantFormat::Q8_0), false).unwrap_err();
    assert!(matches!(err, QuantizeError::Exists(_)), "{err}");
    assert_eq!(std::fs::read(&output).unwrap(), b"keep");
    assert_eq!(std::fs::read(&input).unwrap(), before);
    let missing = dir.path().join("missing.gguf");
    let err = quantize_gguf(&missing, &output, Recipe::Uniform(QuantFormat::Q3_K), true).unwrap_err();
    assert!(matches!(err, QuantizeError::Gguf(_)), "{err}");
    assert_eq!(std::fs::read(&output).unwrap(), b"keep", "a failed run leaves the old output");
}

/// The `kiln quantize` recipe of each file type in the fixture.
const RECIPES: [(&str, Recipe); 12] = [
    ("q4_0", Recipe::Uniform(QuantFormat::Q4_0)),
    ("q4_1", Recipe::Uniform(QuantFormat::Q4_1)),
    ("q5_0", Recipe::Uniform(QuantFormat::Q5_0)),
    ("q5_1", Recipe::Uniform(QuantFormat::Q5_1)),
    ("q8_0", Recipe::Uniform(QuantFormat::Q8_0)),
    ("q2_k", Recipe::Q2K),
    ("q3_k_s", Recipe::Uniform(QuantFormat::Q3_K)),
    ("q3_k_m", Recipe::Q3KM),
    ("q4_k_m", Recipe::Q4KM),
    ("q5_k_s", Recipe::Uniform(QuantFormat::Q5_K)),
    ("q5_k_m", Recipe::Q5KM),
    ("q6_k", Recipe::Uniform(QuantFormat::Q6_K)),
];

#[test]
fn recipes_choose_llama_cpps_types() {
    use serde_json::Value;
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quant-recipes.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let models = fixture["models"].as_object().unwrap();
    assert_eq!(models.len(), 9);
    for (model, m) in models {
        // The model as the script wrote it: metadata, then the global tensors and each layer's.
        let mut b = GgufBuilder::new();
        b.metadata("general.architecture", MetadataValue::String(m["architecture"].as_str().unwrap().into())).unwrap();
        for (k, v) in m["metadata_u32"].as_object().unwrap() {
            b.metadata(k, MetadataValue::U32(v.as_u64().unwrap() as u32)).unwrap();
        }
        for (k, v) in m["metadata_f32"].as_object().unwrap() {
            b.metadata(k, MetadataValue::F32(v.as_f64().unwrap() as f32)).unwrap();
        }
        let shape = |t: &Value| -> (String, Vec<u64>) {
            (t[0].as_str().unwrap().to_owned(), t[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect())
        };
        let mut tensors: Vec<(String, Vec<u64>)> = m["tensors"].as_array().unwrap().iter().map(shape).collect();
        for layer in 0..m["layers"].as_u64().unwrap() {
            for t in m["layer_tensors"].as_array().unwrap() {
                let (name, dims) = shape(t);
                tensors.push((format!("blk.{layer}.{name}"), dims));
            }
        }
        for (i, (name, dims)) in tensors.iter().enumerate() {
            let n = dims.iter().product::<u64>() as usize;
            b.tensor(name, dims, GgmlType::F32, f32_bytes(&values(n, i as u32))).unwrap();
        }
        let input = dir.path().join(format!("{model}.gguf"));
        b.write_to(&input).unwrap();
        let types = m["types"].as_object().unwrap();
        assert_eq!(types.len(), RECIPES.len(), "{model}: file types");
        for (file_type, recipe) in RECIPES {
            let output = dir.path().join(format!("{model}.{file_type}.gguf"));
            quantize_gguf(&input, &output, recipe, false).unwrap();
            let f = GgufFile::open(&output).unwrap();
            let want: Vec<&str> = types[file_type].as_str().unwrap().split(' ').collect();
            assert_eq!(want.len(), tensors.len(), "{model} {file_type}: tensor count");
            for ((name, _), want) in tensors.iter().zip(want) {
                let got = f.tensor_info(name).unwrap().ggml_type.name();
                assert!(got.eq_ignore_ascii_case(want), "{model} {file_type}: {name} is {got}, llama.cpp's {want}");
            }
            std::fs::remove_file(&output).unwrap();
        }
    }
}
