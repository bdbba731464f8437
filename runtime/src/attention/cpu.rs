//! The attention template on the CPU, in f32: per (sequence, query head) — run in parallel —
//! each chunk of query rows is scored against its causal keys, the score modifier runs over
//! those rows through the codegen CPU backend (skipped when it is the identity), then a
//! numerically stable softmax and the weighted sum of values. The causal mask is applied after
//! the modifier, so a modifier never un-masks a future key. With a key window (the kernel's
//! `window` parameter) only the keys inside some row's window are scored, and each row's keys
//! before its own window are masked like future ones. FP8 KV pools (e4m3 bytes) are widened
//! once per (sequence, KV head), each byte to its exact value times the layer's scale, and the
//! group's query heads run over the widened rows.

use super::plan::AttnPlan;
use super::{AttnError, Bound, PagedKv};
use crate::device::fused::Arg;
use crate::device::gemm_cpu::dot1;
use crate::device::quant::fp8_lt::e4m3_value;
use crate::device::tensor::HostView;
use crate::DType;
use crate::Tensor;
use kiln_codegen::attention::def::AttnDef;
use kiln_codegen::cpu::{CpuIn, CpuKernel, CpuOutArg, CpuParam, CpuScalar};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Query rows scored together (one modifier call).
const CHUNK: usize = 16;

/// The planned modifier of a specialisation, keyed like the GPU module cache by the address of
/// the spec's CUDA source.
fn planned_mod(def: &'static AttnDef, b: &Bound<'_>) -> Result<Arc<CpuKernel>, AttnError> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<CpuKernel>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = def.spec(b.kernel.dtype).map_or(0, |(_, s)| s.cuda.as_ptr() as usize);
    if let Some(k) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(k.clone());
    }
    let k =
        Arc::new(CpuKernel::new(&b.kernel.score_mod).map_err(|source| AttnError::Cpu { kernel: def.name, source })?);
    Ok(cache.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(k).clone())
}

fn scalar(a: &Arg<'_>) -> CpuScalar {
    match a {
        Arg::F32(x) => CpuScalar::F32(*x),
        Arg::I32(x) => CpuScalar::I32(*x),
        Arg::Bool(x) => CpuScalar::Bool(*x),
        Arg::Tensor(_) => CpuScalar::F32(0.0), // refused by `bind`
    }
}

/// What every (sequence, query head) task of one call shares.
struct Shared<'a> {
    def: &'static AttnDef,
    b: &'a Bound<'a>,
    plan: &'a AttnPlan,
    modifier: Option<Arc<CpuKernel>>,
    comptimes: Vec<CpuScalar>,
}

pub(super) fn run(
    def: &'static AttnDef,
    b: &Bound<'_>,
    q: &Tensor,
    kv: &PagedKv<'_>,
    plan: &AttnPlan,
    comptimes: &[Arg<'_>],
    out: &mut Tensor,
) -> Result<(), AttnError> {
    let pool_dtype = if kv.fp8.is_some() { DType::I32 } else { DType::F32 };
    for (what, t, want) in [("q", q, DType::F32), ("the K pool", kv.k, pool_dtype), ("the V pool", kv.v, pool_dtype)] {
        if t.dtype() != want {
            return Err(AttnError::Arg {
                kernel: def.name,
                what: format!("the CPU path runs in f32; {what} is {}", t.dtype()),
            });
        }
    }
    if out.dtype() != DType::F32 {
        return Err(AttnError::Arg {
            kernel: def.name,
            what: format!("the CPU path runs in f32; out is {}", out.dtype()),
        });
    }
    let modifier = if b.kernel.mod_is_identity() { None } else { Some(planned_mod(def, b)?) };
    let sh = Shared { def, b, plan, modifier, comptimes: comptimes.iter().map(scalar).collect() };
    let (hd, group, bs) = (b.head_dim, b.n_heads / b.n_kv_heads, plan.block_size);
    let tasks: Vec<(usize, usize)> = (0..plan.seqs.len()).flat_map(|i| (0..b.n_heads).map(move |h| (i, h))).collect();
    let slot = |i: usize, t: usize| plan.block(i, t) * bs + t % bs;
    let results: Vec<Result<Vec<f32>, AttnError>> = q.with_host::<f32, _>(|qv| match kv.fp8 {
        None => kv.k.with_host::<f32, _>(|kp| {
            kv.v.with_host::<f32, _>(|vp| {
                tasks
                    .par_iter()
                    .map(|&(i, h)| {
                        let kvh = h / group;
                        let key = |t: usize| &kp.row(slot(i, t))[kvh * hd..(kvh + 1) * hd];
                        let val = |t: usize| &vp.row(slot(i, t))[kvh * hd..(kvh + 1) * hd];
                        attend_head(&sh, i, h, &qv, &key, &val)
                    })
                    .collect()
            })
        }),
        Some(scale) => kv.k.with_host::<i32, _>(|kp| {
            kv.v.with_host::<i32, _>(|vp| {
                // One task per (sequence, KV head): its keys and values widened from e4m3 once,
                // then every query head of the group over them (in `tasks`' order).
                let groups: Vec<(usize, usize)> =
                    (0..plan.seqs.len()).flat_map(|i| (0..b.n_kv_heads).map(move |g| (i, g))).collect();
                let per_group: Vec<Vec<Result<Vec<f32>, AttnError>>> = groups
                    .par_iter()
                    .map(|&(i, kvh)| {
                        let ctx = plan.seqs[i].ctx_len;
                        let widen = |pool: &HostView<'_, i32>, s: f32| -> Vec<f32> {
                            let mut rows = Vec::with_capacity(ctx * hd);
                            for t in 0..ctx {
                                let bytes: &[u8] = bytemuck::cast_slice(pool.row(slot(i, t)));
                                rows.extend(bytes[kvh * hd..(kvh + 1) * hd].iter().map(|&x| e4m3_value(x) * s));
                            }
                            rows
                        };
                        let (kr, vr) = (widen(&kp, scale.k), widen(&vp, scale.v));
                        let key = |t: usize| &kr[t * hd..(t + 1) * hd];
                        let val = |t: usize| &vr[t * hd..(t + 1) * hd];
                        (kvh * group..(kvh + 1) * group).map(|h| attend_head(&sh, i, h, &qv, &key, &val)).collect()
                    })
                    .collect();
                per_group.into_iter().flatten().collect()
            })
        }),
    })???;
    let results: Vec<Vec<f32>> = results.into_iter().collect::<Result<_, _>>()?;
    // Padding rows (past the sequences) are zeros, as on the GPU.
    out.with_host_mut::<f32, _>(|mut ov| {
        let covered = plan.seqs.last().map_or(0, |s| s.q_start + s.q_len);
        for r in covered..ov.rows {
            ov.row_mut(r).fill(0.0);
        }
        for (&(i, h), res) in tasks.iter().zip(&results) {
            let seq = plan.seqs[i];
            for j in 0..seq.q_len {
                ov.row_mut(seq.q_start + j)[h * hd..(h + 1) * hd].copy_from_slice(&res[j * hd..(j + 1) * hd]);
            }
        }
    })?;
    Ok(())
}

