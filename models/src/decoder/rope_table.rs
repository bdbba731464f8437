//! RoPE whose inverse frequencies are data ([`RopeTable`]): LongRoPE's per-pair factors, partial
//! rotary (only the first `rotary_dim` dims of each head turn), and an attention factor on cos
//! and sin. The step runs it with the `rope_half_table` / `rope_kv_write_table` kernels, which
//! pair column `j` with `j + head_dim/2` and read one inverse frequency per pair from a table.
//!
//! HF pairs `j` with `j + rd/2` inside the first `rd = rotary_dim` dims and passes the rest
//! through. kiln gets the same attention without a second pairing: at load, the q and k rows
//! of every head are permuted so that HF's pair `(j, j + rd/2)` sits at kiln's `(j, j + hd/2)`
//! and the pass-through dims fill the remaining pairs, which turn at frequency 0 (cos 1, sin 0).
//! `q·k` is unchanged when q and k are permuted alike; V and the output projection are not
//! touched. RoPE is linear, so the attention factor (cos and sin both multiplied by it) is
//! folded into the q and k rows of the rotary dims, and only those.
//!
//! Invariants ([`RopeTable::check`]): `0 < rotary_dim <= head_dim`, `rotary_dim` even,
//! `inv_freq.len() == rotary_dim / 2`, every frequency and the factor finite (the factor > 0).
//! The K cache holds keys in kiln's column order; nothing outside the decoder reads it by dim.

use crate::config::LlamaConfig;
use crate::llama::load as load_err;
use crate::model::ModelError;
use crate::weights::{Part, WeightSource};
use kiln_runtime::device::linear::Weight;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

/// RoPE from a frequency table, in HF's terms (see the module header).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    /// The leading dims of each head that rotate (HF `head_dim * partial_rotary_factor`).
    pub rotary_dim: usize,
    /// Inverse frequency of HF pair `i` (dims `i` and `i + rotary_dim/2`), `rotary_dim / 2` of them.
    pub inv_freq: Vec<f32>,
    /// cos and sin are multiplied by this on the rotary dims (LongRoPE's attention factor).
    pub attn_factor: f32,
}

impl RopeTable {
    /// `theta^(-2i/rotary_dim)` over the first `rotary_dim` dims (a plain partial rotary).
    pub fn partial(theta: f32, rotary_dim: usize) -> RopeTable {
        RopeTable::scaled(theta, rotary_dim, &vec![1.0; rotary_dim / 2], 1.0)
    }

    /// LongRoPE: `1 / (factor[i] * theta^(2i/rotary_dim))`, as HF computes it (f32 arithmetic,
    /// `theta ** (2i / rd)` first).
    pub fn scaled(theta: f32, rotary_dim: usize, factors: &[f32], attn_factor: f32) -> RopeTable {
        let inv_freq = factors
            .iter()
            .enumerate()
            .map(|(i, &f)| 1.0 / (f * theta.powf((2 * i) as f32 / rotary_dim as f32)))
            .collect();
        RopeTable { rotary_dim, inv_freq, attn_factor }
    }

    /// Checks the invariants in the module header for heads of `head_dim`.
    pub fn check(&self, head_dim: usize) -> Result<(), String> {
        let rd = self.rotary_dim;
        if rd == 0 || rd > head_dim || !rd.is_multiple_of(2) {
            return Err(format!("rotary dims {rd} must be even and in 1..={head_dim} (head_dim)"));
        }
        if self.inv_freq.len() != rd / 2 {
            return Err(format!("{} inverse frequencies for {rd} rotary dims (want {})", self.inv_freq.len(), rd / 2));
        }
        if let Some(f) = self.inv_freq.iter().find(|f| !f.is_finite()) {
            return Err(format!("inverse frequency {f} is not finite"));
        }
        if !(self.attn_factor.is_finite() && self.attn_factor > 0.0) {
            return Err(format!("attention factor {} is not a positive number", self.attn_factor));
        }
        Ok(())
    }

