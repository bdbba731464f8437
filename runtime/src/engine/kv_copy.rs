//! Copy-on-write block copies on the KV pools: for every layer, K and V, the `block_size` rows
//! of block `src` are copied over those of block `dst`. Copies run in the order given (a block
//! freed in a pass may be the `dst` of a later copy of the same plan), before the step writes
//! any new K/V.
//!
//! CPU pools are copied in place; CUDA pools block by block with device-to-device copies on
//! the stream (ordered before the step's kernels).

use crate::kv::CopyBlock;
use crate::model::KvCache;
use crate::DType;
use crate::{Device, Element, Tensor, TensorError};

#[derive(Debug, thiserror::Error)]
pub enum KvCopyError {
    #[error("copying KV blocks on {0} is not implemented yet")]
    Device(String),
    #[error("KV block copy {src} -> {dst} is outside the pool of {blocks} blocks")]
    OutOfRange { src: u32, dst: u32, blocks: usize },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

pub(crate) fn copy_blocks(kv: &mut KvCache, copies: &[CopyBlock]) -> Result<(), KvCopyError> {
    if copies.is_empty() {
        return Ok(());
    }
    let bs = kv.block_size;
    for c in copies {
        if c.src.index().max(c.dst.index()) >= kv.num_blocks {
            return Err(KvCopyError::OutOfRange { src: c.src.0, dst: c.dst.0, blocks: kv.num_blocks });
        }
    }
    for pool in kv.k.iter_mut().chain(kv.v.iter_mut()) {
        if !matches!(pool.device(), Device::Cpu) {
            for c in copies {
                let src = pool.view_rows(c.src.index() * bs, bs)?;
                pool.view_rows(c.dst.index() * bs, bs)?.copy_from(&src)?;
            }
            continue;
        }
        match pool.dtype() {
            DType::F32 => copy_rows::<f32>(pool, copies, bs)?,
            DType::F16 => copy_rows::<half::f16>(pool, copies, bs)?,
            DType::BF16 => copy_rows::<half::bf16>(pool, copies, bs)?,
            // An FP8 cache's pools: e4m3 bytes, four to an i32.
            DType::I32 => copy_rows::<i32>(pool, copies, bs)?,
            DType::F8E4M3 => copy_rows::<crate::device::element::E4m3>(pool, copies, bs)?,
            DType::I8 => copy_rows::<i8>(pool, copies, bs)?,
        }
    }
    Ok(())
}

fn copy_rows<T: Element + Copy>(pool: &mut Tensor, copies: &[CopyBlock], bs: usize) -> Result<(), KvCopyError> {
    let rows = pool.rows();
    pool.with_host_mut::<T, _>(|v| {
        let (stride, cols) = (v.stride, v.cols);
        for c in copies {
            for r in 0..bs {
                let (s, d) = (c.src.index() * bs + r, c.dst.index() * bs + r);
                if s < rows && d < rows {
                    v.data.copy_within(s * stride..s * stride + cols, d * stride);
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockId;

    #[test]
    fn copies_every_layer_in_order() {
        let dev = Device::Cpu;
        let data: Vec<f32> = (0..4 * 2 * 3).map(|x| x as f32).collect(); // 4 blocks of 2 slots, width 3
        let mk = || Tensor::from_f32(&dev, &data, 8, 3).unwrap();
        let mut kv = KvCache { k: vec![mk(), mk()], v: vec![mk(), mk()], block_size: 2, num_blocks: 4, fp8: None };
        // 1 -> 3, then 3 -> 0 (sees the first copy's result).
        let copies = [CopyBlock { src: BlockId(1), dst: BlockId(3) }, CopyBlock { src: BlockId(3), dst: BlockId(0) }];
        copy_blocks(&mut kv, &copies).unwrap();
        for t in kv.k.iter().chain(&kv.v) {
            let h = t.to_host_f32().unwrap();
            assert_eq!(&h[18..24], &data[6..12], "block 3 = old block 1");
            assert_eq!(&h[0..6], &data[6..12], "block 0 = new block 3");
            assert_eq!(&h[6..18], &data[6..18], "blocks 1, 2 untouched");
        }
        let bad = [CopyBlock { src: BlockId(4), dst: BlockId(0) }];
        assert!(matches!(copy_blocks(&mut kv, &bad), Err(KvCopyError::OutOfRange { .. })));
    }

    #[test]
    fn fp8_pools_copy_their_bytes() {
        let dev = Device::Cpu;
        let words: Vec<i32> = (0..4 * 2 * 2).map(|x| x * 0x0101_0101).collect(); // 4 blocks of 2 slots, 8 bytes a row
        let mk = || Tensor::vector(&dev, &words).unwrap().reshape(8, 2).unwrap();
        let scale = crate::attention::KvScale { k: 1.0, v: 1.0 };
        let mut kv = KvCache { k: vec![mk()], v: vec![mk()], block_size: 2, num_blocks: 4, fp8: Some(vec![scale]) };
        copy_blocks(&mut kv, &[CopyBlock { src: BlockId(2), dst: BlockId(1) }]).unwrap();
        for t in kv.k.iter().chain(&kv.v) {
            let h = t.to_host::<i32>().unwrap();
            assert_eq!(&h[4..8], &words[8..12], "block 1 = block 2");
            assert_eq!((&h[..4], &h[8..]), (&words[..4], &words[8..]), "the others untouched");
        }
    }
}
