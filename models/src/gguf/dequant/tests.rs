//! Dequantizers against naive references that decode one element at a time by index, with
//! their own f16/bf16 decoding from sign/exponent/mantissa (no `half`, no bit tricks), plus
//! hand-built blocks whose values are written out by hand.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// f16 bits -> value, from the definition: (-1)^s · 2^(e-15) · 1.m, subnormals 2^-14 · 0.m.
fn ref_half(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0f64 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1f) as i32;
    let mant = (bits & 0x3ff) as f64;
    let v = match exp {
        0 => mant / 1024.0 * 2f64.powi(-14),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + mant / 1024.0) * 2f64.powi(e - 15),
    };
    (sign * v) as f32
}

/// bf16 bits -> value, from the definition: 8 exponent bits (bias 127), 7 mantissa bits.
fn ref_bf16(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0f64 } else { 1.0 };
    let exp = ((bits >> 7) & 0xff) as i32;
    let mant = (bits & 0x7f) as f64;
    let v = match exp {
        0 => mant / 128.0 * 2f64.powi(-126),
        255 if mant == 0.0 => f64::INFINITY,
        255 => f64::NAN,
        e => (1.0 + mant / 128.0) * 2f64.powi(e - 127),
    };
    (sign * v) as f32
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    b[i] as u16 | (b[i + 1] as u16) << 8
}

