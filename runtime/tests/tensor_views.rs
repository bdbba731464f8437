//! Tensor layout on the CPU device: constructors, dtype round trips, column/row views (shared
//! storage, offsets, strides), host accessors, copies into views, and the errors.

use half::{bf16, f16};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor, TensorError};

fn iota(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 + 1.0).collect()
}

#[test]
fn round_trips_every_dtype() {
    let dev = Device::Cpu;
    let data = iota(12);
    let t = Tensor::from_f32(&dev, &data, 3, 4).unwrap();
    assert_eq!((t.rows(), t.cols(), t.row_stride(), t.offset()), (3, 4, 4, 0));
    assert_eq!(t.to_host::<f32>().unwrap(), data);

    let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
    let t = Tensor::from_host(&dev, &h, 3, 4).unwrap();
    assert_eq!(t.dtype(), DType::F16);
    assert_eq!(t.to_host::<f16>().unwrap(), h);
    assert_eq!(t.to_host_f32().unwrap(), data);

    let t = Tensor::from_f32_as(&dev, DType::BF16, &data, 3, 4).unwrap();
    assert_eq!(t.to_host::<bf16>().unwrap()[5], bf16::from_f32(6.0));
    assert_eq!(t.to_host_f32().unwrap(), data);

    let ids: Vec<i32> = (0..6).collect();
    let t = Tensor::vector(&dev, &ids).unwrap();
    assert_eq!((t.rows(), t.cols(), t.vector_len()), (1, 6, Some(6)));
    assert_eq!(t.to_host::<i32>().unwrap(), ids);
}

#[test]
fn column_views_share_storage_with_offset_and_stride() {
    let dev = Device::Cpu;
    // A fused q|k|v projection output: 2 tokens × (4 + 2 + 2) columns.
    let qkv = Tensor::from_f32(&dev, &iota(16), 2, 8).unwrap();
    let k = qkv.view_cols(4, 2).unwrap();
    assert!(k.shares_storage(&qkv));
    assert_eq!((k.rows(), k.cols(), k.row_stride(), k.offset()), (2, 2, 8, 4));
    assert!(!k.is_contiguous());
    assert_eq!(k.to_host_f32().unwrap(), vec![5.0, 6.0, 13.0, 14.0]);
    // A view of a view adds offsets.
    let k1 = k.view_cols(1, 1).unwrap();
    assert_eq!((k1.offset(), k1.row_stride()), (5, 8));
    assert_eq!(k1.to_host_f32().unwrap(), vec![6.0, 14.0]);
    // Rows of a column view.
    let r = k.view_rows(1, 1).unwrap();
    assert_eq!((r.offset(), r.to_host_f32().unwrap()), (12, vec![13.0, 14.0]));
    assert_eq!(k.span(), 10);
}

#[test]
fn writes_through_a_view_land_in_the_parent_only_there() {
    let dev = Device::Cpu;
    let parent = Tensor::from_f32(&dev, &[0.0; 12], 3, 4).unwrap();
    let mut v = parent.view_cols(1, 2).unwrap();
    v.copy_from_host(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    assert_eq!(parent.to_host_f32().unwrap(), vec![0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 5.0, 6.0, 0.0]);
    v.with_host_mut::<f32, _>(|mut h| {
        assert_eq!((h.rows, h.cols, h.stride), (3, 2, 4));
        h.row_mut(2)[1] = 9.0;
    })
    .unwrap();
    let seen = v.with_host::<f32, _>(|h| h.row(2).to_vec()).unwrap();
    assert_eq!(seen, vec![5.0, 9.0]);
    assert_eq!(parent.to_host_f32().unwrap()[10], 9.0);
}

#[test]
fn a_bitcast_view_writes_the_parents_bytes() {
    let dev = Device::Cpu;
    let parent = Tensor::from_host(&dev, &[0i32; 6], 2, 3).unwrap();
    let mut f = parent.view_rows(1, 1).unwrap().bitcast(DType::F32).unwrap();
    f.copy_from_host(&[1.5f32, -2.0, 0.25]).unwrap();
    let got = parent.to_host::<i32>().unwrap();
    assert_eq!(&got[..3], &[0, 0, 0]);
    assert_eq!(got[3..].iter().map(|&b| f32::from_bits(b as u32)).collect::<Vec<_>>(), vec![1.5, -2.0, 0.25]);
    assert!(parent.bitcast(DType::BF16).is_err(), "element sizes differ");
}

#[test]
fn copy_from_and_deep_copy() {
    let dev = Device::Cpu;
    let src = Tensor::from_f32(&dev, &iota(6), 2, 3).unwrap();
    let parent = Tensor::zeros(&dev, DType::F32, 2, 5).unwrap();
    let mut dst = parent.view_cols(2, 3).unwrap();
    dst.copy_from(&src).unwrap();
    assert_eq!(parent.to_host_f32().unwrap(), vec![0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 4.0, 5.0, 6.0]);
    let d = dst.deep_copy().unwrap();
    assert!(!d.shares_storage(&parent));
    assert!(d.is_contiguous());
    assert_eq!(d.to_host_f32().unwrap(), iota(6));
    // Same device: to_device shares.
    assert!(src.to_device(&dev).unwrap().shares_storage(&src));
}

#[test]
fn vectors_accept_one_row_or_a_contiguous_column() {
    let dev = Device::Cpu;
    let col = Tensor::from_f32(&dev, &iota(5), 5, 1).unwrap();
    assert_eq!(col.vector_len(), Some(5));
    let wide = Tensor::from_f32(&dev, &iota(10), 5, 2).unwrap();
    assert_eq!(wide.view_cols(0, 1).unwrap().vector_len(), None, "a strided column is not a vector");
    assert_eq!(wide.vector_len(), None);
}

#[test]
fn errors_are_typed() {
    let dev = Device::Cpu;
    let t = Tensor::from_f32(&dev, &iota(6), 2, 3).unwrap();
    assert!(matches!(t.view_cols(2, 2), Err(TensorError::Shape(_))));
    assert!(matches!(t.view_rows(1, 2), Err(TensorError::Shape(_))));
    assert!(matches!(t.view_cols(usize::MAX, 2), Err(TensorError::Shape(_))));
    assert!(matches!(t.to_host::<i32>(), Err(TensorError::DType { .. })));
    assert!(matches!(Tensor::from_f32(&dev, &iota(5), 2, 3), Err(TensorError::DataLen { .. })));
    // A bool is not a storage dtype: `Tensor::zeros(.., DType::Bool, ..)` does not compile.
    let mut u = t.clone();
    assert!(matches!(u.copy_from_host(&[1i32; 6]), Err(TensorError::DType { .. })));
    let other = Tensor::zeros(&dev, DType::F32, 3, 2).unwrap();
    assert!(matches!(u.copy_from(&other), Err(TensorError::Shape(_))));
}

#[test]
fn host_storage_is_16_byte_aligned() {
    let t = Tensor::zeros(&Device::Cpu, DType::BF16, 3, 7).unwrap();
    let addr = t.with_host::<bf16, _>(|h| h.data.as_ptr() as usize).unwrap();
    assert_eq!(addr % 16, 0);
}

#[test]
fn tensors_and_devices_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tensor>();
    send_sync::<Device>();
    send_sync::<kiln_runtime::Storage>();
}
