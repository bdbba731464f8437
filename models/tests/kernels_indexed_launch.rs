//! Gathered and scattered rows through the runtime's `launch` (shape binding, aliasing rules),
//! on the CPU device: the embedding lookup and the KV-cache write as the model calls them.

use kiln_models::kernels::{gather, rope};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

#[test]
fn gather_rows_reads_the_named_rows_of_a_larger_table() {
    let dev = Device::Cpu;
    let table: Vec<f32> = (0..5 * 4).map(|i| i as f32).collect();
    let table = Tensor::from_f32(&dev, &table, 5, 4).unwrap();
    let ids = Tensor::vector(&dev, &[4i32, 0, 4]).unwrap();
    let mut out = Tensor::zeros(&dev, DType::F32, 3, 4).unwrap();
    gather::gather_rows::run(&dev, &table, &ids, &mut out).unwrap();
    let got = out.to_host::<f32>().unwrap();
    assert_eq!(got, [16.0, 17.0, 18.0, 19.0, 0.0, 1.0, 2.0, 3.0, 16.0, 17.0, 18.0, 19.0]);
    // The number of ids, not the table, sets the rows; a wrong-width table is refused.
    let narrow = Tensor::zeros(&dev, DType::F32, 5, 3).unwrap();
    assert!(gather::gather_rows::run(&dev, &narrow, &ids, &mut out).is_err());
    let bad_ids = Tensor::vector(&dev, &[5i32, 0, 1]).unwrap();
    assert!(gather::gather_rows::run(&dev, &table, &bad_ids, &mut out).is_err());
}

#[test]
fn rope_kv_write_fills_only_the_slots_it_is_given() {
    let dev = Device::Cpu;
    let (tokens, width, slots) = (2, 8, 6);
    let k = Tensor::from_f32(&dev, &[0.5; 16], tokens, width).unwrap();
    let v = Tensor::from_f32(&dev, &(0..16).map(|i| i as f32).collect::<Vec<_>>(), tokens, width).unwrap();
    let pos = Tensor::vector(&dev, &[0i32, 3]).unwrap();
    let slot = Tensor::vector(&dev, &[4i32, -1]).unwrap();
    let mut kc = Tensor::from_f32(&dev, &[-7.0; 48], slots, width).unwrap();
    let mut vc = Tensor::from_f32(&dev, &[-7.0; 48], slots, width).unwrap();
    rope::rope_kv_write::run(&dev, &k, &v, &pos, &slot, 10000.0, 8, &mut kc, &mut vc).unwrap();
    let (kc, vc) = (kc.to_host::<f32>().unwrap(), vc.to_host::<f32>().unwrap());
    for s in 0..slots {
        let (kr, vr) = (&kc[s * width..(s + 1) * width], &vc[s * width..(s + 1) * width]);
        if s == 4 {
            // Position 0: no rotation; V copied.
            assert_eq!(kr, &[0.5; 8]);
            assert_eq!(vr, &(0..8).map(|i| i as f32).collect::<Vec<_>>()[..]);
        } else {
            assert!(kr.iter().chain(vr).all(|&x| x == -7.0), "slot {s} was written");
        }
    }
    // A cache that shares storage with its source is refused (the scatter has no scratch path).
    let shared = Tensor::zeros(&dev, DType::F32, slots, width).unwrap();
    let mut view = shared.clone();
    let mut vc2 = Tensor::zeros(&dev, DType::F32, slots, width).unwrap();
    let src = shared.view_rows(0, 2).unwrap();
    assert!(rope::rope_kv_write::run(&dev, &src, &v, &pos, &slot, 10000.0, 8, &mut view, &mut vc2).is_err());
}
