//! CPU attention: f32, one pass per (sequence, query token, head) with a numerically stable
//! softmax; (sequence, head) pairs run in parallel. Inputs are validated by the caller.

use super::{AttnError, AttnShape, SeqAttn};
use crate::Tensor;
use rayon::prelude::*;

pub(super) fn write_kv(src: &Tensor, slots: &[u32], pool: &mut Tensor) -> Result<(), AttnError> {
    // `src` (a column view of the fused projection) and the pool are separate storages, so the
    // read and write locks nest; each row is copied once, straight into its slot.
    src.with_host::<f32, _>(|s| {
        pool.with_host_mut::<f32, _>(|mut p| {
            for (r, &slot) in slots.iter().enumerate() {
                p.row_mut(slot as usize).copy_from_slice(s.row(r));
            }
        })
    })??;
    Ok(())
}

pub(super) fn paged_attention(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    seqs: &[SeqAttn<'_>],
    s: &AttnShape,
    out: &mut Tensor,
) -> Result<(), AttnError> {
    let hd = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    // Each task computes one (sequence, head): its q_len output rows of head_dim.
    let tasks: Vec<(usize, usize)> = (0..seqs.len()).flat_map(|i| (0..s.n_heads).map(move |h| (i, h))).collect();
    let results: Vec<Vec<f32>> = q.with_host::<f32, _>(|qv| {
        k_pool.with_host::<f32, _>(|kv| {
            v_pool.with_host::<f32, _>(|vv| {
                tasks
                    .par_iter()
                    .map(|&(i, h)| {
                        let seq = &seqs[i];
                        let kvh = h / group;
                        let slot = |t: usize| seq.block_table[t / s.block_size] as usize * s.block_size + t % s.block_size;
                        let mut res = vec![0f32; seq.q_len * hd];
                        let mut scores = Vec::with_capacity(seq.ctx_len);
                        for j in 0..seq.q_len {
                            let qrow = &qv.row(seq.q_start + j)[h * hd..(h + 1) * hd];
                            let last = seq.ctx_len - seq.q_len + j; // causal: attend to 0..=last
                            scores.clear();
                            let mut max = f32::NEG_INFINITY;
                            for t in 0..=last {
                                let krow = &kv.row(slot(t))[kvh * hd..(kvh + 1) * hd];
                                let dot: f32 = qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f32>() * s.scale;
                                max = max.max(dot);
                                scores.push(dot);
                            }
                            let mut denom = 0f32;
                            for x in scores.iter_mut() {
                                *x = (*x - max).exp();
                                denom += *x;
                            }
                            let o = &mut res[j * hd..(j + 1) * hd];
                            for (t, &p) in scores.iter().enumerate() {
                                let vrow = &vv.row(slot(t))[kvh * hd..(kvh + 1) * hd];
                                let w = p / denom;
                                for (acc, &x) in o.iter_mut().zip(vrow) {
                                    *acc += w * x;
                                }
                            }
                        }
                        res
                    })
                    .collect()
            })
        })
    })???;
    out.with_host_mut::<f32, _>(|mut ov| {
        for (&(i, h), res) in tasks.iter().zip(&results) {
            let seq = &seqs[i];
            for j in 0..seq.q_len {
                ov.row_mut(seq.q_start + j)[h * hd..(h + 1) * hd].copy_from_slice(&res[j * hd..(j + 1) * hd]);
            }
        }
    })?;
    Ok(())
}
