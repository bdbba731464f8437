//! The MoE routing kernels (`kernels::moe_route`) on the CPU backend against `moe_route_ref`
//! (f64 softmax, a stable sort), for each storage dtype: random rows (expert ids equal, weights within 1e-5 relative for f32 and 2e-3 for
//! halves), rows with ties (the lower expert first), and a row of equal logits.

use half::{bf16, f16};
use kiln_codegen::cpu::{CpuIn, CpuOut, CpuOutArg, CpuParam, CpuScalar};
use kiln_codegen::ir::DType;
use kiln_models::kernels::moe_route::{moe_route_ref, moe_route_top2, moe_route_top8};
use kiln_runtime::device::fused::FusedError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type CpuFn = fn(DType, &[CpuParam<'_>], &mut [CpuOutArg<'_>], usize, usize) -> Result<(), FusedError>;

/// The kernel's choices for `rows` rows of `logits` (already rounded to `dtype`), per row.
fn route(f: CpuFn, k: usize, dtype: DType, logits: &[f32], width: usize, norm: bool) -> Vec<Vec<(usize, f32)>> {
    let rows = logits.len() / width;
    let (h16, b16): (Vec<f16>, Vec<bf16>) =
        (logits.iter().map(|&x| f16::from_f32(x)).collect(), logits.iter().map(|&x| bf16::from_f32(x)).collect());
    let input = match dtype {
        DType::F32 => CpuIn::F32(logits),
        DType::F16 => CpuIn::F16(&h16),
        _ => CpuIn::BF16(&b16),
    };
    let params = [CpuParam::row(input, width), CpuParam::Comptime(CpuScalar::Bool(norm))];
    let mut ids = vec![vec![-7i32; rows]; k];
    let mut weights = vec![vec![f32::NAN; rows]; k];
    let mut outs: Vec<CpuOutArg<'_>> = vec![];
    for (i, w) in ids.iter_mut().zip(weights.iter_mut()) {
        outs.push(CpuOutArg::per_row(CpuOut::I32(i)));
        outs.push(CpuOutArg::per_row(CpuOut::F32(w)));
    }
    f(dtype, &params, &mut outs, rows, width).unwrap();
    (0..rows).map(|r| (0..k).map(|j| (ids[j][r] as usize, weights[j][r])).collect()).collect()
}

fn rounded(dtype: DType, v: Vec<f32>) -> Vec<f32> {
    match dtype {
        DType::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
        DType::BF16 => v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
        _ => v,
    }
}

const KERNELS: [(CpuFn, usize); 2] = [(moe_route_top2::cpu, 2), (moe_route_top8::cpu, 8)];

#[test]
fn random_rows_pick_the_references_experts_and_weights() {
    let mut rng = StdRng::seed_from_u64(11);
    for (f, k) in KERNELS {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for width in [k, 9, 60, 128] {
                for norm in [true, false] {
                    let rows = 5;
                    let x = rounded(dtype, (0..rows * width).map(|_| rng.random_range(-4.0f32..4.0)).collect());
                    let got = route(f, k, dtype, &x, width, norm);
                    let tol = if dtype == DType::F32 { 1e-5 } else { 2e-3 };
                    for (r, got) in got.iter().enumerate() {
                        let row: Vec<f64> = x[r * width..][..width].iter().map(|&v| v as f64).collect();
                        let want = moe_route_ref(&row, k, norm);
                        let at = format!("top{k} {dtype} width {width} norm {norm} row {r}");
                        let ids: Vec<usize> = got.iter().map(|g| g.0).collect();
                        let want_ids: Vec<usize> = want.iter().map(|w| w.0).collect();
                        assert_eq!(ids, want_ids, "{at}");
                        for (g, w) in got.iter().zip(&want) {
                            assert!((g.1 as f64 - w.1).abs() <= tol * w.1.abs().max(1e-3), "{at}: {g:?} vs {w:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn ties_go_to_the_lower_expert() {
    for (f, k) in KERNELS {
        let width = 16;
        // Every logit equal: experts 0..k in order, each weight 1/k after normalising.
        let got = &route(f, k, DType::F32, &vec![0.5; width], width, true)[0];
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (0..k).collect::<Vec<_>>());
        assert!(got.iter().all(|g| (g.1 - 1.0 / k as f32).abs() < 1e-6), "{got:?}");
        // Pairs of equal logits, the larger pairs at the higher columns.
        let x: Vec<f32> = (0..width).map(|c| (c / 2) as f32).collect();
        let got = &route(f, k, DType::F32, &x, width, false)[0];
        let want: Vec<usize> = (0..k).map(|j| width - 2 - 2 * (j / 2) + j % 2).collect();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want);
    }
}

#[test]
fn infinite_logits_still_give_distinct_experts() {
    // A -inf logit has probability 0; it is chosen only after every finite one, in order.
    let mut x = vec![f32::NEG_INFINITY; 8];
    x[5] = 1.0;
    let got = &route(moe_route_top2::cpu, 2, DType::F32, &x, 8, true)[0];
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![5, 0]);
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![1.0, 0.0]);
}