/// Query head `h` of sequence `i` over its keys (`key(t)`, `val(t)`: the head's K and V rows
/// of the sequence's token `t`): the head's output rows, `q_len × head_dim`.
fn attend_head<'k>(
    sh: &Shared<'_>,
    i: usize,
    h: usize,
    qv: &HostView<'_, f32>,
    key: &dyn Fn(usize) -> &'k [f32],
    val: &dyn Fn(usize) -> &'k [f32],
) -> Result<Vec<f32>, AttnError> {
    let (b, def) = (sh.b, sh.def);
    let hd = b.head_dim;
    let seq = sh.plan.seqs[i];
    let mut res = vec![0f32; seq.q_len * hd];
    let first = seq.ctx_len - seq.q_len; // position of query row 0
    let mut scores = vec![];
    let mut modded = vec![];
    // The first key a query at `pos` sees: 0, or the start of its window.
    let row_lo = |pos: usize| b.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    for c0 in (0..seq.q_len).step_by(CHUNK) {
        let rows = CHUNK.min(seq.q_len - c0);
        // Keys `lo .. end`: from the chunk's first row's first key to its
        // last row's last (scores are indexed from `lo`).
        let (lo, end) = (row_lo(first + c0), first + c0 + rows);
        let width = end - lo;
        scores.clear();
        scores.resize(rows * width, 0f32);
        for r in 0..rows {
            let qrow = &qv.row(seq.q_start + c0 + r)[h * hd..(h + 1) * hd];
            for t in lo..end {
                // 16 partial sums in a fixed order (the CPU GEMM's dot): a
                // sequential sum was a chain of dependent adds, ~10% of a
                // 55-token prefill.
                scores[r * width + t - lo] = dot1(qrow, key(t)) * b.scale;
            }
        }
        let s: &mut [f32] = match &sh.modifier {
            None => &mut scores,
            Some(m) => {
                modded.clear();
                modded.resize(rows * width, 0f32);
                let q_pos: Vec<i32> = (0..rows).map(|r| (first + c0 + r) as i32).collect();
                let k_pos: Vec<i32> = (lo as i32..end as i32).collect();
                let head = vec![h as i32; rows];
                let mut params = vec![
                    CpuParam::Row { data: CpuIn::F32(&scores), row_stride: width },
                    CpuParam::PerRow(CpuIn::I32(&q_pos)),
                    CpuParam::Bcast(CpuIn::I32(&k_pos)),
                    CpuParam::PerRow(CpuIn::I32(&head)),
                ];
                params.extend(sh.comptimes.iter().map(|&c| CpuParam::Comptime(c)));
                m.run(&params, &mut [CpuOutArg::row(&mut modded[..], width)], rows, width)
                    .map_err(|source| AttnError::Cpu { kernel: def.name, source })?;
                &mut modded
            }
        };
        for r in 0..rows {
            // Causal and windowed: keys `first_key ..= last`, at `- lo` in the row.
            let last = first + c0 + r;
            let first_key = row_lo(last);
            let row = &mut s[r * width..(r + 1) * width];
            let seen = first_key - lo..=last - lo;
            let mut max = f32::NEG_INFINITY;
            for x in row[last + 1 - lo..].iter_mut() {
                *x = f32::NEG_INFINITY;
            }
            for &x in row[seen.clone()].iter() {
                max = max.max(x);
            }
            if max == f32::NEG_INFINITY {
                continue; // every key masked: zeros
            }
            let mut denom = 0f32;
            for x in row[seen.clone()].iter_mut() {
                *x = (*x - max).exp();
                denom += *x;
            }
            let o = &mut res[(c0 + r) * hd..(c0 + r + 1) * hd];
            for (i, &p) in row[seen].iter().enumerate() {
                if p == 0.0 {
                    continue;
                }
                let w = p / denom;
                for (acc, &x) in o.iter_mut().zip(val(first_key + i)) {
                    *acc += w * x;
                }
            }
        }
    }
    Ok(res)
}
