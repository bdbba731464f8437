//! The attention template on a GPU, checked and timed (`kiln-check-attention`): every
//! instance × storage dtype × head layout × batch mix, GPU against the dense f64 reference of
//! the same rounded inputs, with poisoned outputs, padding rows that must come back zero, and
//! one, seven and the default splits, and the tensor-core kernel where the plan routes there; then the decode kernel's read bandwidth on
//! long contexts, next to a device-to-device copy of the same bytes in the same run.

use super::attention_check::{max_rel, variants, Case, Problem, Variant};
use crate::model::ModelError;
use kiln_runtime::attention::{run, KvScale, PagedKv};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::fmt::Write;

pub struct CheckRow {
    pub what: String,
    pub max_rel: f64,
    pub pass: bool,
    pub error: Option<String>,
}

/// `max_rel` bound of an output dtype: one rounding of the result for halves.
fn tolerance(d: DType) -> f64 {
    if d == DType::F32 {
        1e-4
    } else {
        1e-2
    }
}

/// Head layouts: SmolLM2 (9/3, 64), Llama-3-8B (32/8, 128), Phi-2-like (8/2, 80), Phi-3 (MHA,
/// 8/8, 96), MHA (8/8, 128), group 8 (16/2, 64) and group 10 (40/4, 128: two head chunks per
/// KV head). `(query heads, KV heads, head dim)`; `--quick` runs the first seven (every head dim).
pub const LAYOUTS: [(usize, usize, usize); 10] = [
    (9, 3, 64),
    (32, 8, 128),
    (4, 1, 256),
    (4, 2, 32),
    (4, 1, 16),
    (8, 2, 80),
    (8, 8, 96),
    (8, 8, 128),
    (16, 2, 64),
    (40, 4, 128),
];

