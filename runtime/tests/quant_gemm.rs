//! The blocked GEMM over quantized weights (`device::quant::cpu::gemm`) against the
//! dequantize-then-f64 product, for every format × both activation forms (16-bit and
//! llama.cpp's 8-bit) × every SIMD path this CPU has × odd shapes (row counts that are not a
//! multiple of the tile, a single row, weight rows that end mid-panel): every SIMD path packs the
//! same panels and computes the same bits as the portable path, which is within f32 rounding of
//! the exact sum over the quantized activations; a row's result does not depend on the rows
//! beside it; the few-rows product (`gemv`) gives the GEMM's bits; and `linear` takes the GEMM
//! for many rows.

mod quant_support;

use kiln_runtime::device::linear::{linear, Weight};
use kiln_runtime::device::quant::activations::{quantize_row8_for, set_activations, Activations};
use kiln_runtime::device::quant::cpu::gemm::{gemm_q16, gemm_q8};
use kiln_runtime::device::quant::cpu::gemv::{gemv_q16, gemv_q8, GEMV_MAX_ROWS};
use kiln_runtime::device::quant::cpu::panel::{pack, Ints16, Ints8, Panel, PanelInts, NR};
use kiln_runtime::device::quant::cpu::{quantize_row, ActBlock, ActBlock8, Simd};
use kiln_runtime::device::quant::{QuantFormat, QuantMatrix};
use kiln_runtime::{DType, Device, Tensor};
use quant_support::{random_matrix, random_vec};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// (activation rows, weight rows, blocks per row).
const SHAPES: [(usize, usize, usize); 6] = [(1, 1, 1), (1, 9, 2), (3, 8, 1), (5, 17, 3), (13, 7, 2), (9, 33, 4)];

fn rows16(rng: &mut StdRng, m: usize, k: usize) -> Vec<Vec<ActBlock>> {
    (0..m)
        .map(|_| {
            let mut q = vec![];
            quantize_row(&random_vec(rng, k), &mut q);
            q
        })
        .collect()
}

fn rows8(rng: &mut StdRng, format: QuantFormat, m: usize, k: usize) -> Vec<Vec<ActBlock8>> {
    let mut wide = vec![];
    (0..m)
        .map(|_| {
            let mut q = vec![];
            quantize_row8_for(format, &random_vec(rng, k), &mut wide, &mut q);
            q
        })
        .collect()
}

/// The exact product of the dequantized weights with the quantized activations (`q · d`), and
/// the sum of the magnitudes of its terms, per output.
fn reference(w: &QuantMatrix, xd: &[Vec<f64>]) -> Vec<(f64, f64)> {
    let (n, k) = (w.rows(), w.cols());
    let wd = w.dequantize_all();
    let mut out = vec![];
    for x in xd {
        for j in 0..n {
            let terms = wd[j * k..(j + 1) * k].iter().zip(x).map(|(&a, &b)| a as f64 * b);
            out.push(terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs())));
        }
    }
    out
}

fn check(what: &str, got: &[f32], want: &[(f64, f64)]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (at, (&g, &(w, mag))) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-5 * mag.max(1e-3), "{what} [{at}]: {g} vs {w} (Σ|·| {mag})");
    }
}

fn same_bits(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (at, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what} [{at}]: {x} vs {y}");
    }
}

#[test]
fn sixteen_bit_gemm_equals_the_dequantized_product_on_every_path() {
    let mut rng = StdRng::seed_from_u64(61);
    for format in QuantFormat::ALL {
        for (m, n, blocks) in SHAPES {
            let k = blocks * format.block_len();
            let w = random_matrix(&mut rng, format, n, k);
            let xq = rows16(&mut rng, m, k);
            let xd: Vec<Vec<f64>> =
                xq.iter().map(|x| x.iter().flat_map(|b| b.qs.map(|q| q as f64 * b.d as f64)).collect()).collect();
            let what = format!("{format} 16-bit {m}x{n}x{k}");
            let portable = gemm_q16(Simd::Portable, &xq, &w);
            check(&what, &portable, &reference(&w, &xd));
            for simd in Simd::available() {
                same_bits(&format!("{what} {simd:?}"), &gemm_q16(simd, &xq, &w), &portable);
            }
        }
    }
}

