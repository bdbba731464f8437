//! Paged attention on the CPU equals a naive dense causal attention on random inputs, for
//! several block sizes, GQA ratios, chunked prefill and decode, with shuffled block tables.

use kiln_runtime::attention::{paged_attention, write_kv, AttnShape, SeqAttn};
use kiln_runtime::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Dense reference: q_all/k_all/v_all hold every token of one sequence (positions 0..ctx).
fn dense(q: &[f32], k: &[f32], v: &[f32], ctx: usize, q_len: usize, nh: usize, nkv: usize, hd: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; q_len * nh * hd];
    for j in 0..q_len {
        let pos = ctx - q_len + j;
        for h in 0..nh {
            let kvh = h * nkv / nh;
            let qv = &q[(j * nh + h) * hd..][..hd];
            let scores: Vec<f64> = (0..=pos)
                .map(|t| {
                    let kv = &k[(t * nkv + kvh) * hd..][..hd];
                    qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (0..=pos).map(|t| e[t] / z * v[(t * nkv + kvh) * hd + d] as f64).sum();
                out[(j * nh + h) * hd + d] = acc as f32;
            }
        }
    }
    out
}

fn run_case(block_size: usize, nh: usize, nkv: usize, seq_specs: &[(usize, usize)], seed: u64) {
    let dev = Device::Cpu;
    let hd = 16;
    let mut rng = StdRng::seed_from_u64(seed);
    let total_blocks: usize = seq_specs.iter().map(|(ctx, _)| ctx.div_ceil(block_size)).sum::<usize>() + 3;
    let mut free: Vec<u32> = (0..total_blocks as u32).collect();
    free.shuffle(&mut rng);
    let kvw = nkv * hd;
    let mut k_pool = Tensor::from_f32(&dev, &rand_vec(&mut rng, total_blocks * block_size * kvw), total_blocks * block_size, kvw).unwrap();
    let mut v_pool = Tensor::from_f32(&dev, &rand_vec(&mut rng, total_blocks * block_size * kvw), total_blocks * block_size, kvw).unwrap();
    let n_tokens: usize = seq_specs.iter().map(|(_, ql)| ql).sum();
    let mut q_all = vec![];
    let mut k_new = vec![];
    let mut v_new = vec![];
    let mut slots = vec![];
    let mut tables = vec![];
    let mut dense_inputs = vec![];
    for &(ctx, q_len) in seq_specs {
        let table: Vec<u32> = (0..ctx.div_ceil(block_size)).map(|_| free.pop().unwrap()).collect();
        // The cached prefix is written straight into the pools; the new tokens go through write_kv.
        let k_seq = rand_vec(&mut rng, ctx * kvw);
        let v_seq = rand_vec(&mut rng, ctx * kvw);
        let q_seq = rand_vec(&mut rng, q_len * nh * hd);
        let slot = |t: usize| table[t / block_size] as usize * block_size + t % block_size;
        k_pool.with_host_mut::<f32, _>(|mut p| {
            for t in 0..ctx - q_len {
                p.row_mut(slot(t)).copy_from_slice(&k_seq[t * kvw..][..kvw]);
            }
        }).unwrap();
        v_pool.with_host_mut::<f32, _>(|mut p| {
            for t in 0..ctx - q_len {
                p.row_mut(slot(t)).copy_from_slice(&v_seq[t * kvw..][..kvw]);
            }
        }).unwrap();
        for t in ctx - q_len..ctx {
            slots.push(slot(t) as u32);
            k_new.extend_from_slice(&k_seq[t * kvw..][..kvw]);
            v_new.extend_from_slice(&v_seq[t * kvw..][..kvw]);
        }
        q_all.extend_from_slice(&q_seq);
        dense_inputs.push((q_seq, k_seq, v_seq));
        tables.push(table);
    }
    let k = Tensor::from_f32(&dev, &k_new, n_tokens, kvw).unwrap();
    let v = Tensor::from_f32(&dev, &v_new, n_tokens, kvw).unwrap();
    write_kv(&k, &v, &slots, &mut k_pool, &mut v_pool).unwrap();
    let q = Tensor::from_f32(&dev, &q_all, n_tokens, nh * hd).unwrap();
    let mut out = Tensor::from_f32(&dev, &vec![f32::NAN; n_tokens * nh * hd], n_tokens, nh * hd).unwrap();
    let mut start = 0;
    let seqs: Vec<SeqAttn> = seq_specs
        .iter()
        .zip(&tables)
        .map(|(&(ctx, q_len), t)| {
            let s = SeqAttn { q_start: start, q_len, ctx_len: ctx, block_table: t };
            start += q_len;
            s
        })
        .collect();
    let scale = 1.0 / (hd as f32).sqrt();
    let shape = AttnShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd, block_size, scale };
    paged_attention(&q, &k_pool, &v_pool, &seqs, &shape, &mut out).unwrap();
    let got = out.to_host_f32().unwrap();
    let mut row = 0;
    for (&(ctx, q_len), (qs, ks, vs)) in seq_specs.iter().zip(&dense_inputs) {
        let want = dense(qs, ks, vs, ctx, q_len, nh, nkv, hd, scale);
        let g = &got[row * nh * hd..(row + q_len) * nh * hd];
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "bs={block_size} nh={nh} nkv={nkv}: {a} vs {b}");
        }
        row += q_len;
    }
}

#[test]
fn paged_equals_dense() {
    let mixes: &[&[(usize, usize)]] = &[
        &[(1, 1)],                       // first token
        &[(37, 37)],                     // whole prefill
        &[(50, 1), (9, 1), (33, 1)],     // decode batch
        &[(70, 13), (5, 5), (40, 1)],    // chunked prefill next to decode
    ];
    let mut seed = 0;
    for bs in [1, 16, 32] {
        for (nh, nkv) in [(3, 3), (9, 3), (8, 1)] {
            for mix in mixes {
                seed += 1;
                run_case(bs, nh, nkv, mix, seed);
            }
        }
    }
}

#[test]
fn rejects_bad_input() {
    let dev = Device::Cpu;
    let q = Tensor::from_f32(&dev, &[0.5; 32], 2, 16).unwrap();
    let kp = Tensor::from_f32(&dev, &[0.5; 64], 4, 16).unwrap();
    let vp = kp.deep_copy().unwrap();
    let mut out = Tensor::from_f32(&dev, &[0.0; 32], 2, 16).unwrap();
    let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 16, block_size: 2, scale: 0.25 };
    let table = [0u32, 1];
    // context longer than its blocks
    let bad = [SeqAttn { q_start: 0, q_len: 2, ctx_len: 5, block_table: &table }];
    assert!(paged_attention(&q, &kp, &vp, &bad, &shape, &mut out).is_err());
    // block outside the pool
    let table2 = [7u32];
    let bad = [SeqAttn { q_start: 0, q_len: 1, ctx_len: 1, block_table: &table2 }];
    assert!(paged_attention(&q, &kp, &vp, &bad, &shape, &mut out).is_err());
    // rows past the batch
    let bad = [SeqAttn { q_start: 1, q_len: 2, ctx_len: 2, block_table: &table }];
    assert!(paged_attention(&q, &kp, &vp, &bad, &shape, &mut out).is_err());
}
