//! `fused::launch` on the CPU device: results against naive references (dense, strided
//! column views, aliased outputs), specialisation choice by dtype, and every validation error
//! naming the kernel and the parameter. Kernels: the GPU check's built-in samples.

use half::bf16;
use kiln_codegen::fused::FusedDef;
use kiln_runtime::gpu_check::samples;
use kiln_runtime::DType;
use kiln_runtime::{launch, Arg, Device, FusedError, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn def(name: &str) -> &'static FusedDef {
    samples::all().unwrap().iter().copied().find(|d| d.name == name).unwrap()
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(0.1f32..1.0) * if rng.random::<bool>() { 1.0 } else { -1.0 }).collect()
}

fn t(data: &[f32], rows: usize, cols: usize) -> Tensor {
    Tensor::from_f32(&Device::Cpu, data, rows, cols).unwrap()
}

/// Naive add + RMS norm: (h, y).
fn add_rms_norm_ref(x: &[f32], r: &[f32], w: &[f32], rows: usize, width: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let h: Vec<f32> = x.iter().zip(r).map(|(a, b)| a + b).collect();
    let mut y = vec![0f32; rows * width];
    for i in 0..rows {
        let row = &h[i * width..(i + 1) * width];
        let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / width as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for j in 0..width {
            y[i * width + j] = (row[j] as f64 * inv * w[j] as f64) as f32;
        }
    }
    (h, y)
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn add_rms_norm_f32_matches_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    let (rows, width) = (5, 96);
    let (x, r, w) = (random(&mut rng, rows * width), random(&mut rng, rows * width), random(&mut rng, width));
    let (h_ref, y_ref) = add_rms_norm_ref(&x, &r, &w, rows, width, 1e-5);
    let (xt, rt, wt) = (t(&x, rows, width), t(&r, rows, width), t(&w, 1, width));
    let mut h = Tensor::zeros(&Device::Cpu, DType::F32, rows, width).unwrap();
    let mut y = Tensor::zeros(&Device::Cpu, DType::F32, rows, width).unwrap();
    let args = [Arg::Tensor(&xt), Arg::Tensor(&rt), Arg::Tensor(&wt), Arg::F32(1e-5)];
    launch(&Device::Cpu, def("add_rms_norm"), &args, &mut [&mut h, &mut y]).unwrap();
    assert_close(&h.to_host_f32().unwrap(), &h_ref, 1e-6, "h");
    assert_close(&y.to_host_f32().unwrap(), &y_ref, 1e-5, "y");
}

#[test]
fn bf16_tensors_pick_the_bf16_specialisation() {
    let mut rng = StdRng::seed_from_u64(2);
    let (rows, width) = (3, 64);
    let (g, u) = (random(&mut rng, rows * width), random(&mut rng, rows * width));
    let gt = Tensor::from_f32_as(&Device::Cpu, DType::BF16, &g, rows, width).unwrap();
    let ut = Tensor::from_f32_as(&Device::Cpu, DType::BF16, &u, rows, width).unwrap();
    let mut out = Tensor::zeros(&Device::Cpu, DType::BF16, rows, width).unwrap();
    launch(&Device::Cpu, def("silu_mul"), &[Arg::Tensor(&gt), Arg::Tensor(&ut)], &mut [&mut out]).unwrap();
    let (gq, uq) = (gt.to_host_f32().unwrap(), ut.to_host_f32().unwrap());
    let want: Vec<f32> = gq.iter().zip(&uq).map(|(g, u)| bf16::from_f32(g / (1.0 + (-g).exp()) * u).to_f32()).collect();
    assert_close(&out.to_host_f32().unwrap(), &want, 8e-3, "silu_mul bf16");
}

#[test]
fn strided_column_views_in_and_out() {
    // gate | up packed in one [rows, 2*width] buffer (a fused gate/up projection); the
    // result goes into the middle columns of a wider output.
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, width) = (4, 40);
    let packed = random(&mut rng, rows * 2 * width);
    let p = t(&packed, rows, 2 * width);
    let (gate, up) = (p.view_cols(0, width).unwrap(), p.view_cols(width, width).unwrap());
    let parent = Tensor::from_f32(&Device::Cpu, &vec![f32::NAN; rows * (width + 3)], rows, width + 3).unwrap();
    let mut out = parent.view_cols(2, width).unwrap();
    launch(&Device::Cpu, def("silu_mul"), &[Arg::Tensor(&gate), Arg::Tensor(&up)], &mut [&mut out]).unwrap();
    let got = parent.to_host_f32().unwrap();
    for i in 0..rows {
        for j in 0..width {
            let (g, u) = (packed[i * 2 * width + j], packed[i * 2 * width + width + j]);
            let want = g / (1.0 + (-g).exp()) * u;
            let v = got[i * (width + 3) + 2 + j];
            assert!((v - want).abs() < 1e-5 * (1.0 + want.abs()), "({i},{j}): {v} vs {want}");
        }
        for j in [0, 1, width + 2] {
            assert!(got[i * (width + 3) + j].is_nan(), "column {j} of row {i} was written");
        }
    }
}

