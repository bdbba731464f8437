//! CPU `matmul` against a naive f64 reference on random inputs: decode-sized m (the
//! matrix-vector path) and larger m (the gemm crate), odd k and n, strided views; plus the
//! argument errors.

use kiln_runtime::DType;
use kiln_runtime::{matmul, Device, GemmError, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `out[i][j] = sum_k a[i][k] * b[j][k]` in f64.
fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[j * k + p] as f64).sum();
        }
    }
    out
}

fn check(m: usize, k: usize, n: usize, pad: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let (a, b) = (random(&mut rng, m * k), random(&mut rng, n * k));
    let want = naive(&a, &b, m, k, n);
    // Inputs and output as column views `pad` columns into wider parents (strided, offset).
    let widen = |x: &[f32], r: usize, c: usize| -> Tensor {
        let mut w = vec![7.0f32; r * (c + pad)];
        for (row, src) in w.chunks_exact_mut(c + pad).zip(x.chunks_exact(c)) {
            row[pad..].copy_from_slice(src);
        }
        Tensor::from_f32(&dev, &w, r, c + pad).unwrap().view_cols(pad, c).unwrap()
    };
    let (at, bt) = (widen(&a, m, k), widen(&b, n, k));
    let parent = Tensor::from_f32(&dev, &vec![f32::NAN; m * (n + pad)], m, n + pad).unwrap();
    let mut out = parent.view_cols(pad, n).unwrap();
    matmul(&dev, &at, &bt, &mut out).unwrap();
    let got = out.to_host_f32().unwrap();
    let scale = want.iter().fold(0f64, |s, x| s.max(x.abs())).max(1e-3);
    for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
        let err = (*g as f64 - w).abs() / scale;
        assert!(err < 1e-5, "m={m} k={k} n={n} pad={pad}: element {idx}: got {g}, want {w} (rel {err:.2e})");
    }
    // The padding columns of the output parent are untouched.
    if pad > 0 {
        let p = parent.to_host_f32().unwrap();
        for r in 0..m {
            assert!(p[r * (n + pad)..r * (n + pad) + pad].iter().all(|x| x.is_nan()), "row {r} padding written");
        }
    }
}

#[test]
fn decode_sized_m_matches_naive() {
    for (i, &m) in [1usize, 2, 7, 8].iter().enumerate() {
        check(m, 77, 131, 0, 10 + i as u64);
        check(m, 576, 97, 3, 20 + i as u64);
        check(m, 5, 3, 1, 30 + i as u64);
    }
}

#[test]
fn larger_m_matches_naive() {
    for (i, &m) in [65usize, 100].iter().enumerate() {
        check(m, 77, 131, 0, 40 + i as u64);
        check(m, 129, 65, 2, 50 + i as u64);
    }
}

#[test]
fn a_row_gives_the_same_bits_alone_or_in_a_batch() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(9);
    let (m, k, n) = (7, 301, 45);
    let a = Tensor::from_f32(&dev, &random(&mut rng, m * k), m, k).unwrap();
    let b = Tensor::from_f32(&dev, &random(&mut rng, n * k), n, k).unwrap();
    let mut batch = Tensor::zeros(&dev, DType::F32, m, n).unwrap();
    matmul(&dev, &a, &b, &mut batch).unwrap();
    let batch = batch.to_host_f32().unwrap();
    for i in 0..m {
        let mut one = Tensor::zeros(&dev, DType::F32, 1, n).unwrap();
        matmul(&dev, &a.view_rows(i, 1).unwrap(), &b, &mut one).unwrap();
        assert_eq!(one.to_host_f32().unwrap(), batch[i * n..(i + 1) * n], "row {i}");
    }
}

#[test]
fn a_and_b_may_share_storage() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(3);
    let x = random(&mut rng, 4 * 6);
    let both = Tensor::from_f32(&dev, &x, 4, 6).unwrap();
    let a = both.view_rows(0, 1).unwrap();
    let b = both.view_rows(1, 3).unwrap();
    let mut out = Tensor::zeros(&dev, DType::F32, 1, 3).unwrap();
    matmul(&dev, &a, &b, &mut out).unwrap();
    let want = naive(&x[..6], &x[6..], 1, 6, 3);
    for (g, w) in out.to_host_f32().unwrap().iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-5);
    }
}

#[test]
fn argument_errors() {
    let dev = Device::Cpu;
    let a = Tensor::zeros(&dev, DType::F32, 2, 4).unwrap();
    let b = Tensor::zeros(&dev, DType::F32, 3, 4).unwrap();
    let mut out = Tensor::zeros(&dev, DType::F32, 2, 3).unwrap();
    let bad_k = Tensor::zeros(&dev, DType::F32, 3, 5).unwrap();
    assert!(matches!(matmul(&dev, &a, &bad_k, &mut out), Err(GemmError::Shape(_))));
    let mut bad_out = Tensor::zeros(&dev, DType::F32, 3, 2).unwrap();
    assert!(matches!(matmul(&dev, &a, &b, &mut bad_out), Err(GemmError::Shape(_))));
    let bh = Tensor::zeros(&dev, DType::BF16, 3, 4).unwrap();
    assert!(matches!(matmul(&dev, &a, &bh, &mut out), Err(GemmError::DTypes { .. })));
    let ah = Tensor::zeros(&dev, DType::BF16, 2, 4).unwrap();
    let mut oh = Tensor::zeros(&dev, DType::BF16, 2, 3).unwrap();
    assert!(matches!(matmul(&dev, &ah, &bh, &mut oh), Err(GemmError::Unsupported { .. })));
    let big = Tensor::zeros(&dev, DType::F32, 2, 7).unwrap();
    let mut alias = big.view_cols(4, 3).unwrap();
    let a_alias = big.view_cols(0, 4).unwrap();
    assert!(matches!(matmul(&dev, &a_alias, &b, &mut alias), Err(GemmError::Aliased("a"))));
}
