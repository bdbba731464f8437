//! Random paged-attention problems and their dense f64 answers: what the CPU tests (CI) and
//! the GPU check (`kiln-check-kernels`) hold the attention template to.
//!
//! A [`Problem`] is a batch of sequences (context length, new tokens) over shuffled block
//! tables in pools with spare blocks, plus optional padding tokens; every cache row of every
//! context is filled (the cached prefix and the new tokens alike), values uniform in ±[0.1, 1)
//! and rounded to the storage dtype once, so every backend reads exactly the same numbers.

use super::attention::{self, attention_ref, ScoreRef};
use crate::model::ModelError;
use kiln_codegen::attention::def::AttnDef;
use kiln_runtime::attention::{AttnPlan, KvScale, SeqAttn};
use kiln_runtime::device::fused::Arg;
use kiln_runtime::device::quant::fp8_lt::f32_to_e4m3;
use kiln_runtime::device::quant::w8::W8Elem;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// The shape of a problem.
#[derive(Clone, Debug)]
pub struct Case {
    pub block_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `(context length, new tokens)` per sequence.
    pub seqs: Vec<(usize, usize)>,
    /// Query rows past the sequences (their outputs must be zeros).
    pub pad_tokens: usize,
}

#[derive(Clone)]
pub struct Problem {
    pub case: Case,
    /// `[tokens, n_heads * head_dim]`.
    pub q: Vec<f32>,
    /// `[slots, n_kv_heads * head_dim]` each.
    pub k_pool: Vec<f32>,
    pub v_pool: Vec<f32>,
    pub pool_blocks: usize,
    pub tables: Vec<Vec<u32>>,
}

fn value(rng: &mut StdRng) -> f32 {
    let m: f32 = rng.random_range(0.1..1.0);
    if rng.random::<bool>() {
        m
    } else {
        -m
    }
}

/// `x` rounded to `dtype` (and back to f32).
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

impl Problem {
    pub fn random(case: Case, dtype: DType, rng: &mut StdRng) -> Problem {
        let bs = case.block_size;
        let pool_blocks = case.seqs.iter().map(|(ctx, _)| ctx.div_ceil(bs)).sum::<usize>() + 3;
        let mut free: Vec<u32> = (0..pool_blocks as u32).collect();
        free.shuffle(rng);
        let kvw = case.n_kv_heads * case.head_dim;
        let slots = pool_blocks * bs;
        let mut gen = |n: usize| (0..n).map(|_| round_to(dtype, value(rng))).collect::<Vec<f32>>();
        let k_pool = gen(slots * kvw);
        let v_pool = gen(slots * kvw);
        let tokens: usize = case.seqs.iter().map(|(_, q)| q).sum::<usize>() + case.pad_tokens;
        let q = gen(tokens * case.n_heads * case.head_dim);
        let tables =
            case.seqs.iter().map(|(ctx, _)| (0..ctx.div_ceil(bs)).map(|_| free.pop().unwrap_or(0)).collect()).collect();
        Problem { case, q, k_pool, v_pool, pool_blocks, tables }
    }

    pub fn tokens(&self) -> usize {
        self.q.len() / (self.case.n_heads * self.case.head_dim)
    }

