//! Random quantized matrices and activations for the CPU kernel tests (`quant_cpu.rs`,
//! `quant_gemm.rs`).

use kiln_runtime::device::quant::blocks::half_fields;
use kiln_runtime::device::quant::{QuantFormat, QuantMatrix};
use rand::rngs::StdRng;
use rand::Rng;

/// A random matrix: f16 scales in ±[0.01, 0.1), every other byte random.
pub fn random_matrix(rng: &mut StdRng, format: QuantFormat, rows: usize, cols: usize) -> QuantMatrix {
    let mut bytes = Vec::with_capacity(rows * format.row_bytes(cols));
    for _ in 0..rows * cols / format.block_len() {
        let mut block: Vec<u8> = (0..format.block_bytes()).map(|_| rng.random::<u8>()).collect();
        for &at in half_fields(format) {
            let v: f32 = rng.random_range(0.01..0.1) * if rng.random::<bool>() { 1.0 } else { -1.0 };
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        bytes.extend_from_slice(&block);
    }
    QuantMatrix::new(format, rows, cols, bytes).unwrap()
}

pub fn random_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}