#[test]
fn output_aliasing_an_input_gives_the_same_result() {
    let mut rng = StdRng::seed_from_u64(4);
    let (rows, width) = (6, 32);
    let (x, r, w) = (random(&mut rng, rows * width), random(&mut rng, rows * width), random(&mut rng, width));
    let (_, y_ref) = add_rms_norm_ref(&x, &r, &w, rows, width, 1e-5);
    // In place: h overwrites x, y overwrites residual.
    let (mut xt, mut rt, wt) = (t(&x, rows, width), t(&r, rows, width), t(&w, 1, width));
    let (xa, ra) = (xt.clone(), rt.clone());
    let args = [Arg::Tensor(&xa), Arg::Tensor(&ra), Arg::Tensor(&wt), Arg::F32(1e-5)];
    launch(&Device::Cpu, def("add_rms_norm"), &args, &mut [&mut xt, &mut rt]).unwrap();
    assert_close(&rt.to_host_f32().unwrap(), &y_ref, 1e-5, "y in place");
}

#[test]
fn rope_and_per_row_outputs_run() {
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, width) = (3, 128);
    let x = t(&random(&mut rng, rows * width), rows, width);
    let pos = Tensor::vector(&Device::Cpu, &[0i32, 7, 4095]).unwrap();
    let mut out = Tensor::zeros(&Device::Cpu, DType::F32, rows, width).unwrap();
    let args = [
        Arg::Tensor(&x),
        Arg::Tensor(&pos),
        Arg::F32(10000.0),
        Arg::I32(64),
        Arg::F32(8.0),
        Arg::F32(1.0),
        Arg::F32(4.0),
        Arg::F32(8192.0),
    ];
    launch(&Device::Cpu, def("rope_llama3"), &args, &mut [&mut out]).unwrap();
    // Position 0 is the identity.
    assert_close(
        &out.view_rows(0, 1).unwrap().to_host_f32().unwrap(),
        &x.view_rows(0, 1).unwrap().to_host_f32().unwrap(),
        1e-6,
        "pos 0",
    );

    let xs = random(&mut rng, rows * width);
    let mut lse = Tensor::zeros(&Device::Cpu, DType::F32, 1, rows).unwrap();
    launch(&Device::Cpu, def("logsumexp"), &[Arg::Tensor(&t(&xs, rows, width))], &mut [&mut lse]).unwrap();
    let want: Vec<f32> =
        xs.chunks(width).map(|r| r.iter().map(|v| (*v as f64).exp()).sum::<f64>().ln() as f32).collect();
    assert_close(&lse.to_host_f32().unwrap(), &want, 1e-5, "logsumexp");
}

fn err(def_name: &str, args: &[Arg<'_>], outs: &mut [&mut Tensor]) -> String {
    let e = launch(&Device::Cpu, def(def_name), args, outs).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(def_name), "error does not name the kernel: {msg}");
    println!("{msg}");
    msg
}

