//! Every block format's dequantization against the `gguf` Python package, bit for bit
//! (fixtures from tests/fixtures/make_quant_blocks.py: random blocks, odd block counts, a zero
//! and a negative scale).

use kiln_runtime::device::quant::{QuantFormat, QuantMatrix};
use std::path::PathBuf;

fn fixture(name: &str, ext: &str) -> Vec<u8> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quant-blocks").join(format!("{name}.{ext}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn dequantize_is_bit_exact_against_gguf_for_every_format() {
    for format in QuantFormat::ALL {
        let blocks = fixture(format.name(), "blocks");
        let want: Vec<u32> = fixture(format.name(), "f32")
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let n_blocks = blocks.len() / format.block_bytes();
        assert_eq!(n_blocks * format.block_bytes(), blocks.len(), "{format}: whole blocks");
        assert_eq!(want.len(), n_blocks * format.block_len(), "{format}: value count");
        let mut got = vec![0f32; want.len()];
        format.dequantize(&blocks, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), *w, "{format} value {i}: kiln {g} gguf {}", f32::from_bits(*w));
        }
        // The same blocks as a matrix of one block per row (an odd row count): rows agree too.
        let m = QuantMatrix::new(format, n_blocks, format.block_len(), blocks.clone()).unwrap();
        assert_eq!(m.dequantize_all(), got, "{format}: matrix");
    }
}

#[test]
fn quantize_equals_gguf_byte_for_byte() {
    use kiln_runtime::device::quant::quantize::quantize;
    for format in QuantFormat::ALL.into_iter().filter(|f| f.block_len() == 32) {
        let src: Vec<f32> = fixture(format.name(), "source.f32")
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let want = fixture(format.name(), "quantized");
        let mut got = Vec::new();
        quantize(format, &src, &mut got).unwrap();
        assert_eq!(got.len(), want.len(), "{format}: byte count");
        for (i, (g, w)) in got.chunks(format.block_bytes()).zip(want.chunks(format.block_bytes())).enumerate() {
            assert_eq!(g, w, "{format} block {i}");
        }
    }
    let mut out = Vec::new();
    assert!(quantize(QuantFormat::Q8_0, &[1.0; 48], &mut out).is_err(), "48 values are not whole blocks");
    assert!(quantize(QuantFormat::Q3_K, &[1.0; 256], &mut out).is_err(), "no Q3_K quantizer yet");
}
