//! The runtime's utility kernels on the CPU (their GPU twins are checked by the GPU tools):
//! seeded fills are a pure function of (seed, index) and stay in range; the row argmax takes
//! the lowest index on ties and refuses the rows the sampler refuses.

use kiln_runtime::device::device_kernels::{argmax_rows, fill_uniform, fill_uniform_part, FillPart};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

#[test]
fn fill_uniform_is_seeded_and_in_range() {
    let dev = Device::Cpu;
    let fill = |dtype: DType, seed: u64| {
        let mut t = Tensor::zeros(&dev, dtype, 3, 1000).unwrap();
        fill_uniform(&mut t, seed, -0.5, 0.25).unwrap();
        t.to_host_f32().unwrap()
    };
    let a = fill(DType::F32, 7);
    assert_eq!(a, fill(DType::F32, 7), "same seed, same values");
    assert_ne!(a, fill(DType::F32, 8), "another seed, other values");
    assert!(a.iter().all(|&x| (-0.5..0.25).contains(&x)));
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    assert!((mean - -0.125).abs() < 0.02, "mean {mean} far from the interval's middle");
    // A half dtype holds the same values rounded.
    let b = fill(DType::BF16, 7);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(half::bf16::from_f32(*x).to_f32(), *y);
    }
    // Views that are not contiguous are refused.
    let t = Tensor::zeros(&dev, DType::F32, 4, 4).unwrap();
    assert!(fill_uniform(&mut t.view_cols(1, 2).unwrap(), 1, 0.0, 1.0).is_err());
}

#[test]
fn a_filled_part_is_the_same_part_of_the_whole_fill() {
    let dev = Device::Cpu;
    let mut whole = Tensor::zeros(&dev, DType::F32, 6, 10).unwrap();
    fill_uniform(&mut whole, 5, -1.0, 1.0).unwrap();
    let whole = whole.to_host_f32().unwrap();
    // Rows 2..5, columns 3..7.
    let mut part = Tensor::zeros(&dev, DType::F32, 3, 4).unwrap();
    fill_uniform_part(&mut part, 5, -1.0, 1.0, FillPart { full_cols: 10, row0: 2, col0: 3 }).unwrap();
    let want: Vec<f32> = (2..5).flat_map(|r| whole[r * 10 + 3..r * 10 + 7].to_vec()).collect();
    assert_eq!(part.to_host_f32().unwrap(), want);
    let e = fill_uniform_part(&mut part, 5, -1.0, 1.0, FillPart { full_cols: 6, row0: 0, col0: 3 });
    assert!(e.is_err(), "columns past the whole tensor's");
}

#[test]
fn argmax_takes_the_first_maximum_and_refuses_bad_rows() {
    let dev = Device::Cpu;
    let inf = f32::INFINITY;
    let rows: [&[f32]; 5] = [
        &[0.5, 2.0, -1.0, 2.0],     // tie: the lower index
        &[-inf, -inf, 3.0, -inf],   // -inf is a mask
        &[1.0, f32::NAN, 0.0, 2.0], // NaN: refused
        &[1.0, inf, 0.0, 2.0],      // +inf: refused
        &[-inf, -inf, -inf, -inf],  // nothing above -inf: refused
    ];
    let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    let x = Tensor::from_f32_as(&dev, DType::BF16, &data, 5, 4).unwrap();
    let mut out = Tensor::zeros(&dev, DType::I32, 1, 5).unwrap();
    argmax_rows(&x, &mut out).unwrap();
    assert_eq!(out.to_host::<i32>().unwrap(), vec![1, 2, -1, -1, -1]);
    let mut wrong = Tensor::zeros(&dev, DType::I32, 1, 4).unwrap();
    assert!(argmax_rows(&x, &mut wrong).is_err());
}
