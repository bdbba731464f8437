//! The quantized CPU kernels against the format's own dequantization, on random blocks and
//! activations, for every format × every SIMD path this CPU has × odd shapes: the dot
//! products equal the f64 sum over dequantized weights and 16-bit-quantized activations (the
//! kernels' only approximation is the activation quantization, which is checked separately
//! against the f32 product); and `linear` on a `Weight::Quantized` equals them.

mod quant_support;

use kiln_runtime::device::linear::{linear, Weight};
use kiln_runtime::device::quant::cpu::{dot_row, quantize_row, Simd};
use kiln_runtime::device::quant::{QuantFormat, QuantMatrix, BLOCK};
use kiln_runtime::{Device, Tensor};
use quant_support::{random_matrix, random_vec};
use rand::rngs::StdRng;
use rand::SeedableRng;

const FORMATS: [QuantFormat; 10] = QuantFormat::ALL;

#[test]
fn dot_products_equal_the_dequantized_sum() {
    let mut rng = StdRng::seed_from_u64(11);
    for format in FORMATS {
        for &(rows, blocks) in &[(1, 1), (7, 3), (33, 9), (3, 48)] {
            let cols = blocks * format.block_len();
            let w = random_matrix(&mut rng, format, rows, cols);
            let x = random_vec(&mut rng, cols);
            let mut xq = vec![];
            quantize_row(&x, &mut xq);
            let xd: Vec<f64> = xq.iter().flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)).collect();
            let wd = w.dequantize_all();
            for r in 0..rows {
                let row = &wd[r * cols..(r + 1) * cols];
                let want: f64 = row.iter().zip(&xd).map(|(&a, &b)| a as f64 * b).sum();
                let mag: f64 = row.iter().zip(&xd).map(|(&a, &b)| (a as f64 * b).abs()).sum();
                for simd in Simd::available() {
                    let got = dot_row(simd, format, w.row(r), &xq) as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * mag.max(1e-3),
                        "{format} {simd:?} {rows}x{cols} row {r}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn activation_quantization_stays_within_its_rounding() {
    let mut rng = StdRng::seed_from_u64(12);
    let x = random_vec(&mut rng, 4096);
    let mut xq = vec![];
    quantize_row(&x, &mut xq);
    for (b, chunk) in xq.iter().zip(x.chunks(BLOCK)) {
        assert_eq!(b.sum, b.qs.iter().map(|&q| q as i32).sum::<i32>());
        assert_eq!(b.sum_lo, b.qs[..16].iter().map(|&q| q as i32).sum::<i32>());
        for (&q, &v) in b.qs.iter().zip(chunk) {
            assert!((q as f32 * b.d - v).abs() <= 0.5 * b.d * 1.0001, "{v} -> {q} * {}", b.d);
        }
    }
    let mut zq = vec![];
    quantize_row(&[0.0; 32], &mut zq);
    assert!(zq[0].qs.iter().all(|&q| q == 0) && zq[0].d == 0.0);
}

#[test]
fn linear_on_a_quantized_weight_matches_the_f32_product() {
    let mut rng = StdRng::seed_from_u64(13);
    let dev = Device::Cpu;
    for format in FORMATS {
        let (m, k, n) = (5, 10 * format.block_len(), 70);
        let w = random_matrix(&mut rng, format, n, k);
        let x = random_vec(&mut rng, m * k);
        let xt = Tensor::from_f32(&dev, &x, m, k).unwrap();
        let mut out = Tensor::zeros(&dev, kiln_runtime::DType::F32, m, n).unwrap();
        linear(&dev, &xt, &Weight::Quantized(w.clone()), &mut out).unwrap();
        let got = out.to_host_f32().unwrap();
        let wd = w.dequantize_all();
        // Against the exact f32 product: only the 16-bit activations differ (≤ 2⁻¹⁶ relative
        // to the block maximum per value).
        for i in 0..m {
            for j in 0..n {
                let terms = x[i * k..(i + 1) * k].iter().zip(&wd[j * k..(j + 1) * k]);
                let (want, mag) = terms
                    .fold((0f64, 0f64), |(s, a), (&p, &q)| (s + p as f64 * q as f64, a + (p as f64 * q as f64).abs()));
                let g = got[i * n + j] as f64;
                assert!((g - want).abs() <= 1e-4 * mag, "{format} [{i},{j}]: {g} vs {want} (Σ|·| {mag})");
            }
        }
    }
}

#[test]
fn a_quantized_weight_refuses_bad_shapes() {
    let dev = Device::Cpu;
    let w = Weight::Quantized(random_matrix(&mut StdRng::seed_from_u64(1), QuantFormat::Q8_0, 4, 64));
    let x = Tensor::from_f32(&dev, &[0.5; 96], 1, 96).unwrap();
    let mut out = Tensor::zeros(&dev, kiln_runtime::DType::F32, 1, 4).unwrap();
    assert!(linear(&dev, &x, &w, &mut out).is_err());
    assert!(QuantMatrix::new(QuantFormat::Q4_0, 2, 48, vec![0; 36]).is_err(), "48 columns are not whole blocks");
    assert!(QuantMatrix::new(QuantFormat::Q4_0, 2, 64, vec![0; 71]).is_err(), "wrong byte count");
}

#[test]
fn a_quantized_table_gathers_only_the_rows_asked_for() {
    let dev = Device::Cpu;
    let q = random_matrix(&mut StdRng::seed_from_u64(5), QuantFormat::Q8_0, 10, 64);
    let all = q.dequantize_all();
    let w = Weight::Quantized(q);
    let ids = Tensor::vector(&dev, &[7i32, 0, 7, 9]).unwrap();
    let mut out = Tensor::zeros(&dev, kiln_runtime::DType::F32, 4, 64).unwrap();
    kiln_runtime::device::linear::gather_rows_quantized(&w, &ids, &mut out).unwrap();
    let got = out.to_host_f32().unwrap();
    for (i, r) in [7usize, 0, 7, 9].into_iter().enumerate() {
        assert_eq!(&got[i * 64..(i + 1) * 64], &all[r * 64..(r + 1) * 64]);
    }
    let bad = Tensor::vector(&dev, &[10i32]).unwrap();
    let mut one = Tensor::zeros(&dev, kiln_runtime::DType::F32, 1, 64).unwrap();
    assert!(kiln_runtime::device::linear::gather_rows_quantized(&w, &bad, &mut one).is_err(), "row 10 of 10");
}

#[test]
fn a_row_gets_the_same_bits_alone_or_with_others() {
    use kiln_runtime::device::quant::cpu::{dot_rows, Scratch};
    let mut rng = StdRng::seed_from_u64(21);
    for format in FORMATS {
        let w = random_matrix(&mut rng, format, 3, 256);
        let xq: Vec<Vec<_>> = (0..7)
            .map(|_| {
                let mut q = vec![];
                quantize_row(&random_vec(&mut rng, 256), &mut q);
                q
            })
            .collect();
        let xs: Vec<&[_]> = xq.iter().map(Vec::as_slice).collect();
        for simd in Simd::available() {
            for r in 0..3 {
                let mut many = vec![0f32; 7];
                dot_rows(simd, format, w.row(r), &xs, &mut Scratch::default(), &mut many);
                for (i, x) in xq.iter().enumerate() {
                    assert_eq!(many[i].to_bits(), dot_row(simd, format, w.row(r), x).to_bits(), "{format} {simd:?}");
                }
            }
        }
    }
}

#[test]
fn borrowed_and_stacked_blocks_read_as_one_matrix() {
    use kiln_runtime::device::quant::SharedBytes;
    use std::sync::Arc;
    #[derive(Debug)]
    struct File(Vec<u8>);
    impl SharedBytes for File {
        fn shared_bytes(&self) -> &[u8] {
            &self.0
        }
    }
    let mut rng = StdRng::seed_from_u64(31);
    let (a, b) =
        (random_matrix(&mut rng, QuantFormat::Q4_K, 3, 512), random_matrix(&mut rng, QuantFormat::Q4_K, 2, 512));
    let rb = QuantFormat::Q4_K.row_bytes(512);
    // `a`'s blocks inside a larger "file", after 10 bytes of something else.
    let mut file = vec![7u8; 10];
    file.extend((0..3).flat_map(|r| a.row(r).to_vec()));
    file.extend([9u8; 5]);
    let owner: Arc<dyn SharedBytes> = Arc::new(File(file));
    let shared = QuantMatrix::shared(QuantFormat::Q4_K, 3, 512, owner.clone(), 10, 3 * rb).unwrap();
    assert!(shared.borrows());
    assert!(QuantMatrix::shared(QuantFormat::Q4_K, 3, 512, owner, 16, 3 * rb).is_err(), "past the end");
    let stacked = QuantMatrix::stack(&[shared, b.clone()]).unwrap();
    assert_eq!(stacked.rows(), 5);
    let mut want = a.dequantize_all();
    want.extend(b.dequantize_all());
    assert_eq!(stacked.dequantize_all(), want);
    assert_eq!(stacked.row(4), b.row(1));
}

#[test]
fn eight_bit_kernels_equal_the_portable_sum_and_do_not_depend_on_the_batch() {
    use kiln_runtime::device::quant::activations::quantize_row8_for;
    use kiln_runtime::device::quant::cpu::{dot_rows, dot_rows8, ActBlock, ActBlock8, Scratch};
    let mut rng = StdRng::seed_from_u64(41);
    for format in FORMATS {
        for &(rows, blocks) in &[(1, 1), (5, 3), (3, 9)] {
            let cols = blocks * format.block_len();
            let w = random_matrix(&mut rng, format, rows, cols);
            let mut wide = vec![];
            let xq8: Vec<Vec<ActBlock8>> = (0..6)
                .map(|_| {
                    let mut q = vec![];
                    quantize_row8_for(format, &random_vec(&mut rng, cols), &mut wide, &mut q);
                    q
                })
                .collect();
            let xq16: Vec<Vec<ActBlock>> = xq8.iter().map(|x| x.iter().map(ActBlock::from).collect()).collect();
            let xs8: Vec<&[ActBlock8]> = xq8.iter().map(Vec::as_slice).collect();
            let xs16: Vec<&[ActBlock]> = xq16.iter().map(Vec::as_slice).collect();
            for r in 0..rows {
                let mut want = vec![0f32; 6];
                dot_rows(Simd::Portable, format, w.row(r), &xs16, &mut Scratch::default(), &mut want);
                for simd in Simd::available() {
                    let mut many = vec![0f32; 6];
                    dot_rows8(simd, format, w.row(r), &xs8, &mut Scratch::default(), &mut many);
                    for i in 0..6 {
                        let mag: f64 = {
                            let wd = w.dequantize_all();
                            let row = &wd[r * cols..(r + 1) * cols];
                            let x: Vec<f64> =
                                xq16[i].iter().flat_map(|b| b.qs.map(|q| q as f64 * b.d as f64)).collect();
                            row.iter().zip(&x).map(|(&a, &b)| (a as f64 * b).abs()).sum()
                        };
                        assert!(
                            ((many[i] - want[i]) as f64).abs() <= 1e-5 * mag.max(1e-3),
                            "{format} {simd:?} row {r} x{i}: {} vs {}",
                            many[i],
                            want[i]
                        );
                        let mut one = [0f32];
                        dot_rows8(simd, format, w.row(r), &xs8[i..i + 1], &mut Scratch::default(), &mut one);
                        assert_eq!(one[0].to_bits(), many[i].to_bits(), "{format} {simd:?}: alone vs batched");
                    }
                }
            }
        }
    }
}

#[test]
fn rows_of_different_formats_fill_their_own_columns() {
    let mut rng = StdRng::seed_from_u64(51);
    let dev = Device::Cpu;
    let (m, k) = (3, 512);
    let parts =
        vec![random_matrix(&mut rng, QuantFormat::Q5_0, 4, k), random_matrix(&mut rng, QuantFormat::Q8_0, 2, k)];
    let x = Tensor::from_f32(&dev, &random_vec(&mut rng, m * k), m, k).unwrap();
    let mut out = Tensor::zeros(&dev, kiln_runtime::DType::F32, m, 6).unwrap();
    linear(&dev, &x, &Weight::QuantizedRows(parts.clone()), &mut out).unwrap();
    let got = out.to_host_f32().unwrap();
    let mut at = 0;
    for p in &parts {
        let mut one = Tensor::zeros(&dev, kiln_runtime::DType::F32, m, p.rows()).unwrap();
        linear(&dev, &x, &Weight::Quantized(p.clone()), &mut one).unwrap();
        let one = one.to_host_f32().unwrap();
        for i in 0..m {
            assert_eq!(&got[i * 6 + at..i * 6 + at + p.rows()], &one[i * p.rows()..(i + 1) * p.rows()]);
        }
        at += p.rows();
    }
    let mut wrong = Tensor::zeros(&dev, kiln_runtime::DType::F32, m, 5).unwrap();
    assert!(linear(&dev, &x, &Weight::QuantizedRows(parts), &mut wrong).is_err(), "6 output columns, not 5");
}

/// Weights of different kinds stacked (`Weight::Rows`: dense, blocks, a stack of blocks) fill
/// their own columns with what each gives alone; a wrong output width is refused.
#[test]
fn stacked_weights_of_different_kinds_fill_their_own_columns() {
    let mut rng = StdRng::seed_from_u64(52);
    let dev = Device::Cpu;
    let (m, k) = (3, 256);
    let dense = Tensor::from_f32(&dev, &random_vec(&mut rng, 5 * k), 5, k).unwrap();
    let q4 = random_matrix(&mut rng, QuantFormat::Q4_K, 3, k);
    let rows = vec![random_matrix(&mut rng, QuantFormat::Q8_0, 2, k), random_matrix(&mut rng, QuantFormat::Q6_K, 1, k)];
    let parts = vec![Weight::Dense(dense), Weight::Quantized(q4), Weight::QuantizedRows(rows)];
    let stacked = Weight::Rows(parts.clone());
    assert_eq!(stacked.out_features(), 11);
    let x = Tensor::from_f32(&dev, &random_vec(&mut rng, m * k), m, k).unwrap();
    let mut out = Tensor::zeros(&dev, kiln_runtime::DType::F32, m, 11).unwrap();
    linear(&dev, &x, &stacked, &mut out).unwrap();
    let got = out.to_host_f32().unwrap();
    let mut at = 0;
    for p in &parts {
        let w = p.out_features();
        let mut one = Tensor::zeros(&dev, kiln_runtime::DType::F32, m, w).unwrap();
        linear(&dev, &x, p, &mut one).unwrap();
        let one = one.to_host_f32().unwrap();
        for i in 0..m {
            assert_eq!(&got[i * 11 + at..i * 11 + at + w], &one[i * w..(i + 1) * w], "part at column {at}, row {i}");
        }
        at += w;
    }
    let mut wrong = Tensor::zeros(&dev, kiln_runtime::DType::F32, m, 10).unwrap();
    assert!(linear(&dev, &x, &stacked, &mut wrong).is_err(), "11 output columns, not 10");
}

#[test]
fn every_path_quantizes_activations_to_the_same_blocks() {
    use kiln_runtime::device::quant::activations::{quantize_row_for_with, Activations};
    let mut rng = StdRng::seed_from_u64(71);
    let mut rows: Vec<Vec<f32>> = (0..20).map(|_| random_vec(&mut rng, 256)).collect();
    // Ties of the roundings: with a block maximum of 32767 (16-bit) or 127 (Q8_0) the scale is 1,
    // so these values are rounded as they stand (half away from zero, or half to even).
    let ties = |top: f32| {
        let mut v = vec![top, 0.5, -0.5, 1.5, -2.5, 2.5, 126.5, -126.5, 0.49999997, -0.49999997, 3.5000002];
        v.resize(32, -top + 0.5);
        v
    };
    rows.push(ties(32767.0));
    rows.push(ties(127.0));
    // Zeros, NaN, infinities and values too small for their scale.
    let mut odd = vec![0.0f32; 32];
    odd.extend([f32::NAN; 32]);
    odd.extend((0..32).map(|i| if i == 3 { f32::INFINITY } else { i as f32 }));
    odd.extend((0..32).map(|i| if i % 2 == 0 { f32::NAN } else { -(i as f32) }));
    odd.extend((0..32).map(|i| i as f32 * 1e-44));
    odd.extend((0..32).map(|i| if i == 0 { f32::NEG_INFINITY } else { 1.0 }));
    rows.push(odd);
    let fields = |b: &[kiln_runtime::device::quant::cpu::ActBlock]| {
        b.iter().map(|b| (b.d.to_bits(), b.sum, b.sum_lo, b.qs)).collect::<Vec<_>>()
    };
    for (mode, format) in [(Activations::Bits16, QuantFormat::Q4_1), (Activations::Ggml8, QuantFormat::Q4_0)] {
        for (r, x) in rows.iter().enumerate() {
            let mut want = vec![];
            quantize_row_for_with(Simd::Portable, mode, format, x, &mut want);
            for simd in Simd::available() {
                let mut got = vec![];
                quantize_row_for_with(simd, mode, format, x, &mut got);
                assert_eq!(fields(&got), fields(&want), "{mode:?} {simd:?} row {r}");
            }
        }
    }
}