#[test]
fn validation_errors_name_kernel_and_parameter() {
    let (rows, width) = (2, 8);
    let x = t(&[0.5; 16], rows, width);
    let w = t(&[1.0; 8], 1, width);
    let mut h = Tensor::zeros(&Device::Cpu, DType::F32, rows, width).unwrap();
    let mut y = Tensor::zeros(&Device::Cpu, DType::F32, rows, width).unwrap();

    // Counts.
    let m = err("add_rms_norm", &[Arg::Tensor(&x)], &mut [&mut h, &mut y]);
    assert!(m.contains("4 arguments"), "{m}");
    let m = err("add_rms_norm", &[Arg::Tensor(&x), Arg::Tensor(&x), Arg::Tensor(&w), Arg::F32(1e-5)], &mut [&mut h]);
    assert!(m.contains("2 outputs"), "{m}");
    // Kinds: a scalar for a tensor, a tensor for a comptime, an i32 for an f32 comptime.
    let m =
        err("add_rms_norm", &[Arg::F32(1.0), Arg::Tensor(&x), Arg::Tensor(&w), Arg::F32(1e-5)], &mut [&mut h, &mut y]);
    assert!(m.contains("`x`"), "{m}");
    let m = err(
        "add_rms_norm",
        &[Arg::Tensor(&x), Arg::Tensor(&x), Arg::Tensor(&w), Arg::Tensor(&w)],
        &mut [&mut h, &mut y],
    );
    assert!(m.contains("`eps`"), "{m}");
    let m =
        err("add_rms_norm", &[Arg::Tensor(&x), Arg::Tensor(&x), Arg::Tensor(&w), Arg::I32(1)], &mut [&mut h, &mut y]);
    assert!(m.contains("`eps`"), "{m}");
    // Dtypes: a bf16 residual with f32 x.
    let xb = Tensor::from_f32_as(&Device::Cpu, DType::BF16, &[0.5; 16], rows, width).unwrap();
    let m = err(
        "add_rms_norm",
        &[Arg::Tensor(&x), Arg::Tensor(&xb), Arg::Tensor(&w), Arg::F32(1e-5)],
        &mut [&mut h, &mut y],
    );
    assert!(m.contains("`residual`") && m.contains("bf16"), "{m}");
    // Shapes: a Row of the wrong size, a Bcast of the wrong length, a PerRow of the wrong length.
    let x3 = t(&[0.5; 24], 3, width);
    let m = err(
        "add_rms_norm",
        &[Arg::Tensor(&x), Arg::Tensor(&x3), Arg::Tensor(&w), Arg::F32(1e-5)],
        &mut [&mut h, &mut y],
    );
    assert!(m.contains("`residual`") && m.contains("3x8"), "{m}");
    let w7 = t(&[1.0; 7], 1, 7);
    let m = err(
        "add_rms_norm",
        &[Arg::Tensor(&x), Arg::Tensor(&x), Arg::Tensor(&w7), Arg::F32(1e-5)],
        &mut [&mut h, &mut y],
    );
    assert!(m.contains("`w`") && m.contains("width"), "{m}");
    let mut y3 = Tensor::zeros(&Device::Cpu, DType::F32, 3, width).unwrap();
    let m = err(
        "add_rms_norm",
        &[Arg::Tensor(&x), Arg::Tensor(&x), Arg::Tensor(&w), Arg::F32(1e-5)],
        &mut [&mut h, &mut y3],
    );
    assert!(m.contains("`y`"), "{m}");
    let xr = t(&[0.5; 128], 2, 64);
    let pos = Tensor::vector(&Device::Cpu, &[1i32, 2, 3]).unwrap();
    let mut o = Tensor::zeros(&Device::Cpu, DType::F32, 2, 64).unwrap();
    let m = err(
        "rope_llama3",
        &[
            Arg::Tensor(&xr),
            Arg::Tensor(&pos),
            Arg::F32(1e4),
            Arg::I32(64),
            Arg::F32(8.0),
            Arg::F32(1.0),
            Arg::F32(4.0),
            Arg::F32(8192.0),
        ],
        &mut [&mut o],
    );
    assert!(m.contains("`pos`") && m.contains("rows"), "{m}");
    // A PerRow i32 tensor given as f32.
    let posf = t(&[1.0, 2.0], 1, 2);
    let m = err(
        "rope_llama3",
        &[
            Arg::Tensor(&xr),
            Arg::Tensor(&posf),
            Arg::F32(1e4),
            Arg::I32(64),
            Arg::F32(8.0),
            Arg::F32(1.0),
            Arg::F32(4.0),
            Arg::F32(8192.0),
        ],
        &mut [&mut o],
    );
    assert!(m.contains("`pos`") && m.contains("i32"), "{m}");
}

#[test]
fn errors_leave_outputs_untouched() {
    let x = t(&[0.5; 16], 2, 8);
    let w7 = t(&[1.0; 7], 1, 7);
    let mut h = Tensor::from_f32(&Device::Cpu, &[9.0; 16], 2, 8).unwrap();
    let mut y = Tensor::from_f32(&Device::Cpu, &[9.0; 16], 2, 8).unwrap();
    let r = launch(
        &Device::Cpu,
        def("add_rms_norm"),
        &[Arg::Tensor(&x), Arg::Tensor(&x), Arg::Tensor(&w7), Arg::F32(1e-5)],
        &mut [&mut h, &mut y],
    );
    assert!(matches!(r, Err(FusedError::Shape { .. })));
    assert!(h.to_host_f32().unwrap().iter().chain(&y.to_host_f32().unwrap()).all(|v| *v == 9.0));
}