#[test]
fn eight_bit_gemm_equals_the_dequantized_product_on_every_path() {
    let mut rng = StdRng::seed_from_u64(62);
    for format in QuantFormat::ALL {
        for (m, n, blocks) in SHAPES {
            let k = blocks * format.block_len();
            let w = random_matrix(&mut rng, format, n, k);
            let xq = rows8(&mut rng, format, m, k);
            let xd: Vec<Vec<f64>> =
                xq.iter().map(|x| x.iter().flat_map(|b| b.qs.map(|q| q as f64 * b.d as f64)).collect()).collect();
            let what = format!("{format} 8-bit {m}x{n}x{k}");
            let portable = gemm_q8(Simd::Portable, &xq, &w);
            check(&what, &portable, &reference(&w, &xd));
            for simd in Simd::available() {
                same_bits(&format!("{what} {simd:?}"), &gemm_q8(simd, &xq, &w), &portable);
            }
        }
    }
}

#[test]
fn the_few_rows_product_equals_the_gemm_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(66);
    for format in QuantFormat::ALL {
        for m in 1..=GEMV_MAX_ROWS {
            for (n, blocks) in [(1, 1), (7, 2), (8, 1), (9, 3), (17, 2), (70, 2)] {
                let k = blocks * format.block_len();
                let w = random_matrix(&mut rng, format, n, k);
                let (x16, x8) = (rows16(&mut rng, m, k), rows8(&mut rng, format, m, k));
                let (want16, want8) = (gemm_q16(Simd::Portable, &x16, &w), gemm_q8(Simd::Portable, &x8, &w));
                for simd in Simd::available() {
                    let what = format!("{format} {simd:?} {m}x{n}x{k}");
                    same_bits(&format!("{what} 16-bit"), &gemv_q16(simd, &x16, &w), &want16);
                    same_bits(&format!("{what} 8-bit"), &gemv_q8(simd, &x8, &w), &want8);
                }
            }
        }
    }
}

fn panels_equal<I: PanelInts>(
    format: QuantFormat,
    w: &QuantMatrix,
    r0: usize,
    stale: &QuantMatrix,
    bits: impl Fn(&I) -> Vec<u8>,
) {
    let mut want = Panel::<I>::new();
    pack(Simd::Portable, w, r0, &mut want);
    for simd in Simd::available() {
        // A panel reused from another matrix of the same width: nothing of it may remain.
        let mut got = Panel::<I>::new();
        pack(simd, stale, 0, &mut got);
        pack(simd, w, r0, &mut got);
        for (s, (a, b)) in got.ints.iter().zip(&want.ints).enumerate() {
            assert_eq!(bits(a), bits(b), "{format} {simd:?} rows {r0}.. slice {s}: integers");
        }
        for (s, (a, b)) in got.scales.iter().zip(&want.scales).enumerate() {
            let f = |x: &[[f32; NR]; 2]| x.as_flattened().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!((f(&a.scale), f(&a.coef)), (f(&b.scale), f(&b.coef)), "{format} {simd:?} slice {s}: scales");
        }
    }
}

#[test]
fn every_path_packs_the_same_panels() {
    let mut rng = StdRng::seed_from_u64(63);
    for format in QuantFormat::ALL {
        // A whole panel, then one of 3 rows padded with zeros.
        let (k, rows) = (2 * format.block_len(), NR + 3);
        let (w, stale) = (random_matrix(&mut rng, format, rows, k), random_matrix(&mut rng, format, NR, k));
        for r0 in [0, NR] {
            let wide = |i: &Ints16| i.0.iter().flat_map(|v| v.to_le_bytes()).collect();
            panels_equal::<Ints16>(format, &w, r0, &stale, wide);
            panels_equal::<Ints8>(format, &w, r0, &stale, |i| i.0.to_vec());
        }
    }
}

