//! Test-only helpers for the tokenizer tests on the real SmolLM2 GGUF: a minimal GGUF
//! metadata reader (header + key/value section only; tensors are never read), the
//! `GgufTokenizerSpec` it yields, and the HF transformers reference fixture.
//!
//! This reader exists only until the crate's own GGUF reader is wired in; it checks bounds on
//! every length so a corrupt file fails with a message instead of allocating wildly.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use kiln_models::tokenizer::{GgufTokenizerSpec, Tokenizer};

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    UInt(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

/// The model file: `$KILN_MODEL`, else the default cache location (the rule of
/// `kiln_runtime::cache_dir`, as `kiln fetch` uses).
pub fn gguf_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_MODEL") {
        return PathBuf::from(p);
    }
    let root = kiln_runtime::cache_dir::cache_root().expect("no cache folder: set KILN_CACHE_DIR");
    root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Reads all metadata key/value pairs of a GGUF file.
pub fn read_metadata(path: &std::path::Path) -> Result<HashMap<String, Meta>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = BufReader::new(file);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).map_err(|e| e.to_string())?;
    if &magic != b"GGUF" {
        return Err(format!("{} is not a GGUF file (magic {magic:?})", path.display()));
    }
    let version = read_u32(&mut r)?;
    if !(2..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version}"));
    }
    let _tensor_count = read_u64(&mut r)?;
    let kv_count = read_u64(&mut r)?;
    let mut out = HashMap::new();
    for _ in 0..kv_count {
        let key = read_string(&mut r)?;
        let ty = read_u32(&mut r)?;
        out.insert(key, read_value(&mut r, ty)?);
    }
    Ok(out)
}

const MAX_LEN: u64 = 1 << 26;

fn read_value(r: &mut impl Read, ty: u32) -> Result<Meta, String> {
    Ok(match ty {
        0 => Meta::UInt(read_n::<1>(r)?[0] as u64),
        1 => Meta::Int(read_n::<1>(r)?[0] as i8 as i64),
        2 => Meta::UInt(u16::from_le_bytes(read_n(r)?) as u64),
        3 => Meta::Int(i16::from_le_bytes(read_n(r)?) as i64),
        4 => Meta::UInt(read_u32(r)? as u64),
        5 => Meta::Int(i32::from_le_bytes(read_n(r)?) as i64),
        6 => Meta::Float(f32::from_le_bytes(read_n(r)?) as f64),
        7 => Meta::Bool(read_n::<1>(r)?[0] != 0),
        8 => Meta::Str(read_string(r)?),
        9 => {
            let elem = read_u32(r)?;
            let n = read_u64(r)?;
            if n > MAX_LEN {
                return Err(format!("array of {n} elements"));
            }
            Meta::Array((0..n).map(|_| read_value(r, elem)).collect::<Result<_, _>>()?)
        }
        10 => Meta::UInt(read_u64(r)?),
        11 => Meta::Int(i64::from_le_bytes(read_n(r)?)),
        12 => Meta::Float(f64::from_le_bytes(read_n(r)?)),
        other => return Err(format!("unknown GGUF value type {other}")),
    })
}

fn read_n<const N: usize>(r: &mut impl Read) -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).map_err(|e| format!("truncated GGUF metadata: {e}"))?;
    Ok(b)
}

fn read_u32(r: &mut impl Read) -> Result<u32, String> {
    Ok(u32::from_le_bytes(read_n(r)?))
}

fn read_u64(r: &mut impl Read) -> Result<u64, String> {
    Ok(u64::from_le_bytes(read_n(r)?))
}

fn read_string(r: &mut impl Read) -> Result<String, String> {
    let n = read_u64(r)?;
    if n > MAX_LEN {
        return Err(format!("string of {n} bytes"));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b).map_err(|e| format!("truncated GGUF string: {e}"))?;
    String::from_utf8(b).map_err(|e| format!("GGUF string is not UTF-8: {e}"))
}

fn str_of(m: &HashMap<String, Meta>, key: &str) -> Option<String> {
    match m.get(key) {
        Some(Meta::Str(s)) => Some(s.clone()),
        _ => None,
    }
}

fn id_of(m: &HashMap<String, Meta>, key: &str) -> Option<u32> {
    match m.get(key) {
        Some(Meta::UInt(v)) => u32::try_from(*v).ok(),
        Some(Meta::Int(v)) => u32::try_from(*v).ok(),
        _ => None,
    }
}

fn strings_of(m: &HashMap<String, Meta>, key: &str) -> Vec<String> {
    match m.get(key) {
        Some(Meta::Array(a)) => a
            .iter()
            .map(|v| match v {
                Meta::Str(s) => s.clone(),
                other => panic!("{key}: expected strings, found {other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The tokenizer spec from GGUF metadata.
pub fn spec_from_metadata(m: &HashMap<String, Meta>) -> GgufTokenizerSpec {
    let token_types = match m.get("tokenizer.ggml.token_type") {
        Some(Meta::Array(a)) => a
            .iter()
            .map(|v| match v {
                Meta::Int(i) => *i as i32,
                Meta::UInt(u) => *u as i32,
                other => panic!("token_type: expected ints, found {other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    };
    GgufTokenizerSpec {
        model: str_of(m, "tokenizer.ggml.model").unwrap_or_default(),
        pre: str_of(m, "tokenizer.ggml.pre"),
        tokens: strings_of(m, "tokenizer.ggml.tokens"),
        token_types,
        merges: strings_of(m, "tokenizer.ggml.merges"),
        bos_id: id_of(m, "tokenizer.ggml.bos_token_id"),
        eos_id: id_of(m, "tokenizer.ggml.eos_token_id"),
        unk_id: id_of(m, "tokenizer.ggml.unknown_token_id"),
        pad_id: id_of(m, "tokenizer.ggml.padding_token_id"),
        add_bos: match m.get("tokenizer.ggml.add_bos_token") {
            Some(Meta::Bool(b)) => Some(*b),
            _ => None,
        },
        chat_template: str_of(m, "tokenizer.chat_template"),
        ..GgufTokenizerSpec::default()
    }
}

/// The SmolLM2 GGUF's tokenizer spec; fails the test with instructions if the file is absent.
pub fn smollm2_spec() -> GgufTokenizerSpec {
    let path = gguf_path();
    assert!(path.is_file(), "model file {} not found: run `kiln fetch` (or set KILN_MODEL)", path.display());
    let meta = read_metadata(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    spec_from_metadata(&meta)
}

pub fn smollm2() -> Tokenizer {
    Tokenizer::from_gguf_spec(&smollm2_spec()).expect("SmolLM2 tokenizer builds from its GGUF")
}

/// `tests/fixtures/reference.json` (HF transformers outputs on the same GGUF).
pub fn reference() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nthe HF reference fixture is missing: generate it with \
             tests/fixtures/make_reference.py",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an id array, found {v}"))
        .iter()
        .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()).expect("id fits u32"))
        .collect()
}

/// `(text, HF ids, HF decoded text)` of the fixture's tokenizer section.
pub fn reference_texts(reference: &serde_json::Value) -> Vec<(String, Vec<u32>, String)> {
    let cases = reference["tokenizer"].as_array().expect("reference.json has a `tokenizer` list");
    assert!(!cases.is_empty(), "reference.json `tokenizer` list is empty");
    cases
        .iter()
        .map(|c| {
            let text = c["text"].as_str().expect("text").to_string();
            let decoded = c["decoded"].as_str().unwrap_or(&text).to_string();
            (text, ids_of(&c["ids"]), decoded)
        })
        .collect()
}