/// A batch mix: its name, `(context, new tokens)` per sequence, padding rows.
type Mix = (&'static str, Vec<(usize, usize)>, usize);

fn mixes() -> Vec<Mix> {
    vec![
        ("decode", vec![(1, 1), (17, 1), (300, 1), (1000, 1), (129, 1)], 2),
        ("prefill", vec![(77, 77)], 0),
        ("chunked+decode", vec![(500, 40), (64, 1), (5, 5)], 1),
    ]
}

/// How a case's plan is set up: a fixed number of splits, the default split, or the
/// tensor-core kernel (half dtypes; the split kernel otherwise).
#[derive(Clone, Copy, Debug)]
pub enum Route {
    Splits(usize),
    Default,
    TensorCores,
}

/// The routes every case is checked along.
const ROUTES: [Route; 4] = [Route::Splits(1), Route::Splits(7), Route::Default, Route::TensorCores];

/// The FP8 pools' scales in the check: the problem's values (|x| < 1) reach 448 in K, and V
/// keeps a margin (values never reach the largest e4m3).
pub const FP8_SCALE: KvScale = KvScale { k: 1.0 / 448.0, v: 1.0 / 300.0 };

/// One case on `gpu` along every route: each route's `max_rel`. The reference and the
/// device inputs are made once for all routes. With `fp8`, the pools are e4m3 bytes and the
/// reference is attention over the values they stand for.
fn one(
    gpu: &Device,
    dtype: DType,
    p: &Problem,
    v: &super::attention_check::Variant,
    fp8: Option<KvScale>,
) -> Vec<(Route, Result<f64, ModelError>)> {
    let c = &p.case;
    let scale = match v.args.first() {
        Some(kiln_runtime::device::fused::Arg::F32(s)) => *s as f64,
        _ => 1.0,
    };
    let (want, tensors) = match fp8 {
        None => (p.reference(v.reference, scale), p.tensors(gpu, dtype).map(|(q, k, v)| [q, k, v])),
        Some(s) => {
            let (bytes, values) = p.to_fp8(s);
            (values.reference(v.reference, scale), p.fp8_tensors(gpu, dtype, &bytes))
        }
    };
    let route = |route: Route| -> Result<f64, ModelError> {
        let [q, k, vp] = tensors.as_ref().map_err(|e| ModelError::Batch(e.to_string()))?;
        let kv = PagedKv { k, v: vp, head_dim: c.head_dim, fp8 };
        let mut plan = p.plan()?;
        match route {
            Route::Splits(n) => plan.set_splits(n),
            Route::Default => plan.split_default(),
            Route::TensorCores => {
                plan.split_default();
                plan.prepare_mma(c.n_heads / c.n_kv_heads);
            }
        }
        plan.upload(gpu, c.n_heads, c.head_dim)?;
        let mut out = Tensor::from_f32_as(gpu, dtype, &vec![f32::NAN; q.len()], q.rows(), q.cols())?;
        run(gpu, v.def, q, &kv, &plan, &v.args, &mut out)?;
        gpu.synchronize().map_err(|e| ModelError::Load(e.to_string()))?;
        let (err, nonfinite) = max_rel(&out.to_host_f32()?, &want);
        if nonfinite {
            return Err(ModelError::Batch(format!("non-finite output with {route:?} ({} splits)", plan.n_splits())));
        }
        Ok(err)
    };
    ROUTES.iter().map(|&r| (r, route(r))).collect()
}

/// The instances also checked over FP8 pools.
const FP8_VARIANTS: [&str; 2] = ["attn_causal", "attn_sliding_window"];

/// Every correctness case; `quick` keeps bf16 and the first seven layouts; `fp8_only` only
/// the cases over FP8 pools.
pub fn check_all(gpu: &Device, quick: bool, fp8_only: bool, seed: u64) -> Vec<CheckRow> {
    // The CPU as the device (a self-test) runs f32 only: its path has no halves.
    let dtypes: &[DType] = match (gpu.is_cpu(), quick) {
        (true, _) => &[DType::F32],
        (false, true) => &[DType::BF16],
        (false, false) => &[DType::BF16, DType::F16, DType::F32],
    };
    let layouts = if quick { &LAYOUTS[..7] } else { &LAYOUTS[..] };
    let mut rows = vec![];
    let mut n = 0;
    for &dtype in dtypes {
        for &(nh, nkv, hd) in layouts {
            for (mname, mix, pad) in mixes() {
                for bs in [16, 32] {
                    n += 1;
                    let case = Case {
                        block_size: bs,
                        n_heads: nh,
                        n_kv_heads: nkv,
                        head_dim: hd,
                        seqs: mix.clone(),
                        pad_tokens: pad,
                    };
                    let p = Problem::random(case, dtype, &mut StdRng::seed_from_u64(seed + n));
                    // FP8 pools where the GPU has them (f16 / bf16 queries), with the plain and
                    // the windowed instance (the score modifier does not meet the pool type;
                    // each instance and head dim is one more NVRTC module to compile).
                    let fp8_too = |v: &Variant| dtype.is_half() && FP8_VARIANTS.contains(&v.name);
                    let pools = |v: &Variant| if fp8_too(v) { vec![None, Some(FP8_SCALE)] } else { vec![None] };
                    let all = variants(nh, 1.0 / (hd as f32).sqrt());
                    let only = |fp8: &Option<KvScale>| !fp8_only || fp8.is_some();
                    for (v, fp8) in all.iter().flat_map(|v| pools(v).into_iter().filter(only).map(move |f| (v, f))) {
                        let kv = if fp8.is_some() { " fp8-kv" } else { "" };
                        for (route, r) in one(gpu, dtype, &p, v, fp8) {
                            let what =
                                format!("{} {dtype}{kv} heads {nh}/{nkv}×{hd} {mname} block {bs} {route:?}", v.name);
                            let row = match r {
                                Ok(err) => CheckRow { what, max_rel: err, pass: err <= tolerance(dtype), error: None },
                                Err(e) => CheckRow { what, max_rel: f64::NAN, pass: false, error: Some(e.to_string()) },
                            };
                            if !row.pass {
                                // Failures as they happen (the table comes at the end).
                                eprintln!(
                                    "FAIL {}: {:.2e} {}",
                                    row.what,
                                    row.max_rel,
                                    row.error.as_deref().unwrap_or("")
                                );
                            }
                            rows.push(row);
                        }
                    }
                }
            }
        }
    }
    rows
}

pub struct SpeedRow {
    pub what: String,
    pub splits: usize,
    pub median_us: f64,
    pub kv_bytes: usize,
}

impl SpeedRow {
    pub fn gbps(&self) -> f64 {
        self.kv_bytes as f64 / (self.median_us * 1e-6) / 1e9
    }
}

/// One decode-attention timing case: `seqs` sequences of `ctx` keys (one query each), heads
/// 32 / 8 × `head_dim`, the default split or `splits`, an optional key window, FP8 or bf16 pools.
#[derive(Clone, Copy, Debug)]
pub struct DecodeShape {
    pub seqs: usize,
    pub ctx: usize,
    pub splits: Option<usize>,
    pub window: Option<usize>,
    pub fp8: bool,
    pub head_dim: usize,
}

/// Decode attention (one query token per sequence) of `shape` (Llama-3-8B's heads with head dim
/// 128), block 16: median time of the split (+ combine) kernels.
/// With `window`, the sliding-window instance: only the window's keys count as bytes read.
/// With `fp8`, FP8 (e4m3) pools: a byte a value.
pub fn decode_speed(gpu: &Device, shape: &DecodeShape, reps: usize) -> Result<SpeedRow, ModelError> {
    let DecodeShape { seqs, ctx, splits, window, fp8, head_dim: hd } = *shape;
    let b = gpu.cuda_backend().ok_or_else(|| ModelError::Unsupported("decode_speed needs a GPU".into()))?;
    let (nh, nkv, bs) = (32, 8, 16);
    let case =
        Case { block_size: bs, n_heads: nh, n_kv_heads: nkv, head_dim: hd, seqs: vec![(ctx, 1); seqs], pad_tokens: 0 };
    let p = Problem::random(case, DType::BF16, &mut StdRng::seed_from_u64(99));
    let fp8 = fp8.then_some(FP8_SCALE);
    let [q, k, vp] = match fp8 {
        None => p.tensors(gpu, DType::BF16).map(|(q, k, v)| [q, k, v])?,
        Some(s) => p.fp8_tensors(gpu, DType::BF16, &p.to_fp8(s).0)?,
    };
    let kv = PagedKv { k: &k, v: &vp, head_dim: hd, fp8 };
    let mut plan = p.plan()?;
    match splits {
        Some(n) => plan.set_splits(n),
        None => plan.split_default(),
    }
    plan.upload(gpu, nh, hd)?;
    let mut out = Tensor::uninit(gpu, DType::BF16, q.rows(), q.cols())?;
    use kiln_runtime::device::fused::Arg;
    let scale = Arg::F32(1.0 / (hd as f32).sqrt());
    let (def, args) = match window {
        None => (&super::attention::attn_causal::DEF, vec![scale]),
        Some(w) => (&super::attention::attn_sliding_window::DEF, vec![scale, Arg::I32(w as i32)]),
    };
    let us = kiln_runtime::device::timing::median_us(b, 5, reps, |_| -> Result<(), ModelError> {
        run(gpu, def, &q, &kv, &plan, &args, &mut out)?;
        Ok(())
    })?;
    let keys = window.map_or(ctx, |w| w.min(ctx));
    let kv_bytes = 2 * seqs * keys * nkv * hd * if fp8.is_some() { 1 } else { 2 };
    let how = if splits.is_some() { "" } else { " (default split)" };
    let win = window.map_or(String::new(), |w| format!(", window {w}"));
    Ok(SpeedRow {
        what: format!(
            "decode {seqs} seqs × {ctx} ctx{win}, heads 32/8×{hd} bf16{}{how}",
            if fp8.is_some() { ", fp8 KV" } else { "" }
        ),
        splits: plan.n_splits(),
        median_us: us,
        kv_bytes,
    })
}

/// Median time of a device-to-device copy of `bytes` (counted read + written).
pub fn copy_speed(gpu: &Device, bytes: usize, reps: usize) -> Result<f64, ModelError> {
    let b = gpu.cuda_backend().ok_or_else(|| ModelError::Unsupported("copy_speed needs a GPU".into()))?;
    let n = bytes / 2;
    let src = Tensor::zeros(gpu, DType::BF16, 1, n)?;
    let mut dst = Tensor::zeros(gpu, DType::BF16, 1, n)?;
    let us = kiln_runtime::device::timing::median_us(b, 3, reps, |_| -> Result<(), ModelError> {
        dst.copy_from(&src)?;
        Ok(())
    })?;
    Ok(2.0 * (n * 2) as f64 / (us * 1e-6) / 1e9)
}

pub fn markdown(checks: &[CheckRow], speeds: &[SpeedRow], copy_gbps: Option<f64>) -> String {
    let mut s = String::new();
    let failed = checks.iter().filter(|r| !r.pass).count();
    let _ = writeln!(s, "### attention: GPU vs dense f64 reference ({} cases, {failed} failed)\n", checks.len());
    let _ = writeln!(s, "| case | max_rel | ok |\n|---|---|---|");
    for r in checks {
        let _ = writeln!(
            s,
            "| {} | {:.2e} | {} |",
            r.what,
            r.max_rel,
            if r.pass { "ok" } else { r.error.as_deref().unwrap_or("FAIL") }
        );
    }
    if !speeds.is_empty() {
        let _ = writeln!(s, "\n### attention decode speed (K+V bytes read once)\n");
        let _ = writeln!(s, "| case | splits | µs | GB/s | % of copy |\n|---|---|---|---|---|");
        for r in speeds {
            let pct = copy_gbps.map_or(String::from("-"), |c| format!("{:.0}%", 100.0 * r.gbps() / c));
            let _ = writeln!(s, "| {} | {} | {:.1} | {:.0} | {pct} |", r.what, r.splits, r.median_us, r.gbps());
        }
        if let Some(c) = copy_gbps {
            let _ = writeln!(s, "\ndevice-to-device copy in the same run: {c:.0} GB/s");
        }
    }
    s
}
