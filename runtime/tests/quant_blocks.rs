//! Every block format's dequantization against the `gguf` Python package, bit for bit
//! (fixtures from tests/fixtures/make_quant_blocks.py: random blocks, odd block counts, a zero
//! and a negative scale); the quantizers against the `gguf` package (32-value formats) and
//! llama.cpp itself (k-quants, tests/fixtures/make_k_quant_blocks.py), byte for byte; and the
//! k-quants' round trip within each format's error.

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
    assert!(quantize(QuantFormat::Q3_K, &[1.0; 320], &mut out).is_err(), "320 values are not whole super-blocks");
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

const K_QUANTS: [QuantFormat; 5] =
    [QuantFormat::Q2_K, QuantFormat::Q3_K, QuantFormat::Q4_K, QuantFormat::Q5_K, QuantFormat::Q6_K];

#[test]
fn k_quants_equal_llama_cpp_byte_for_byte() {
    use kiln_runtime::device::quant::quantize::quantize;
    // Ten super-blocks of edge cases (see the script): zeros, constants, all positive / all
    // negative, outliers, slices of very different scales, values near ggml's GROUP_MAX_EPS.
    let src = f32s(&fixture("k_quants", "source.f32"));
    for format in K_QUANTS {
        let want = fixture(format.name(), "quantized");
        let mut got = Vec::new();
        quantize(format, &src, &mut got).unwrap();
        assert_eq!(got.len(), want.len(), "{format}: byte count");
        for (i, (g, w)) in got.chunks(format.block_bytes()).zip(want.chunks(format.block_bytes())).enumerate() {
            let first = g.iter().zip(w).position(|(a, b)| a != b);
            assert_eq!(g, w, "{format} super-block {i}: first difference at byte {first:?}");
        }
    }
}

/// `n` values, normal-ish (the sum of four uniforms, centred) times `scale`.
fn noise(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
    use rand::Rng;
    (0..n).map(|_| scale * ((0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0) * 1.7).collect()
}

/// The k-quant's bound on `rms(dequantize(quantize(x)) − x) / rms(x)` for normal-ish rows:
/// measured (0.29, 0.145, 0.069, 0.034, 0.017 with this generator and seed: each bit halves
/// it) plus a quarter.
fn rms_bound(format: QuantFormat) -> f32 {
    match format {
        QuantFormat::Q2_K => 0.36,
        QuantFormat::Q3_K => 0.18,
        QuantFormat::Q4_K => 0.087,
        QuantFormat::Q5_K => 0.043,
        _ => 0.022,
    }
}

#[test]
fn k_quants_round_trip_within_the_format_error() {
    use kiln_runtime::device::quant::quantize::quantize;
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261206);
    let rms = |v: &[f32]| (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt() as f32;
    for format in K_QUANTS {
        // Random rows, an odd row count of two super-blocks each, quantized as a matrix.
        let (rows, cols) = (7, 512);
        let x = noise(&mut rng, rows * cols, 0.05);
        let mut bytes = Vec::new();
        quantize(format, &x, &mut bytes).unwrap();
        let got = QuantMatrix::new(format, rows, cols, bytes).unwrap().dequantize_all();
        let err: Vec<f32> = got.iter().zip(&x).map(|(g, w)| g - w).collect();
        let rel = rms(&err) / rms(&x);
        eprintln!("{format}: rms error {rel:.4} of the rms value");
        assert!(rel < rms_bound(format), "{format}: rms error {rel} of the rms value");
        for (r, (g, w)) in got.chunks(cols).zip(x.chunks(cols)).enumerate() {
            let e: Vec<f32> = g.iter().zip(w).map(|(a, b)| a - b).collect();
            assert!(rms(&e) / rms(w) < 1.5 * rms_bound(format), "{format} row {r}");
        }

        // All zeros stay exactly zero; a constant comes back within the f16 rounding of its
        // scale (the formats with a min hold it as the min, the others as the top level). Far
        // smaller constants lose more: the super-block scale `d` becomes an f16 subnormal.
        let mut out = vec![0f32; 256];
        for c in [0.0f32, 0.75, -1.5, 40.0] {
            let mut b = Vec::new();
            quantize(format, &[c; 256], &mut b).unwrap();
            format.dequantize(&b, &mut out);
            for (i, &v) in out.iter().enumerate() {
                assert!((v - c).abs() <= 2e-3 * c.abs(), "{format}: constant {c}, value {i} came back as {v}");
            }
        }

        // A block whose slices differ by orders of magnitude: the small slices keep their
        // relative error only as far as the 4- or 6-bit scale grid allows, the large ones
        // theirs.
        let mut x = noise(&mut rng, 256, 1.0);
        for (j, s) in x.chunks_mut(32).enumerate() {
            s.iter_mut().for_each(|v| *v *= [1.0, 0.5, 0.25, 1.0, 0.1, 1.0, 0.75, 0.3][j]);
        }
        let mut b = Vec::new();
        quantize(format, &x, &mut b).unwrap();
        format.dequantize(&b, &mut out);
        let err: Vec<f32> = out.iter().zip(&x).map(|(g, w)| g - w).collect();
        eprintln!("{format}: mixed scales: rms error {:.4}", rms(&err) / rms(&x));
        assert!(rms(&err) / rms(&x) < rms_bound(format), "{format}: mixed scales {}", rms(&err) / rms(&x));
    }
}
