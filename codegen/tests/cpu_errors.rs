//! The CPU backend rejects bad calls with a typed error naming the argument, before writing
//! anything, and never panics.

mod common;

use common::host::Host;
use common::kernels;
use common::runner::{run, OArg, PArg};
use kiln_codegen::cpu::{CpuError, CpuKernel, CpuScalar};
use kiln_codegen::ir::{DType, Kernel, RopeStyle, ValueId};
use kiln_codegen::passes::lower;

fn rms() -> Kernel {
    lower(kernels::rms_norm(DType::BF16)).unwrap()
}

fn good_params(width: usize, rows: usize) -> Vec<PArg> {
    vec![
        PArg::Row(Host::from_f32(DType::BF16, &vec![0.5; rows * width]), width),
        PArg::Bcast(Host::from_f32(DType::BF16, &vec![1.5; width])),
        PArg::Scalar(CpuScalar::F32(1e-5)),
    ]
}

fn out(width: usize, rows: usize) -> Vec<OArg> {
    vec![OArg::Row(Host::sentinel(DType::BF16, rows * width), width)]
}

fn untouched(o: &[OArg]) -> bool {
    o[0].host().to_f64().iter().all(|v| v.is_nan())
}

#[test]
fn good_call_runs() {
    let mut o = out(8, 2);
    run(&rms(), &good_params(8, 2), &mut o, 2, 8).unwrap();
    assert!(o[0].host().to_f64().iter().all(|&v| (v - 1.5).abs() < 0.02));
}

#[test]
fn unlowered_kernel_is_rejected() {
    let k = kernels::softmax(DType::F32);
    let e = CpuKernel::new(&k).unwrap_err();
    assert!(matches!(e, CpuError::NotLowered(_)), "{e:?}");
}

#[test]
fn wrong_argument_count_is_rejected() {
    let mut p = good_params(8, 2);
    p.pop();
    let mut o = out(8, 2);
    assert!(matches!(run(&rms(), &p, &mut o, 2, 8), Err(CpuError::ArgCount { params: (3, 2), outputs: (1, 1) })));
    assert!(untouched(&o));
}

#[test]
fn wrong_dtype_or_kind_names_the_param() {
    let mut p = good_params(8, 2);
    p[1] = PArg::Bcast(Host::F32(vec![1.0; 8]));
    let mut o = out(8, 2);
    match run(&rms(), &p, &mut o, 2, 8) {
        Err(CpuError::ParamKind { name, want, got }) => {
            assert_eq!(name, "w");
            assert!(want.contains("bcast<bf16>") && got.contains("bcast<f32>"), "{want} / {got}");
        }
        other => panic!("{other:?}"),
    }
    let mut p = good_params(8, 2);
    p[2] = PArg::Scalar(CpuScalar::I32(1));
    assert!(matches!(run(&rms(), &p, &mut o, 2, 8), Err(CpuError::ParamKind { name, .. }) if name == "eps"));
    let mut p = good_params(8, 2);
    p[1] = PArg::PerRow(Host::from_f32(DType::BF16, &[1.0, 1.0]));
    assert!(matches!(run(&rms(), &p, &mut o, 2, 8), Err(CpuError::ParamKind { name, .. }) if name == "w"));
    let mut o2 = vec![OArg::Row(Host::sentinel(DType::F16, 16), 8)];
    assert!(
        matches!(run(&rms(), &good_params(8, 2), &mut o2, 2, 8), Err(CpuError::ParamKind { name, .. }) if name == "y")
    );
    assert!(untouched(&o) && untouched(&o2));
}

#[test]
fn short_slices_and_bad_strides_are_rejected() {
    let mut o = out(8, 2);
    // row tensor one element short
    let mut p = good_params(8, 2);
    p[0] = PArg::Row(Host::from_f32(DType::BF16, &[0.5; 15]), 8);
    assert!(matches!(run(&rms(), &p, &mut o, 2, 8), Err(CpuError::Length { name, len: 15, .. }) if name == "x"));
    // stride smaller than the width
    let mut p = good_params(8, 2);
    p[0] = PArg::Row(Host::from_f32(DType::BF16, &[0.5; 16]), 7);
    assert!(
        matches!(run(&rms(), &p, &mut o, 2, 8), Err(CpuError::Stride { name, stride: 7, width: 8 }) if name == "x")
    );
    // bcast of the wrong length
    let mut p = good_params(8, 2);
    p[1] = PArg::Bcast(Host::from_f32(DType::BF16, &[1.0; 9]));
    assert!(matches!(run(&rms(), &p, &mut o, 2, 8), Err(CpuError::Length { name, len: 9, .. }) if name == "w"));
    // output too short for its stride
    let mut o_short = vec![OArg::Row(Host::sentinel(DType::BF16, 20), 13)];
    assert!(
        matches!(run(&rms(), &good_params(8, 2), &mut o_short, 2, 8), Err(CpuError::Length { name, .. }) if name == "y")
    );
    // a longer row view is fine: the last row needs only `width` elements
    let mut o_ok = vec![OArg::Row(Host::sentinel(DType::BF16, 21), 13)];
    run(&rms(), &good_params(8, 2), &mut o_ok, 2, 8).unwrap();
    assert!(untouched(&o));
}

#[test]
fn empty_problem_is_rejected() {
    let mut o = out(8, 2);
    assert!(matches!(run(&rms(), &good_params(8, 2), &mut o, 0, 8), Err(CpuError::Empty { rows: 0, width: 8 })));
    assert!(matches!(run(&rms(), &good_params(8, 2), &mut o, 2, 0), Err(CpuError::Empty { .. })));
}

#[test]
fn per_row_length_must_equal_rows() {
    let k = lower(kernels::logsumexp(DType::F32)).unwrap();
    let x = PArg::Row(Host::F32(vec![1.0; 12]), 4);
    let mut o = vec![OArg::PerRow(Host::sentinel(DType::F32, 3))];
    let r = run(&k, &[x, PArg::PerRow(Host::F32(vec![1.0; 2]))], &mut o, 3, 4);
    assert!(matches!(r, Err(CpuError::Length { name, len: 2, .. }) if name == "scale"));
}

#[test]
fn rope_head_dim_that_does_not_fit_the_row_is_an_error() {
    let k = lower(kernels::rope(DType::F32, RopeStyle::HalfSplit, false)).unwrap();
    for hd in [0, -4, 3, 6] {
        let params = [
            PArg::Row(Host::F32(vec![0.5; 8]), 8),
            PArg::PerRow(Host::I32(vec![3])),
            PArg::Scalar(CpuScalar::F32(10000.0)),
            PArg::Scalar(CpuScalar::I32(hd)),
        ];
        let mut o = vec![OArg::Row(Host::sentinel(DType::F32, 8), 8)];
        match run(&k, &params, &mut o, 1, 8) {
            Err(CpuError::RopeHeadDim { node, head_dim, width: 8 }) => {
                assert_eq!(head_dim, hd);
                assert!(matches!(k.node(node).op, kiln_codegen::ir::Op::Rope { .. }));
                let _ = ValueId(0);
            }
            other => panic!("head_dim {hd}: {other:?}"),
        }
    }
}