#[test]
fn a_row_gets_the_same_bits_in_any_batch_of_the_gemm() {
    let mut rng = StdRng::seed_from_u64(64);
    for format in [QuantFormat::Q4_1, QuantFormat::Q8_0, QuantFormat::Q6_K] {
        let k = 2 * format.block_len();
        let w = random_matrix(&mut rng, format, 12, k);
        let (x16, x8) = (rows16(&mut rng, 7, k), rows8(&mut rng, format, 7, k));
        for simd in Simd::available() {
            let (all16, all8) = (gemm_q16(simd, &x16, &w), gemm_q8(simd, &x8, &w));
            for (i0, i1) in [(0, 1), (6, 7), (2, 5), (1, 7)] {
                let what = format!("{format} {simd:?} rows {i0}..{i1}");
                same_bits(&what, &gemm_q16(simd, &x16[i0..i1], &w), &all16[i0 * 12..i1 * 12]);
                same_bits(&what, &gemm_q8(simd, &x8[i0..i1], &w), &all8[i0 * 12..i1 * 12]);
            }
        }
    }
}

#[test]
fn linear_gives_a_row_the_same_bits_in_any_batch_and_the_f32_product() {
    let mut rng = StdRng::seed_from_u64(65);
    let dev = Device::Cpu;
    set_activations(Activations::Bits16);
    for format in [QuantFormat::Q4_1, QuantFormat::Q5_0, QuantFormat::Q4_K, QuantFormat::Q6_K] {
        let (m, k, n) = (37, 3 * format.block_len(), 45);
        let w = random_matrix(&mut rng, format, n, k);
        let x = random_vec(&mut rng, m * k);
        let xt = Tensor::from_f32(&dev, &x, m, k).unwrap();
        let mut out = Tensor::zeros(&dev, DType::F32, m, n).unwrap();
        linear(&dev, &xt, &Weight::Quantized(w.clone()), &mut out).unwrap();
        let got = out.to_host_f32().unwrap();
        // The GEMM on the same quantized rows, as `linear` takes it for 37 rows.
        let xq: Vec<Vec<ActBlock>> = x
            .chunks_exact(k)
            .map(|r| {
                let mut q = vec![];
                quantize_row(r, &mut q);
                q
            })
            .collect();
        same_bits(&format!("{format} linear"), &got, &gemm_q16(Simd::detect(), &xq, &w));
        // Each row alone (the few-rows product) and in small batches: the same bits as in the
        // batch of 37 (a seeded request must reproduce whatever is batched with it).
        for (i0, i1) in [(0, 1), (5, 6), (36, 37), (1, 4), (30, 35)] {
            let part = Tensor::from_f32(&dev, &x[i0 * k..i1 * k], i1 - i0, k).unwrap();
            let mut alone = Tensor::zeros(&dev, DType::F32, i1 - i0, n).unwrap();
            linear(&dev, &part, &Weight::Quantized(w.clone()), &mut alone).unwrap();
            same_bits(&format!("{format} rows {i0}..{i1}"), &alone.to_host_f32().unwrap(), &got[i0 * n..i1 * n]);
        }
        // Against the exact f32 product: only the 16-bit activations differ.
        let wd = w.dequantize_all();
        for i in 0..m {
            for j in 0..n {
                let terms =
                    x[i * k..(i + 1) * k].iter().zip(&wd[j * k..(j + 1) * k]).map(|(&p, &q)| p as f64 * q as f64);
                let (want, mag) = terms.fold((0f64, 0f64), |(s, a), t| (s + t, a + t.abs()));
                let g = got[i * n + j] as f64;
                assert!((g - want).abs() <= 1e-4 * mag, "{format} [{i},{j}]: {g} vs {want}");
            }
        }
    }
}