/// Element `i` of a tensor of type `ty` stored in `b`, decoded on its own.
fn ref_element(ty: GgmlType, b: &[u8], i: usize) -> f32 {
    let nibble = |base: usize, j: usize| {
        if j < 16 {
            b[base + j] % 16
        } else {
            b[base + j - 16] / 16
        }
    };
    match ty {
        GgmlType::F32 => f32::from_bits((0..4).map(|k| (b[4 * i + k] as u32) << (8 * k)).sum::<u32>()),
        GgmlType::F16 => ref_half(u16_at(b, 2 * i)),
        GgmlType::Bf16 => ref_bf16(u16_at(b, 2 * i)),
        GgmlType::Q8_0 => {
            let base = i / 32 * 34;
            let q = b[base + 2 + i % 32];
            let q = if q >= 128 { q as i32 - 256 } else { q as i32 };
            q as f32 * ref_half(u16_at(b, base))
        }
        GgmlType::Q4_0 => {
            let base = i / 32 * 18;
            (nibble(base + 2, i % 32) as f32 - 8.0) * ref_half(u16_at(b, base))
        }
        GgmlType::Q4_1 => {
            let base = i / 32 * 20;
            let d = ref_half(u16_at(b, base));
            let m = ref_half(u16_at(b, base + 2));
            nibble(base + 4, i % 32) as f32 * d + m
        }
        other => unreachable!("no reference for {other}"),
    }
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Random tensor bytes: quant bytes uniformly random; block scales random finite f16 values
/// (some subnormal) so that references and kernels can be compared bit for bit.
fn random_bytes(ty: GgmlType, n_elements: usize, rng: &mut StdRng) -> Vec<u8> {
    let (bl, bb) = ty.block_layout();
    let mut bytes: Vec<u8> = (0..n_elements / bl as usize * bb as usize).map(|_| rng.random()).collect();
    let scales = match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 => 1,
        GgmlType::Q4_1 => 2,
        _ => 0,
    };
    for block in bytes.chunks_exact_mut(bb as usize) {
        for s in 0..scales {
            let v: f32 =
                if rng.random_bool(0.05) { rng.random_range(-1e-6..1e-6) } else { rng.random_range(-2.0..2.0) };
            block[2 * s..2 * s + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

const TYPES: [GgmlType; 6] =
    [GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

#[test]
fn every_type_matches_the_reference_on_random_data() {
    let mut rng = StdRng::seed_from_u64(0x6a11);
    // 0, one block, and sizes spanning several rayon chunks with a ragged last chunk.
    for &n in &[0usize, 32, 96, CHUNK_ELEMS * 3 + 32 * 7] {
        for ty in TYPES {
            let bytes = random_bytes(ty, n, &mut rng);
            let got = dequantize(ty, &bytes, n).unwrap();
            assert_eq!(got.len(), n);
            for (i, &g) in got.iter().enumerate() {
                let want = ref_element(ty, &bytes, i);
                assert!(same(g, want), "{ty} element {i} of {n}: got {g}, want {want}");
            }
            if n > 0 {
                assert!(got.iter().any(|&v| v != 0.0), "{ty}: all zeros");
            }
        }
    }
}

#[test]
fn f16_and_bf16_decode_every_bit_pattern() {
    let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    let h = dequantize(GgmlType::F16, &bytes, 65536).unwrap();
    let b = dequantize(GgmlType::Bf16, &bytes, 65536).unwrap();
    for bits in 0..=u16::MAX {
        let i = bits as usize;
        assert!(same(h[i], ref_half(bits)), "f16 {bits:#06x}: {} vs {}", h[i], ref_half(bits));
        assert!(same(b[i], ref_bf16(bits)), "bf16 {bits:#06x}: {} vs {}", b[i], ref_bf16(bits));
    }
}

#[test]
fn hand_built_blocks() {
    // f16: 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), -0.0
    let h: Vec<u8> = [0x3c00u16, 0xc000, 0x7bff, 0x0001, 0x8000].iter().flat_map(|v| v.to_le_bytes()).collect();
    let got = dequantize(GgmlType::F16, &h, 5).unwrap();
    assert_eq!(got[..4], [1.0, -2.0, 65504.0, 2f32.powi(-24)]);
    assert_eq!(got[4].to_bits(), (-0.0f32).to_bits());

    // bf16: 1.0, -3.0, 3.140625
    let b: Vec<u8> = [0x3f80u16, 0xc040, 0x4049].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::Bf16, &b, 3).unwrap(), [1.0, -3.0, 3.140625]);

    // Q8_0 with d = 0.25: q = -128, -1, 0, 1, 127, then 5, 6, ... 31
    let mut q8 = vec![0x00, 0x34]; // 0x3400 = 0.25
    q8.extend([-128i8, -1, 0, 1, 127].map(|q| q as u8));
    q8.extend((5..32u8).collect::<Vec<_>>());
    let got = dequantize(GgmlType::Q8_0, &q8, 32).unwrap();
    assert_eq!(got[..5], [-32.0, -0.25, 0.0, 0.25, 31.75]);
    assert_eq!(got[31], 31.0 * 0.25);

    // Q4_0 with d = 0.5: byte j = j | (15 - j) << 4, so value j = (j - 8)/2 and
    // value 16 + j = (7 - j)/2.
    let mut q4 = vec![0x00, 0x38]; // 0x3800 = 0.5
    q4.extend((0..16u8).map(|j| j | (15 - j) << 4));
    let want: Vec<f32> = [
        -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, //
        3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0,
    ]
    .to_vec();
    assert_eq!(dequantize(GgmlType::Q4_0, &q4, 32).unwrap(), want);

    // Q4_1 with d = 2, m = -1.5, same nibbles: value = q*2 - 1.5.
    let mut q41 = vec![0x00, 0x40, 0x00, 0xbe]; // 0x4000 = 2.0, 0xbe00 = -1.5
    q41.extend((0..16u8).map(|j| j | (15 - j) << 4));
    let got = dequantize(GgmlType::Q4_1, &q41, 32).unwrap();
    let want: Vec<f32> = (0..16).chain((0..16).map(|j| 15 - j)).map(|q| q as f32 * 2.0 - 1.5).collect();
    assert_eq!(got, want);
    assert_eq!((got[0], got[15], got[16]), (-1.5, 28.5, 28.5));
}

#[test]
fn bad_sizes_and_types_are_errors() {
    assert_eq!(
        dequantize(GgmlType::Q4_0, &[0u8; 17], 32),
        Err(DequantError::SizeMismatch { ty: GgmlType::Q4_0, n_elements: 32, expected: 18, got: 17 })
    );
    assert_eq!(
        dequantize(GgmlType::Q8_0, &[0u8; 34], 31),
        Err(DequantError::PartialBlock { ty: GgmlType::Q8_0, n_elements: 31, block_len: 32 })
    );
    assert_eq!(dequantize(GgmlType::Iq4Xs, &[0u8; 136], 256), Err(DequantError::Unsupported(GgmlType::Iq4Xs)));
    // A k-quant with a row that is not whole super-blocks.
    assert_eq!(
        dequantize(GgmlType::Q4K, &[0u8; 144], 128),
        Err(DequantError::PartialBlock { ty: GgmlType::Q4K, n_elements: 128, block_len: 256 })
    );
}
