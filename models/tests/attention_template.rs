//! The attention template on the CPU against a dense f64 attention (docs/architecture.md, the
//! checks every kernel gets), for
//! every score modifier, block sizes 1 / 16 / 32, GQA ratios 1 / 3 / 8, decode batches,
//! whole and chunked prefills next to decodes, shuffled block tables and padding rows; and its
//! refusals of bad input.

use kiln_models::kernels::attention::{self, ScoreRef};
use kiln_models::kernels::attention_check::{max_rel, variants, Case, Problem};
use kiln_runtime::attention::{AttnPlan, PagedKv, SeqAttn};
use kiln_runtime::device::fused::Arg;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn run_cpu(p: &Problem, v: &kiln_models::kernels::attention_check::Variant) -> Vec<f32> {
    let dev = Device::Cpu;
    let (q, k, vp) = p.tensors(&dev, DType::F32).unwrap();
    let plan = p.plan().unwrap();
    let mut out = Tensor::from_f32(&dev, &vec![f32::NAN; q.len()], q.rows(), q.cols()).unwrap();
    let kv = PagedKv { k: &k, v: &vp, head_dim: p.case.head_dim, fp8: None };
    kiln_runtime::attention::run(&dev, v.def, &q, &kv, &plan, &v.args, &mut out).unwrap();
    out.to_host_f32().unwrap()
}

#[test]
fn every_modifier_equals_dense_attention() {
    let mixes: &[&[(usize, usize)]] = &[
        &[(1, 1)],                    // the first token
        &[(37, 37)],                  // a whole prefill
        &[(50, 1), (9, 1), (33, 1)],  // a decode batch
        &[(70, 13), (5, 5), (40, 1)], // a chunked prefill next to decodes
    ];
    let mut seed = 0;
    for bs in [1, 16, 32] {
        for (nh, nkv) in [(3, 3), (9, 3), (8, 1)] {
            for (mi, mix) in mixes.iter().enumerate() {
                seed += 1;
                let case = Case {
                    block_size: bs,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: 16,
                    seqs: mix.to_vec(),
                    pad_tokens: mi % 2,
                };
                let p = Problem::random(case, DType::F32, &mut StdRng::seed_from_u64(seed));
                let scale = 0.25;
                for v in variants(nh, scale) {
                    let got = run_cpu(&p, &v);
                    let want = p.reference(v.reference, scale as f64);
                    let (err, nonfinite) = max_rel(&got, &want);
                    assert!(
                        !nonfinite && err < 1e-5,
                        "{} bs={bs} nh={nh} nkv={nkv} mix={mix:?}: max_rel {err:e}",
                        v.name
                    );
                }
            }
        }
    }
}

/// A window of 0 masks every key: the output is zeros, not NaN.
#[test]
fn a_fully_masked_query_gets_zeros() {
    let case = Case { block_size: 4, n_heads: 2, n_kv_heads: 1, head_dim: 8, seqs: vec![(9, 3)], pad_tokens: 0 };
    let p = Problem::random(case, DType::F32, &mut StdRng::seed_from_u64(5));
    let v = kiln_models::kernels::attention_check::Variant {
        name: "window 0",
        def: &attention::attn_sliding_window::DEF,
        args: vec![Arg::F32(0.3), Arg::I32(0)],
        reference: ScoreRef::SlidingWindow { window: 0 },
    };
    assert!(run_cpu(&p, &v).iter().all(|&x| x == 0.0));
}

#[test]
fn bad_input_is_refused() {
    let dev = Device::Cpu;
    let table = [0u32, 1];
    let q = Tensor::from_f32(&dev, &[0.5; 32], 2, 16).unwrap();
    let pool = Tensor::from_f32(&dev, &[0.5; 4 * 16], 4, 16).unwrap();
    let kv = PagedKv { k: &pool, v: &pool, head_dim: 16, fp8: None };
    let mut out = Tensor::zeros(&dev, DType::F32, 2, 16).unwrap();
    // Plans: a table too short for its context, a block outside the pool, a gap in the rows.
    assert!(AttnPlan::new(&[SeqAttn { q_start: 0, q_len: 2, ctx_len: 5, block_table: &table }], 2, 1, 2, 2, 2).is_err());
    assert!(AttnPlan::new(&[SeqAttn { q_start: 0, q_len: 1, ctx_len: 1, block_table: &[7] }], 2, 1, 1, 2, 2).is_err());
    assert!(AttnPlan::new(&[SeqAttn { q_start: 1, q_len: 1, ctx_len: 2, block_table: &table }], 2, 1, 2, 2, 2).is_err());
    let plan =
        AttnPlan::new(&[SeqAttn { q_start: 0, q_len: 2, ctx_len: 3, block_table: &table }], 2, 1, 2, 2, 2).unwrap();
    let run = |q: &Tensor, kv: &PagedKv<'_>, args: &[Arg<'_>], out: &mut Tensor| {
        kiln_runtime::attention::run(&dev, &attention::attn_causal::DEF, q, kv, &plan, args, out)
    };
    assert!(run(&q, &kv, &[Arg::F32(0.25)], &mut out).is_ok());
    // Wrong comptime arguments, a head dim that does not divide, an output of another shape.
    assert!(run(&q, &kv, &[], &mut out).is_err());
    assert!(run(&q, &kv, &[Arg::I32(1)], &mut out).is_err());
    assert!(run(&q, &PagedKv { head_dim: 5, ..kv }, &[Arg::F32(0.25)], &mut out).is_err());
    let mut small = Tensor::zeros(&dev, DType::F32, 1, 16).unwrap();
    assert!(run(&q, &kv, &[Arg::F32(0.25)], &mut small).is_err());
    // Halves are GPU-only; an output sharing the pool's storage is refused.
    let qh = Tensor::from_f32_as(&dev, DType::BF16, &[0.5; 32], 2, 16).unwrap();
    let mut oh = Tensor::zeros(&dev, DType::BF16, 2, 16).unwrap();
    assert!(run(&qh, &kv, &[Arg::F32(0.25)], &mut oh).is_err());
    let mut aliased = pool.view_rows(0, 2).unwrap();
    assert!(run(&q, &kv, &[Arg::F32(0.25)], &mut aliased).is_err());
}