    /// For each kiln column of a head, the HF column it holds.
    pub fn hf_column(&self, head_dim: usize) -> Vec<usize> {
        let (half, rh) = (head_dim / 2, self.rotary_dim / 2);
        let pass = half - rh; // pass-through pairs
        let mut col = vec![0; head_dim];
        for j in 0..half {
            let (a, b) = if j < rh {
                (j, j + rh)
            } else {
                let p = j - rh;
                (self.rotary_dim + p, self.rotary_dim + pass + p)
            };
            col[j] = a;
            col[j + half] = b;
        }
        col
    }

    /// The inverse frequency of each kiln pair (`head_dim / 2`; pass-through pairs 0).
    pub fn pair_freqs(&self, head_dim: usize) -> Vec<f32> {
        (0..head_dim / 2).map(|j| self.inv_freq.get(j).copied().unwrap_or(0.0)).collect()
    }

    /// The kernels' table for rows of `heads` heads: every column holds its pair's frequency.
    pub fn tiled(&self, head_dim: usize, heads: usize) -> Vec<f32> {
        let pairs = self.pair_freqs(head_dim);
        (0..heads * head_dim).map(|c| pairs[(c % head_dim) % (head_dim / 2)]).collect()
    }

    /// Whether loading changes no q/k row (full rotary, factor 1).
    pub fn weights_unchanged(&self, head_dim: usize) -> bool {
        self.rotary_dim == head_dim && self.attn_factor == 1.0
    }

    /// Rearrange and scale the q and k head rows of a fused `[q | k | v]` projection (`data`:
    /// `(n_heads + 2 * n_kv_heads) * head_dim` rows of `cols` values, HF order) into kiln's
    /// order (see the module header). V rows are left as they are.
    pub fn fold_into_qkv(&self, data: &mut [f32], cols: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) {
        let col = self.hf_column(head_dim);
        let rotary = |hf: usize| hf < self.rotary_dim;
        let mut head = vec![0.0f32; head_dim * cols];
        for h in 0..n_heads + n_kv_heads {
            let rows = &mut data[h * head_dim * cols..(h + 1) * head_dim * cols];
            head.copy_from_slice(rows);
            for (c, &hf) in col.iter().enumerate() {
                let s = if rotary(hf) { self.attn_factor } else { 1.0 };
                let (dst, src) = (&mut rows[c * cols..(c + 1) * cols], &head[hf * cols..(hf + 1) * cols]);
                dst.iter_mut().zip(src).for_each(|(d, &x)| *d = x * s);
            }
        }
    }
}

/// One layer's kernel tables, f32 (the kernels' `Bcast<f32>`): `q` has `n_heads * head_dim`
/// columns, `k` `n_kv_heads * head_dim` (the first columns of `q`'s: the table repeats per head).
pub(crate) struct Freqs {
    pub q: Tensor,
    pub k: Tensor,
}

/// The device tables of a layer whose RoPE has a table.
pub(crate) fn device_freqs(t: Option<&RopeTable>, c: &LlamaConfig, dev: &Device) -> Result<Option<Freqs>, ModelError> {
    let Some(t) = t else { return Ok(None) };
    t.check(c.head_dim).map_err(|e| ModelError::Load(format!("RoPE table: {e}")))?;
    let v = t.tiled(c.head_dim, c.num_attention_heads);
    let q = Tensor::from_f32(dev, &v, 1, v.len())?;
    let k = q.view_cols(0, c.num_key_value_heads * c.head_dim)?;
    Ok(Some(Freqs { q, k }))
}

