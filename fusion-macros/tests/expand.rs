//! A `#[fused]` fn that uses every parameter and output kind expands to a module with every
//! promised item, and those items agree: the IR constants parse, `DEF` carries all three
//! specialisations, the CUDA names the entry points, and `cpu` and `run` (on the CPU device)
//! compute the fn's formula on random non-zero inputs.

use kiln_codegen::cpu::{CpuOutArg, CpuParam, CpuScalar};
use kiln_codegen::ir::{DType, Kernel, OutputKind, ParamKind};
use kiln_fusion_macros::fused;
use kiln_runtime::{Device, Tensor};

/// Scale-and-shift with every kind of parameter and output.
#[fused]
pub fn scale_shift(
    x: Row,
    w: Bcast<f32>,
    pos: PerRow<i32>,
    #[comptime] s: f32,
    #[comptime] n: i32,
    #[comptime] on: bool,
) -> (Row, Row<f32>, PerRow<f32>) {
    let y = select(on, x * s + w, x);
    let p = (pos + n) as f32;
    let m = max(y) + p;
    (y, -y * 2, m)
}

/// The formula, per row: `(y, -2y, max(y) + pos + n)`.
fn formula(x: &[f32], w: &[f32], pos: i32, s: f32, n: i32, on: bool) -> (Vec<f32>, Vec<f32>, f32) {
    let y: Vec<f32> = x.iter().zip(w).map(|(x, w)| if on { x * s + w } else { *x }).collect();
    let m = y.iter().cloned().fold(f32::NEG_INFINITY, f32::max) + (pos + n) as f32;
    (y.clone(), y.iter().map(|v| -2.0 * v).collect(), m)
}

fn inputs(rows: usize, width: usize) -> (Vec<f32>, Vec<f32>, Vec<i32>) {
    // Non-zero, distinct, exactly representable in f16 and bf16 (multiples of 1/8 below 16).
    let x = (0..rows * width).map(|i| ((i * 37 % 101) as f32 - 50.5) / 8.0).collect();
    let w = (0..width).map(|i| ((i * 13 % 29) as f32 + 1.0) / 4.0).collect();
    let pos = (0..rows as i32).map(|r| 3 * r + 1).collect();
    (x, w, pos)
}

#[test]
fn module_items_exist_and_agree() {
    assert_eq!(scale_shift::NAME, "scale_shift");
    assert!(scale_shift::SOURCE.contains("expand.rs:"), "{}", scale_shift::SOURCE);
    let def = &scale_shift::DEF;
    assert_eq!(def.name, "scale_shift");
    assert_eq!(def.specs.iter().map(|s| s.dtype).collect::<Vec<_>>(), DType::STORAGE);
    for (ir, cuda, dtype) in [
        (scale_shift::IR_F32, scale_shift::CUDA_F32, DType::F32),
        (scale_shift::IR_F16, scale_shift::CUDA_F16, DType::F16),
        (scale_shift::IR_BF16, scale_shift::CUDA_BF16, DType::BF16),
    ] {
        let k: Kernel = serde_json::from_str(ir).unwrap();
        assert_eq!(k.dtype, dtype);
        assert_eq!(
            k.params.iter().map(|p| p.kind).collect::<Vec<_>>(),
            [
                ParamKind::Row(dtype),
                ParamKind::Bcast(DType::F32),
                ParamKind::PerRow(DType::I32),
                ParamKind::Comptime(DType::F32),
                ParamKind::Comptime(DType::I32),
                ParamKind::Comptime(DType::Bool),
            ]
        );
        let outs: Vec<_> = k.outputs.iter().map(|o| (o.name.as_str(), o.kind)).collect();
        assert_eq!(
            outs,
            [
                ("y", OutputKind::Row(dtype)),
                ("out1", OutputKind::Row(DType::F32)),
                ("m", OutputKind::PerRow(DType::F32))
            ]
        );
        assert!(cuda.contains(&format!("scale_shift_{dtype}_v1")), "{dtype}: no scalar entry in the CUDA");
        let compiled = def.compiled(dtype).unwrap();
        assert_eq!(compiled.cuda, cuda, "{dtype}: embedded CUDA is not what codegen emits for the embedded IR");
    }
}

#[test]
fn cpu_entry_computes_the_formula() {
    let (rows, width) = (3, 19);
    let (x, w, pos) = inputs(rows, width);
    for on in [true, false] {
        let (mut y, mut y2, mut m) = (vec![f32::NAN; rows * width], vec![f32::NAN; rows * width], vec![f32::NAN; rows]);
        let params = [
            CpuParam::row(&x[..], width),
            CpuParam::bcast(&w[..]),
            CpuParam::per_row(&pos[..]),
            CpuParam::Comptime(CpuScalar::F32(0.5)),
            CpuParam::Comptime(CpuScalar::I32(7)),
            CpuParam::Comptime(CpuScalar::Bool(on)),
        ];
        let mut outs =
            [CpuOutArg::row(&mut y[..], width), CpuOutArg::row(&mut y2[..], width), CpuOutArg::per_row(&mut m[..])];
        scale_shift::cpu(DType::F32, &params, &mut outs, rows, width).unwrap();
        for r in 0..rows {
            let row = r * width..(r + 1) * width;
            let (wy, wy2, wm) = formula(&x[row.clone()], &w, pos[r], 0.5, 7, on);
            assert_eq!(&y[row.clone()], &wy[..]);
            assert_eq!(&y2[row], &wy2[..]);
            assert_eq!(m[r], wm);
        }
    }
}

#[test]
fn run_launches_on_the_cpu_device() {
    let dev = Device::Cpu;
    let (rows, width) = (2, 24);
    let (x, w, pos) = inputs(rows, width);
    for dtype in kiln_runtime::DType::FLOATS {
        let xt = Tensor::from_f32_as(&dev, dtype, &x, rows, width).unwrap();
        let wt = Tensor::vector(&dev, &w).unwrap();
        let pt = Tensor::vector(&dev, &pos).unwrap();
        let mut y = Tensor::zeros(&dev, dtype, rows, width).unwrap();
        let mut y2 = Tensor::zeros(&dev, kiln_runtime::DType::F32, rows, width).unwrap();
        let mut m = Tensor::zeros(&dev, kiln_runtime::DType::F32, rows, 1).unwrap();
        scale_shift::run(&dev, &xt, &wt, &pt, 0.25, -2, true, &mut y, &mut y2, &mut m).unwrap();
        let (y, y2, m) = (y.to_host_f32().unwrap(), y2.to_host_f32().unwrap(), m.to_host_f32().unwrap());
        for r in 0..rows {
            let row = r * width..(r + 1) * width;
            let (wy, wy2, wm) = formula(&x[row.clone()], &w, pos[r], 0.25, -2, true);
            // `y` is stored in the storage dtype (rounded the way the runtime rounds); the f32
            // outputs are computed from the unrounded f32 value, exactly as `formula` does.
            let wy = Tensor::from_f32_as(&dev, dtype, &wy, 1, width).unwrap().to_host_f32().unwrap();
            assert_eq!(&y[row.clone()], &wy[..], "{dtype}");
            assert_eq!(&y2[row], &wy2[..], "{dtype}");
            assert_eq!(m[r], wm, "{dtype}");
        }
    }
}