    pub fn seq_attn(&self) -> Vec<SeqAttn<'_>> {
        let mut start = 0;
        self.case
            .seqs
            .iter()
            .zip(&self.tables)
            .map(|(&(ctx, q_len), t)| {
                let s = SeqAttn { q_start: start, q_len, ctx_len: ctx, block_table: t };
                start += q_len;
                s
            })
            .collect()
    }

    /// The plan over this problem (one split).
    pub fn plan(&self) -> Result<AttnPlan, ModelError> {
        let seqs = self.seq_attn();
        let bt = self.tables.iter().map(|t| t.len()).max().unwrap_or(1).max(1);
        Ok(AttnPlan::new(&seqs, self.tokens(), seqs.len(), bt, self.case.block_size, self.pool_blocks)?)
    }

    /// `(q, k_pool, v_pool)` on `dev` in `dtype`.
    pub fn tensors(&self, dev: &Device, dtype: DType) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let c = &self.case;
        let kvw = c.n_kv_heads * c.head_dim;
        let slots = self.pool_blocks * c.block_size;
        Ok((
            Tensor::from_f32_as(dev, dtype, &self.q, self.tokens(), c.n_heads * c.head_dim)?,
            Tensor::from_f32_as(dev, dtype, &self.k_pool, slots, kvw)?,
            Tensor::from_f32_as(dev, dtype, &self.v_pool, slots, kvw)?,
        ))
    }

    /// The pools as an FP8 cache with `scale` (`e4m3(x / scale)`, the KV store's rounding):
    /// the bytes, four to an `i32` as the pools hold them, and the problem whose pools are the
    /// values those bytes stand for (what attention over them must equal).
    pub fn to_fp8(&self, scale: KvScale) -> ([Vec<i32>; 2], Problem) {
        let quantize = |pool: &[f32], s: f32| -> (Vec<i32>, Vec<f32>) {
            let bytes: Vec<u8> = pool.iter().map(|&x| f32_to_e4m3(x / s)).collect();
            let values = bytes.iter().map(|&b| W8Elem::Fp8E4M3.value(b) * s).collect();
            (bytes.chunks(4).map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect(), values)
        };
        let (kb, kv) = quantize(&self.k_pool, scale.k);
        let (vb, vv) = quantize(&self.v_pool, scale.v);
        ([kb, vb], Problem { k_pool: kv, v_pool: vv, ..self.clone() })
    }

    /// `(q in dtype, K pool bytes, V pool bytes)` on `dev`: [`Problem::to_fp8`]'s bytes.
    pub fn fp8_tensors(&self, dev: &Device, dtype: DType, bytes: &[Vec<i32>; 2]) -> Result<[Tensor; 3], ModelError> {
        let c = &self.case;
        let (slots, words) = (self.pool_blocks * c.block_size, c.n_kv_heads * c.head_dim / 4);
        let pool = |b: &[i32]| -> Result<Tensor, ModelError> {
            let t = Tensor::vector(dev, b)?;
            Ok(t.reshape(slots, words)?)
        };
        Ok([
            Tensor::from_f32_as(dev, dtype, &self.q, self.tokens(), c.n_heads * c.head_dim)?,
            pool(&bytes[0])?,
            pool(&bytes[1])?,
        ])
    }

    /// The dense f64 answer, `[tokens, n_heads * head_dim]` (padding rows zeros).
    pub fn reference(&self, m: ScoreRef, scale: f64) -> Vec<f64> {
        let c = &self.case;
        let (hd, kvw) = (c.head_dim, c.n_kv_heads * c.head_dim);
        let group = c.n_heads / c.n_kv_heads;
        let mut out = vec![0.0; self.q.len()];
        let mut row = 0;
        for (&(ctx, q_len), table) in c.seqs.iter().zip(&self.tables) {
            let slot = |t: usize| table[t / c.block_size] as usize * c.block_size + t % c.block_size;
            for h in 0..c.n_heads {
                let kvh = h / group;
                let pick = |pool: &[f32], t: usize| -> Vec<f64> {
                    pool[slot(t) * kvw + kvh * hd..][..hd].iter().map(|&x| x as f64).collect()
                };
                let keys: Vec<Vec<f64>> = (0..ctx).map(|t| pick(&self.k_pool, t)).collect();
                let values: Vec<Vec<f64>> = (0..ctx).map(|t| pick(&self.v_pool, t)).collect();
                for j in 0..q_len {
                    let r = row + j;
                    let qv: Vec<f64> = self.q[(r * c.n_heads + h) * hd..][..hd].iter().map(|&x| x as f64).collect();
                    let o = attention_ref(m, &qv, &keys, &values, ctx - q_len + j, h, scale);
                    out[(r * c.n_heads + h) * hd..][..hd].copy_from_slice(&o);
                }
            }
            row += q_len;
        }
        out
    }
}

/// One instance of the template with the arguments it is checked with.
pub struct Variant {
    pub name: &'static str,
    pub def: &'static AttnDef,
    pub args: Vec<Arg<'static>>,
    pub reference: ScoreRef,
}

/// Every attention instance of the crate for `n_heads` query heads and this scale: causal, a
/// window of 7 positions, a softcap of 0.5 (below the scores' range, so it bites) and ALiBi.
pub fn variants(n_heads: usize, scale: f32) -> Vec<Variant> {
    vec![
        Variant {
            name: "attn_causal",
            def: &attention::attn_causal::DEF,
            args: vec![Arg::F32(scale)],
            reference: ScoreRef::Causal,
        },
        Variant {
            name: "attn_sliding_window",
            def: &attention::attn_sliding_window::DEF,
            args: vec![Arg::F32(scale), Arg::I32(7)],
            reference: ScoreRef::SlidingWindow { window: 7 },
        },
        Variant {
            name: "attn_softcap",
            def: &attention::attn_softcap::DEF,
            args: vec![Arg::F32(scale), Arg::F32(0.5)],
            reference: ScoreRef::Softcap { cap: 0.5 },
        },
        Variant {
            name: "attn_softcap_window",
            def: &attention::attn_softcap_window::DEF,
            args: vec![Arg::F32(scale), Arg::F32(0.5), Arg::I32(7)],
            reference: ScoreRef::SoftcapWindow { cap: 0.5, window: 7 },
        },
        Variant {
            name: "attn_alibi",
            def: &attention::attn_alibi::DEF,
            args: vec![Arg::F32(scale), Arg::I32(n_heads as i32)],
            reference: ScoreRef::Alibi { n_heads },
        },
    ]
}

/// `max |got - want| / max(max |want|, 1e-3)` (the GPU check's `max_rel`), and whether any
/// value is not finite.
pub fn max_rel(got: &[f32], want: &[f64]) -> (f64, bool) {
    let mut err = 0f64;
    let mut scale = 0f64;
    let mut bad = false;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            bad = true;
        }
        err = err.max((g as f64 - w).abs());
        scale = scale.max(w.abs());
    }
    (err / scale.max(1e-3), bad)
}