/// The fused q/k/v projection of a layer whose RoPE has a table that changes the q/k rows:
/// read as f32 (a quantized one is dequantized), rows folded (see [`RopeTable::fold_into_qkv`]),
/// uploaded dense. `parts`: the tensors stacked, with their HF shapes.
/// A fused q/k/v weight read from `parts` (whole tensors, or one rank's heads of them), its q
/// and k heads folded into kiln's order; `c` gives the head counts of what is read.
pub(crate) fn qkv_weight(
    w: &WeightSource,
    t: &RopeTable,
    parts: &[(String, [usize; 2], Part)],
    c: &LlamaConfig,
    dev: &Device,
    dtype: DType,
) -> Result<Weight, ModelError> {
    let cols = c.hidden_size;
    let mut data = Vec::new();
    for (name, shape, part) in parts {
        let s = w.read_part(name, Some(shape), part).map_err(load_err)?;
        data.extend(s.to_f32().map_err(load_err)?);
    }
    let rows = data.len() / cols;
    t.fold_into_qkv(&mut data, cols, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    Ok(Tensor::from_f32_as(dev, dtype, &data, rows, cols)?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phi-3 fixture shape: head_dim 16, rotary 12.
    fn table() -> RopeTable {
        RopeTable::scaled(10_000.0, 12, &[1.0, 1.25, 1.6, 2.1, 2.9, 4.0], 1.224_744_9)
    }

    #[test]
    fn hf_pairs_land_on_kiln_pairs() {
        let col = table().hf_column(16);
        // kiln pair j = (j, j + 8): HF's (j, j + 6) for j < 6, then the pass-through 12..16.
        assert_eq!(col, vec![0, 1, 2, 3, 4, 5, 12, 13, 6, 7, 8, 9, 10, 11, 14, 15]);
        let mut sorted = col.clone();
        sorted.sort();
        assert_eq!(sorted, (0..16).collect::<Vec<_>>(), "a permutation");
        let full = RopeTable::partial(10_000.0, 8).hf_column(8);
        assert_eq!(full, (0..8).collect::<Vec<_>>(), "full rotary keeps HF's order");
    }

    /// HF's inverse frequencies for the fixture (tests/fixtures/arch-tiny/phi3/reference.json).
    #[test]
    fn longrope_frequencies_match_hf() {
        let hf = [1.0, 0.172_354_76, 0.029_009_927, 0.004_761_905, 0.000_742_908_3, 0.000_116_039_74];
        for (k, h) in table().inv_freq.iter().zip(hf) {
            assert!((k - h).abs() <= 1e-6 * h, "{k} vs {h}");
        }
        assert_eq!(table().pair_freqs(16)[6..], [0.0, 0.0]);
    }

    /// Rotating the folded q and k (kiln pairing, factor folded) gives HF's q·k.
    #[test]
    fn folded_rotation_keeps_q_dot_k() {
        let (hd, t) = (16, table());
        let q: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.91).cos()).collect();
        let (pq, pk) = (5, 3);
        // HF: rotate_half within the first 12 dims, cos/sin times the factor.
        let hf_rot = |x: &[f32], p: i32| -> Vec<f32> {
            let rh = t.rotary_dim / 2;
            let mut y = x.to_vec();
            for i in 0..rh {
                let a = p as f32 * t.inv_freq[i];
                let (s, c) = (a.sin() * t.attn_factor, a.cos() * t.attn_factor);
                y[i] = x[i] * c - x[i + rh] * s;
                y[i + rh] = x[i + rh] * c + x[i] * s;
            }
            y
        };
        let kiln_rot = |x: &[f32], p: i32| -> Vec<f32> {
            let mut data = x.to_vec(); // one "head" of one-column rows
            t.fold_into_qkv(&mut data, 1, 1, 0, hd);
            let f = t.pair_freqs(hd);
            let mut y = data.clone();
            for j in 0..hd / 2 {
                let (s, c) = (p as f32 * f[j]).sin_cos();
                y[j] = data[j] * c - data[j + hd / 2] * s;
                y[j + hd / 2] = data[j + hd / 2] * c + data[j] * s;
            }
            y
        };
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let want = dot(&hf_rot(&q, pq), &hf_rot(&k, pk));
        let got = dot(&kiln_rot(&q, pq), &kiln_rot(&k, pk));
        assert!((want - got).abs() < 1e-5, "{want} vs {got}");
    }
}
