//! The attention template on the CPU, in f32: per (sequence, KV head) — run in parallel, each
//! K and V row read once for the group's query heads — each chunk of query rows is scored
//! against its causal keys, the score modifier runs over
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
use std::ops::Range;
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

/// What every (sequence, KV head) task of one call shares.
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
    // Each sequence's pool row of every token, resolved once per call (not per head and key).
    let slots: Vec<Vec<usize>> = plan
        .seqs
        .iter()
        .enumerate()
        .map(|(i, seq)| (0..seq.ctx_len).map(|t| plan.block(i, t) * bs + t % bs).collect())
        .collect();
    let slot = |i: usize, t: usize| slots[i][t];
    type Outcome = (Vec<Task>, Vec<Result<Vec<Vec<f32>>, AttnError>>);
    let (tasks, results): Outcome = q.with_host::<f32, _>(|qv| match kv.fp8 {
        None => kv.k.with_host::<f32, _>(|kp| {
            kv.v.with_host::<f32, _>(|vp| {
                let tasks = f32_tasks(plan, b, group);
                let results = tasks
                    .par_iter()
                    .map(|task| {
                        let (i, kvh) = (task.i, task.kvh);
                        let key = |t: usize| &kp.row(slot(i, t))[kvh * hd..(kvh + 1) * hd];
                        let val = |t: usize| &vp.row(slot(i, t))[kvh * hd..(kvh + 1) * hd];
                        attend(Job { sh: &sh, task, qv: &qv, key, val })
                    })
                    .collect();
                (tasks, results)
            })
        }),
        Some(scale) => kv.k.with_host::<i32, _>(|kp| {
            kv.v.with_host::<i32, _>(|vp| {
                // One task per (sequence, KV head): its keys and values widened from e4m3 once.
                let tasks: Vec<Task> = (0..plan.seqs.len())
                    .flat_map(|i| (0..b.n_kv_heads).map(move |kvh| Task::group(i, kvh, group, 0..plan.seqs[i].q_len)))
                    .collect();
                let results = tasks
                    .par_iter()
                    .map(|task| {
                        let (i, kvh) = (task.i, task.kvh);
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
                        attend(Job { sh: &sh, task, qv: &qv, key, val })
                    })
                    .collect();
                (tasks, results)
            })
        }),
    })???;
    let results: Vec<Vec<Vec<f32>>> = results.into_iter().collect::<Result<_, _>>()?;
    // Padding rows (past the sequences) are zeros, as on the GPU.
    out.with_host_mut::<f32, _>(|mut ov| {
        let covered = plan.seqs.last().map_or(0, |s| s.q_start + s.q_len);
        for r in covered..ov.rows {
            ov.row_mut(r).fill(0.0);
        }
        for (task, res) in tasks.iter().zip(&results) {
            let q_start = plan.seqs[task.i].q_start;
            for (h, res) in task.heads.clone().zip(res) {
                for (n, j) in task.rows.clone().enumerate() {
                    ov.row_mut(q_start + j)[h * hd..(h + 1) * hd].copy_from_slice(&res[n * hd..(n + 1) * hd]);
                }
            }
        }
    })?;
    Ok(())
}

/// One unit of the parallel loop: query heads `heads` (within KV head `kvh`'s group) of
/// sequence `i`, its query rows `rows`.
struct Task {
    i: usize,
    kvh: usize,
    heads: Range<usize>,
    rows: Range<usize>,
}

impl Task {
    /// All `group` query heads of KV head `kvh`.
    fn group(i: usize, kvh: usize, group: usize, rows: Range<usize>) -> Task {
        Task { i, kvh, heads: kvh * group..(kvh + 1) * group, rows }
    }
}

/// The tasks of an f32 pool: a whole KV group per chunk of query rows (each K / V row read
/// once for the group's heads) where that gives the pool's threads enough tasks to share out
/// evenly (prefills, decode batches); else one task per query head (a decode step of one or
/// two sequences: a few groups on two threads would leave one idle part of the time).
fn f32_tasks(plan: &AttnPlan, b: &Bound<'_>, group: usize) -> Vec<Task> {
    let chunks: usize = plan.seqs.iter().map(|s| s.q_len.div_ceil(CHUNK)).sum();
    if chunks * b.n_kv_heads >= 4 * rayon::current_num_threads() {
        let mut grouped = Vec::with_capacity(chunks * b.n_kv_heads);
        for (i, seq) in plan.seqs.iter().enumerate() {
            for kvh in 0..b.n_kv_heads {
                for c0 in (0..seq.q_len).step_by(CHUNK) {
                    let rows = c0..(c0 + CHUNK).min(seq.q_len);
                    grouped.push(Task::group(i, kvh, group, rows));
                }
            }
        }
        return grouped;
    }
    (0..plan.seqs.len())
        .flat_map(|i| {
            (0..b.n_heads).map(move |h| Task { i, kvh: h / group, heads: h..h + 1, rows: 0..plan.seqs[i].q_len })
        })
        .collect()
}

/// One task with what it reads: the call's shared parts, the query rows, and its KV head's K
/// and V rows of the sequence's token `t` (`key(t)`, `val(t)`).
struct Job<'a, 'k, K: Fn(usize) -> &'k [f32], V: Fn(usize) -> &'k [f32]> {
    sh: &'a Shared<'a>,
    task: &'a Task,
    qv: &'a HostView<'a, f32>,
    key: K,
    val: V,
}

