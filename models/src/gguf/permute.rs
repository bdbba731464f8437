//! The Q/K row permutation of llama.cpp's converter, and its inverse.
//!
//! HF Llama checkpoints apply RoPE in "rotate-half" form: within each head of `head_dim` rows,
//! row `i` is paired with row `i + head_dim/2`. llama.cpp rotates adjacent pairs `(2i, 2i+1)`,
//! so its converter reorders the rows of `attn_q` / `attn_k` per head with
//! `w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2)`: GGUF row `h·hd + 2i + t` holds HF row
//! `h·hd + t·hd/2 + i` (t ∈ {0, 1}). For `attn_k`, `n_head` is the number of KV heads.
//!
//! Invariants: both functions are bijections on rows (`permute ∘ unpermute = id`), move whole
//! rows (columns untouched, so a `[rows]` bias is the `cols = 1` case), and reject shapes the
//! permutation is undefined for instead of guessing.

/// A shape the permutation cannot apply to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermuteError {
    #[error("{rows} rows are not divisible into {n_head} heads of an even head_dim")]
    BadHeads { rows: usize, n_head: usize },
    #[error("data has {len} values, expected rows × cols = {rows} × {cols}")]
    BadLen { len: usize, rows: usize, cols: usize },
}

/// The GGUF row that holds HF row `hf_row`.
fn gguf_row(hf_row: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (head, within) = (hf_row / head_dim, hf_row % head_dim);
    let (t, i) = (within / half, within % half);
    head * head_dim + 2 * i + t
}

fn check(len: usize, rows: usize, cols: usize, n_head: usize) -> Result<usize, PermuteError> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(PermuteError::BadLen { len, rows, cols });
    }
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(PermuteError::BadHeads { rows, n_head });
    }
    Ok(rows / n_head)
}

/// GGUF (llama.cpp, interleaved-pair) row order -> HF (rotate-half) row order, for a row-major
/// `[rows, cols]` matrix.
/// Generic over the element so that quantized rows (`cols` = bytes per row) move whole, as
/// blocks, never dequantized to be permuted.
pub fn unpermute_qk_rows<T: Copy>(data: &[T], rows: usize, cols: usize, n_head: usize) -> Result<Vec<T>, PermuteError> {
    let head_dim = check(data.len(), rows, cols, n_head)?;
    let mut out = Vec::with_capacity(data.len());
    for r in 0..rows {
        let src = gguf_row(r, head_dim) * cols;
        out.extend_from_slice(&data[src..src + cols]);
    }
    Ok(out)
}

/// HF (rotate-half) row order -> GGUF (llama.cpp) row order: what llama.cpp's converter does.
pub fn permute_qk_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>, PermuteError> {
    let head_dim = check(data.len(), rows, cols, n_head)?;
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        let dst = gguf_row(r, head_dim) * cols;
        out[dst..dst + cols].copy_from_slice(&data[r * cols..(r + 1) * cols]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn permute_and_unpermute_are_inverse() {
        let mut rng = StdRng::seed_from_u64(7);
        for (n_head, head_dim, cols) in [(9, 64, 5), (3, 64, 1), (1, 2, 3), (4, 8, 7)] {
            let rows = n_head * head_dim;
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let p = permute_qk_rows(&w, rows, cols, n_head).unwrap();
            assert_eq!(unpermute_qk_rows(&p, rows, cols, n_head).unwrap(), w);
            let u = unpermute_qk_rows(&w, rows, cols, n_head).unwrap();
            assert_eq!(permute_qk_rows(&u, rows, cols, n_head).unwrap(), w);
            if head_dim > 2 {
                assert_ne!(p, w, "the permutation must move rows");
            }
        }
    }

    #[test]
    fn small_example_by_hand() {
        // One head, head_dim 4: HF rows [a0, a1, b0, b1] rotate pairs (a0,b0), (a1,b1);
        // llama.cpp stores them adjacent: [a0, b0, a1, b1].
        let hf = [10.0, 11.0, 20.0, 21.0];
        assert_eq!(permute_qk_rows(&hf, 4, 1, 1).unwrap(), [10.0, 20.0, 11.0, 21.0]);
        assert_eq!(unpermute_qk_rows(&[10.0, 20.0, 11.0, 21.0], 4, 1, 1).unwrap(), hf);
    }

    /// The point of the permutation: interleaved-pair RoPE on GGUF-ordered rows equals
    /// rotate-half RoPE on HF-ordered rows, reordered the same way.
    #[test]
    fn interleaved_rope_on_gguf_rows_equals_rotate_half_on_hf_rows() {
        let (n_head, hd, pos, base) = (3usize, 16usize, 37.0f64, 10000f64);
        let mut rng = StdRng::seed_from_u64(11);
        let q_hf: Vec<f32> = (0..n_head * hd).map(|_| rng.random_range(-1.0..1.0)).collect();
        let q_gguf = permute_qk_rows(&q_hf, n_head * hd, 1, n_head).unwrap();
        let angle = |i: usize| pos * base.powf(-2.0 * i as f64 / hd as f64);
        let mut rot_hf = q_hf.clone();
        let mut rot_gguf = q_gguf.clone();
        for h in 0..n_head {
            for i in 0..hd / 2 {
                let (s, c) = (angle(i).sin() as f32, angle(i).cos() as f32);
                let (a, b) = (h * hd + i, h * hd + i + hd / 2);
                rot_hf[a] = q_hf[a] * c - q_hf[b] * s;
                rot_hf[b] = q_hf[b] * c + q_hf[a] * s;
                let (a, b) = (h * hd + 2 * i, h * hd + 2 * i + 1);
                rot_gguf[a] = q_gguf[a] * c - q_gguf[b] * s;
                rot_gguf[b] = q_gguf[b] * c + q_gguf[a] * s;
            }
        }
        assert_eq!(unpermute_qk_rows(&rot_gguf, n_head * hd, 1, n_head).unwrap(), rot_hf);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let w = vec![1.0f32; 12];
        assert_eq!(unpermute_qk_rows(&w, 12, 1, 0), Err(PermuteError::BadHeads { rows: 12, n_head: 0 }));
        assert_eq!(unpermute_qk_rows(&w, 12, 1, 5), Err(PermuteError::BadHeads { rows: 12, n_head: 5 }));
        assert_eq!(unpermute_qk_rows(&w, 12, 1, 4), Err(PermuteError::BadHeads { rows: 12, n_head: 4 }));
        assert_eq!(permute_qk_rows(&w, 4, 4, 2), Err(PermuteError::BadLen { len: 12, rows: 4, cols: 4 }));
    }
}