/// FP8 pools (e4m3 bytes and a K and V scale) give exactly the attention over the values the
/// bytes stand for, on every score modifier and batch mix.
#[test]
fn fp8_pools_equal_attention_over_their_values() {
    let dev = Device::Cpu;
    let scale = kiln_runtime::attention::KvScale { k: 1.0 / 448.0, v: 0.03 };
    let mut seed = 100;
    for (nh, nkv) in [(4, 4), (8, 2)] {
        for mix in [vec![(1, 1), (40, 1)], vec![(33, 33)], vec![(70, 13), (5, 1)]] {
            seed += 1;
            let case = Case { block_size: 16, n_heads: nh, n_kv_heads: nkv, head_dim: 16, seqs: mix, pad_tokens: 1 };
            let p = Problem::random(case, DType::F32, &mut StdRng::seed_from_u64(seed));
            let (bytes, values) = p.to_fp8(scale);
            let [q, k, vp] = p.fp8_tensors(&dev, DType::F32, &bytes).unwrap();
            let kv = PagedKv { k: &k, v: &vp, head_dim: 16, fp8: Some(scale) };
            for v in variants(nh, 0.25) {
                let mut out = Tensor::from_f32(&dev, &vec![f32::NAN; q.len()], q.rows(), q.cols()).unwrap();
                kiln_runtime::attention::run(&dev, v.def, &q, &kv, &p.plan().unwrap(), &v.args, &mut out).unwrap();
                assert_eq!(out.to_host_f32().unwrap(), run_cpu(&values, &v), "{} {nh}/{nkv}", v.name);
            }
            // The quantization is coarse but not wild: within e4m3's half step of the values.
            let worst = p.k_pool.iter().zip(&values.k_pool).map(|(a, b)| ((a - b) / a).abs()).fold(0f32, f32::max);
            assert!(worst <= 1.0 / 16.0 + 1e-6, "K rounded by {worst}");
        }
    }
    // A scale that is not positive and finite is refused.
    let p = Problem::random(
        Case { block_size: 16, n_heads: 2, n_kv_heads: 1, head_dim: 16, seqs: vec![(3, 3)], pad_tokens: 0 },
        DType::F32,
        &mut StdRng::seed_from_u64(7),
    );
    let (bytes, _) = p.to_fp8(scale);
    let [q, k, vp] = p.fp8_tensors(&dev, DType::F32, &bytes).unwrap();
    let bad = kiln_runtime::attention::KvScale { k: 0.0, v: 1.0 };
    let kv = PagedKv { k: &k, v: &vp, head_dim: 16, fp8: Some(bad) };
    let v = &variants(2, 0.25)[0];
    let mut out = Tensor::from_f32(&dev, &vec![0.0; q.len()], q.rows(), q.cols()).unwrap();
    assert!(kiln_runtime::attention::run(&dev, v.def, &q, &kv, &p.plan().unwrap(), &v.args, &mut out).is_err());
}

/// A query head's output is the same bits whether its KV head is shared by a group (the CPU
/// path reads each K / V row once for the group) or is its own: a GQA problem against the same
/// problem with each KV head copied out for every query head of its group.
#[test]
fn a_heads_output_does_not_depend_on_its_group() {
    for (mi, mix) in [vec![(60, 1), (7, 1), (130, 1)], vec![(70, 13), (5, 5)]].into_iter().enumerate() {
        let (nh, nkv, hd) = (9, 3, 16);
        let case = Case { block_size: 16, n_heads: nh, n_kv_heads: nkv, head_dim: hd, seqs: mix, pad_tokens: 1 };
        let gqa = Problem::random(case, DType::F32, &mut StdRng::seed_from_u64(200 + mi as u64));
        let widen = |pool: &[f32]| -> Vec<f32> {
            pool.chunks(nkv * hd)
                .flat_map(|row| (0..nh).flat_map(move |h| row[(h / (nh / nkv)) * hd..][..hd].iter().copied()))
                .collect()
        };
        let mut mha = gqa.clone();
        mha.case.n_kv_heads = nh;
        (mha.k_pool, mha.v_pool) = (widen(&gqa.k_pool), widen(&gqa.v_pool));
        for v in variants(nh, 0.25) {
            assert_eq!(run_cpu(&gqa, &v), run_cpu(&mha, &v), "{} mix {mi}", v.name);
        }
    }
}