/// A task's query heads over their keys (each K and V row read once for all the task's heads):
/// each head's output rows (`rows.len() × head_dim`), in `heads` order. Per head and row the
/// operations and their order are the same whatever the task's heads and rows, so the output
/// does not depend on the split.
fn attend<'k>(
    job: Job<'_, 'k, impl Fn(usize) -> &'k [f32], impl Fn(usize) -> &'k [f32]>,
) -> Result<Vec<Vec<f32>>, AttnError> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { attend_avx2(job) };
        }
    }
    attend_generic(job)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2<'k>(
    job: Job<'_, 'k, impl Fn(usize) -> &'k [f32], impl Fn(usize) -> &'k [f32]>,
) -> Result<Vec<Vec<f32>>, AttnError> {
    // The same code, compiled with 256-bit vectors (no contraction into FMAs: the same bits).
    attend_generic(job)
}

#[inline(always)]
fn attend_generic<'k>(
    job: Job<'_, 'k, impl Fn(usize) -> &'k [f32], impl Fn(usize) -> &'k [f32]>,
) -> Result<Vec<Vec<f32>>, AttnError> {
    let Job { sh, task, qv, key, val } = job;
    let (b, def) = (sh.b, sh.def);
    let hd = b.head_dim;
    let seq = sh.plan.seqs[task.i];
    let heads = task.heads.clone();
    let nh = heads.len();
    let row0 = task.rows.start;
    let mut res = vec![vec![0f32; task.rows.len() * hd]; nh];
    let first = seq.ctx_len - seq.q_len; // position of query row 0
    let mut scores = vec![];
    let mut modded = vec![];
    // Per (head, row): the softmax denominator, `None` where every key is masked.
    let mut denoms: Vec<Option<f32>> = vec![];
    // The first key a query at `pos` sees: 0, or the start of its window.
    let row_lo = |pos: usize| b.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    for c0 in task.rows.clone().step_by(CHUNK) {
        let rows = CHUNK.min(task.rows.end - c0);
        // Keys `lo .. end`: from the chunk's first row's first key to its
        // last row's last (scores are indexed from `lo`).
        let (lo, end) = (row_lo(first + c0), first + c0 + rows);
        let width = end - lo;
        let per_head = rows * width;
        scores.clear();
        scores.resize(nh * per_head, 0f32);
        for t in lo..end {
            let k = key(t);
            for (g, h) in heads.clone().enumerate() {
                for r in 0..rows {
                    let qrow = &qv.row(seq.q_start + c0 + r)[h * hd..(h + 1) * hd];
                    // 16 partial sums in a fixed order (the CPU GEMM's dot): a
                    // sequential sum was a chain of dependent adds, ~10% of a
                    // 55-token prefill.
                    scores[g * per_head + r * width + t - lo] = dot1(qrow, k) * b.scale;
                }
            }
        }
        let s: &mut [f32] = match &sh.modifier {
            None => &mut scores,
            Some(m) => {
                modded.clear();
                modded.resize(nh * per_head, 0f32);
                let q_pos: Vec<i32> = (0..rows).map(|r| (first + c0 + r) as i32).collect();
                let k_pos: Vec<i32> = (lo as i32..end as i32).collect();
                for (g, h) in heads.clone().enumerate() {
                    let head = vec![h as i32; rows];
                    let span = g * per_head..(g + 1) * per_head;
                    let mut params = vec![
                        CpuParam::Row { data: CpuIn::F32(&scores[span.clone()]), row_stride: width },
                        CpuParam::PerRow(CpuIn::I32(&q_pos)),
                        CpuParam::Bcast(CpuIn::I32(&k_pos)),
                        CpuParam::PerRow(CpuIn::I32(&head)),
                    ];
                    params.extend(sh.comptimes.iter().map(|&c| CpuParam::Comptime(c)));
                    m.run(&params, &mut [CpuOutArg::row(&mut modded[span], width)], rows, width)
                        .map_err(|source| AttnError::Cpu { kernel: def.name, source })?;
                }
                &mut modded
            }
        };
        // Each head's rows: masked, then exponentiated in place (the weights' numerators).
        denoms.clear();
        for g in 0..nh {
            for r in 0..rows {
                // Causal and windowed: keys `first_key ..= last`, at `- lo` in the row.
                let last = first + c0 + r;
                let first_key = row_lo(last);
                let row = &mut s[g * per_head + r * width..g * per_head + (r + 1) * width];
                let seen = first_key - lo..=last - lo;
                let mut max = f32::NEG_INFINITY;
                for x in row[last + 1 - lo..].iter_mut() {
                    *x = f32::NEG_INFINITY;
                }
                for &x in row[seen.clone()].iter() {
                    max = max.max(x);
                }
                if max == f32::NEG_INFINITY {
                    denoms.push(None); // every key masked: zeros
                    continue;
                }
                let mut denom = 0f32;
                for x in row[seen].iter_mut() {
                    *x = (*x - max).exp();
                    denom += *x;
                }
                denoms.push(Some(denom));
            }
        }
        // The weighted sum of values, each value row read once for the group's heads.
        for r in 0..rows {
            let last = first + c0 + r;
            let first_key = row_lo(last);
            for (n, t) in (first_key..=last).enumerate() {
                let v = val(t);
                for (g, out) in res.iter_mut().enumerate() {
                    let Some(denom) = denoms[g * rows + r] else { continue };
                    let p = s[g * per_head + r * width + first_key - lo + n];
                    if p == 0.0 {
                        continue;
                    }
                    let w = p / denom;
                    for (acc, &x) in out[(c0 - row0 + r) * hd..(c0 - row0 + r + 1) * hd].iter_mut().zip(v) {
                        *acc += w * x;
                    }
                }
            }
        }
    }
    Ok(res)
}
