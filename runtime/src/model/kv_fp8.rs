//! The FP8 KV cache (`--kv-cache-dtype fp8`): K and V pools of OCP e4m3 bytes, four to an
//! `i32` column, with one K and one V scale per layer ([`KvScale`]): a stored byte `b` stands
//! for `e4m3(b) · scale`. The pools hold twice the tokens of bf16 pools in the same memory.
//!
//! How a step uses it: the model's RoPE / KV-write kernels write the new tokens' K and V in
//! the activations' dtype into a staging buffer (one row per token, instead of the pool's slot
//! rows), then [`store`] rounds them, divided by the layer's scale, to e4m3 (nearest even,
//! saturating at ±448, as [`fp8_lt::f32_to_e4m3`] does) and writes them to the slots. The
//! attention template reads the bytes directly (`kiln_codegen::attention::abi`'s `_kv8`
//! entries; the CPU widens them per task).
//!
//! Where the scales come from: the checkpoint ([`CausalLm::checkpoint_kv_scales`]), else
//! [`calibrate`], which runs a text through the model with an unquantized
//! cache and takes each layer's largest |K| and |V| over it, so the calibration's largest
//! value maps to 448 ([`scale_for`]); a later value past it saturates, never overflows to NaN.
//!
//! Invariants: [`store`] writes only the rows whose slot is non-negative, and the same bytes on
//! the CPU and the GPU for the same f32 inputs (the GPU kernel divides and rounds in f32 exactly
//! as the CPU twin does).

use super::{CausalLm, ForwardBatch, KvCache, ModelError};
pub use crate::attention::KvScale;
use crate::attention::SeqAttn;
use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::device::quant::fp8_lt::{self, f32_to_e4m3};
use crate::{DType, Device, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// The scale that maps `amax` to [`E4M3_MAX`] (1 for a layer whose values are all zero).
pub fn scale_for(amax: f32) -> f32 {
    if amax > 0.0 && amax.is_finite() {
        amax / E4M3_MAX
    } else {
        1.0
    }
}

/// `i32` columns of an FP8 pool row of `width` values.
pub fn pool_cols(width: usize) -> usize {
    width.div_ceil(4)
}

const BODY: &str = r#"
// One block per token row: its K and V rows (width values of T, ld apart) divided by the
// layer's scales, rounded to e4m3 and written as pool row slots[row] (skipped when negative).
template <typename T>
__device__ __forceinline__ void kiln_kv_store_fp8(const T* __restrict__ k, const T* __restrict__ v, long long ld,
                                                  const int* __restrict__ slots, int width, float sk, float sv,
                                                  unsigned char* __restrict__ kp, unsigned char* __restrict__ vp,
                                                  long long ldp) {
  const int row = blockIdx.x, s = slots[row];
  if (s < 0) return;
  const int chunks = width >> 3;
  for (int c = threadIdx.x; c < 2 * chunks; c += blockDim.x) {
    const bool is_v = c >= chunks;
    const int i = (is_v ? c - chunks : c) << 3;
    const T* src = (is_v ? v : k) + (long long)row * ld + i;
    float f[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = kiln_to_f32(src[e]);
    *reinterpret_cast<uint2*>((is_v ? vp : kp) + (long long)s * ldp + i) = kiln_fp8_pack8(f, is_v ? sv : sk);
  }
}
#define KILN_KV_STORE(SUFFIX, T)                                                                              \
  extern "C" __global__ void __launch_bounds__(128) kiln_kv_store_fp8_##SUFFIX(                                \
      const T* k, const T* v, long long ld, const int* slots, int width, float sk, float sv, unsigned char* kp, \
      unsigned char* vp, long long ldp) {                                                                      \
    kiln_kv_store_fp8<T>(k, v, ld, slots, width, sk, sv, kp, vp, ldp);                                         \
  }
KILN_KV_STORE(f32, float)
KILN_KV_STORE(f16, kiln_f16)
KILN_KV_STORE(bf16, kiln_bf16)
"#;

/// The CUDA source of [`store`] (one module; for `kiln build` and the NVRTC test).
pub fn source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        format!(
            "// kiln FP8 KV-cache store (runtime/src/model/kv_fp8.rs)\n{}\n{}\n{BODY}",
            kiln_codegen::cuda::prelude::CORE,
            fp8_lt::E4M3_ENCODE
        )
    })
}

/// The entry points of [`source`].
pub fn entries() -> Vec<String> {
    ["f32", "f16", "bf16"].iter().map(|d| format!("kiln_kv_store_fp8_{d}")).collect()
}

/// The new tokens' K and V rows (`k`, `v`: `[n, width]` in the activations' dtype) into one
/// layer's FP8 pools at `slots` (`[1, n]` i32; a negative slot skips the row), each value
/// divided by the layer's scale and rounded to e4m3.
pub fn store(
    dev: &Device,
    k: &Tensor,
    v: &Tensor,
    slots: &Tensor,
    scale: KvScale,
    k_pool: &mut Tensor,
    v_pool: &mut Tensor,
) -> Result<(), ModelError> {
    let bad = |m: String| Err(ModelError::Batch(format!("FP8 KV store: {m}")));
    let (n, width) = (k.rows(), k.cols());
    if (v.rows(), v.cols()) != (n, width) || v.dtype() != k.dtype() {
        return bad(format!("K is {n}x{width} {}, V {}x{} {}", k.dtype(), v.rows(), v.cols(), v.dtype()));
    }
    if slots.dtype() != DType::I32 || slots.rows() != 1 || slots.cols() != n {
        return bad(format!("slots are {}x{} {}, 1x{n} i32 expected", slots.rows(), slots.cols(), slots.dtype()));
    }
    if !width.is_multiple_of(8) {
        return bad(format!("rows of {width} values are not whole chunks of 8"));
    }
    for (what, p) in [("K", &*k_pool), ("V", &*v_pool)] {
        if p.dtype() != DType::I32 || p.cols() != pool_cols(width) {
            return bad(format!(
                "the {what} pool is {}x{} {}, rows of {width} bytes expected",
                p.rows(),
                p.cols(),
                p.dtype()
            ));
        }
    }
    if v_pool.rows() != k_pool.rows() {
        return bad(format!("the pools hold {} and {} slots", k_pool.rows(), v_pool.rows()));
    }
    let rows = NewRows { k, v, slots, scale };
    match dev {
        Device::Cpu => store_cpu(&rows, k_pool, v_pool),
        Device::Cuda(b) => store_cuda(b, &rows, k_pool, v_pool),
    }
}

/// What [`store`] writes, checked: the new rows, their slots and the layer's scales.
struct NewRows<'a> {
    k: &'a Tensor,
    v: &'a Tensor,
    slots: &'a Tensor,
    scale: KvScale,
}

fn store_cpu(rows: &NewRows<'_>, k_pool: &mut Tensor, v_pool: &mut Tensor) -> Result<(), ModelError> {
    let NewRows { k, v, slots, scale } = *rows;
    let slots = slots.to_host::<i32>()?;
    let pool_rows = k_pool.rows();
    if let Some(s) = slots.iter().find(|&&s| s >= 0 && s as usize >= pool_rows) {
        return Err(ModelError::Batch(format!("FP8 KV store: slot {s} is past the pools' {pool_rows} rows")));
    }
    let width = k.cols();
    for (src, pool, s) in [(k, k_pool, scale.k), (v, v_pool, scale.v)] {
        let src = src.to_host_f32()?;
        pool.with_host_mut::<i32, _>(|mut p| {
            for (r, &slot) in slots.iter().enumerate() {
                if slot < 0 {
                    continue;
                }
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(p.row_mut(slot as usize));
                for (b, &x) in bytes.iter_mut().zip(&src[r * width..(r + 1) * width]) {
                    *b = f32_to_e4m3(x / s);
                }
            }
        })?;
    }
    Ok(())
}

fn store_cuda(b: &CudaBackend, rows: &NewRows<'_>, k_pool: &mut Tensor, v_pool: &mut Tensor) -> Result<(), ModelError> {
    let NewRows { k, v, slots, scale } = *rows;
    let ptr =
        |t: &Tensor| t.cuda_ptr().ok_or_else(|| ModelError::Batch("FP8 KV store: a tensor is not on the GPU".into()));
    let module = b.module_with(source(), "kiln_kv_fp8", &entries())?;
    let f = module.func(&format!("kiln_kv_store_fp8_{}", k.dtype().name()))?;
    let (kp, vp, sp, kpool, vpool) = (ptr(k)?, ptr(v)?, ptr(slots)?, ptr(k_pool)?, ptr(v_pool)?);
    if k.row_stride() != v.row_stride() || !(kpool | vpool).is_multiple_of(8) {
        return Err(ModelError::Batch("FP8 KV store: K and V need one row stride, the pools 8-byte alignment".into()));
    }
    let (ld, width, ldp) = (k.row_stride() as i64, k.cols() as i32, (k_pool.row_stride() * 4) as i64);
    let mut l = b.stream().launch_builder(f);
    l.arg(&kp).arg(&vp).arg(&ld).arg(&sp).arg(&width).arg(&scale.k).arg(&scale.v).arg(&kpool).arg(&vpool).arg(&ldp);
    let cfg = LaunchConfig { grid_dim: (k.rows() as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    if k.rows() == 0 {
        return Ok(());
    }
    // SAFETY: k and v cover rows × width at ld; slots holds one i32 per row, each negative or a
    // pool row (the engine's slots; the CPU path checks them); the pools are i32 tensors of
    // width / 4 columns, so each row holds width bytes at ldp.
    let r = unsafe { l.launch(cfg) };
    drv("launching kiln_kv_store_fp8", r)?;
    Ok(())
}

/// Tokens of the calibration text a layer's scales are taken over, at most.
pub const CALIBRATION_TOKENS: usize = 1024;

/// One prefill of `tokens` (the first [`CALIBRATION_TOKENS`], at most the model's context) as
/// one sequence in a cache of its own: a calibration pass (FP8 KV scales, SmoothQuant's
/// activation statistics). Returns the cache and how many tokens it holds.
pub fn calibration_prefill(model: &dyn CausalLm, tokens: &[u32]) -> Result<(KvCache, usize), ModelError> {
    let tokens = &tokens[..tokens.len().min(CALIBRATION_TOKENS).min(model.info().max_model_len)];
    if tokens.is_empty() {
        return Err(ModelError::Load("a calibration pass needs at least one token".into()));
    }
    let block_size = 16;
    let blocks = tokens.len().div_ceil(block_size);
    let mut kv: KvCache = model.new_kv_cache(blocks, block_size)?;
    let table: Vec<u32> = (0..blocks as u32).collect();
    let positions: Vec<i32> = (0..tokens.len() as i32).collect();
    let slots: Vec<u32> = (0..tokens.len() as u32).collect();
    let seqs = [SeqAttn { q_start: 0, q_len: tokens.len(), ctx_len: tokens.len(), block_table: &table }];
    let batch = ForwardBatch { tokens, positions: &positions, slots: &slots, seqs: &seqs, logits_rows: &[0] };
    model.forward(&batch, &mut kv)?;
    Ok((kv, tokens.len()))
}

/// Per-KV-layer scales for `model`'s FP8 KV cache from one prefill of `tokens` (the first
/// [`CALIBRATION_TOKENS`]) with an unquantized cache: each layer's largest |K| and |V| over
/// the text, through [`scale_for`]. Across tensor-parallel ranks (a cache of `ranks × layers`
/// pools) a layer's maximum is taken over every rank's heads.
pub fn calibrate(model: &dyn CausalLm, tokens: &[u32]) -> Result<Vec<KvScale>, ModelError> {
    if model.info().kv_fp8.is_some() {
        return Err(ModelError::Load("FP8 KV calibration needs the model's unquantized cache".into()));
    }
    let layers = model.info().kv_layers().count();
    let (kv, n) = calibration_prefill(model, tokens)?;
    let mut amax = vec![[0f32; 2]; layers];
    for (i, (kp, vp)) in kv.k.iter().zip(&kv.v).enumerate() {
        for (j, pool) in [kp, vp].into_iter().enumerate() {
            let rows = pool.view_rows(0, n)?.to_host_f32()?;
            let m = rows.iter().fold(0f32, |m, x| m.max(x.abs()));
            if !m.is_finite() {
                return Err(ModelError::Load(format!(
                    "FP8 KV calibration: layer {} has non-finite values",
                    i % layers
                )));
            }
            amax[i % layers][j] = amax[i % layers][j].max(m);
        }
    }
    Ok(amax.into_iter().map(|[k, v]| KvScale { k: scale_for(k), v: scale_for(v) }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_store_rounds_each_value_over_its_scale_into_its_slot_and_skips_negative_slots() {
        let dev = Device::Cpu;
        let width = 8;
        let k: Vec<f32> = (0..2 * width).map(|i| i as f32 * 0.37 - 2.0).collect();
        let v: Vec<f32> = (0..2 * width).map(|i| 300.0 - i as f32 * 41.0).collect();
        let k = Tensor::from_f32_as(&dev, DType::F32, &k, 2, width).unwrap();
        let v = Tensor::from_f32_as(&dev, DType::F32, &v, 2, width).unwrap();
        let slots = Tensor::vector(&dev, &[3i32, -1]).unwrap();
        let mut kp = Tensor::zeros(&dev, DType::I32, 5, pool_cols(width)).unwrap();
        let mut vp = Tensor::zeros(&dev, DType::I32, 5, pool_cols(width)).unwrap();
        let scale = KvScale { k: 0.5, v: 0.25 };
        store(&dev, &k, &v, &slots, scale, &mut kp, &mut vp).unwrap();
        let (kb, vb) = (kp.to_host::<i32>().unwrap(), vp.to_host::<i32>().unwrap());
        let (kb, vb): (&[u8], &[u8]) = (bytemuck::cast_slice(&kb), bytemuck::cast_slice(&vb));
        let (ks, vs) = (k.to_host_f32().unwrap(), v.to_host_f32().unwrap());
        for i in 0..width {
            assert_eq!(kb[3 * width + i], f32_to_e4m3(ks[i] / 0.5));
            assert_eq!(vb[3 * width + i], f32_to_e4m3(vs[i] / 0.25));
        }
        // V's 300 / 0.25 = 1200 saturates to 448 (0x7E), never NaN.
        assert_eq!(vb[3 * width], 0x7E);
        // Every other slot, and the skipped row's, stays zero.
        let others = |b: &[u8]| b.iter().enumerate().filter(|(i, _)| i / width != 3).all(|(_, &x)| x == 0);
        assert!(others(kb) && others(vb));
    }

    #[test]
    fn bad_shapes_and_slots_are_errors() {
        let dev = Device::Cpu;
        let k = Tensor::zeros(&dev, DType::F32, 2, 8).unwrap();
        let mut kp = Tensor::zeros(&dev, DType::I32, 4, 2).unwrap();
        let mut vp = Tensor::zeros(&dev, DType::I32, 4, 2).unwrap();
        let s = KvScale { k: 1.0, v: 1.0 };
        let past = Tensor::vector(&dev, &[0i32, 4]).unwrap();
        assert!(store(&dev, &k, &k, &past, s, &mut kp, &mut vp).is_err());
        let short = Tensor::vector(&dev, &[0i32]).unwrap();
        assert!(store(&dev, &k, &k, &short, s, &mut kp, &mut vp).is_err());
        let mut wide = Tensor::zeros(&dev, DType::I32, 4, 3).unwrap();
        let ok = Tensor::vector(&dev, &[0i32, 1]).unwrap();
        assert!(store(&dev, &k, &k, &ok, s, &mut wide, &mut vp).is_err());
        assert!(store(&dev, &k, &k, &ok, s, &mut kp, &mut vp).is_ok());
    }

    #[test]
    fn scales_map_the_calibration_maximum_to_448() {
        assert_eq!(scale_for(448.0), 1.0);
        assert_eq!(scale_for(4.48), 0.01);
        assert_eq!(scale_for(0.0), 1.0);
        assert_eq!(scale_for(f32::NAN), 1.0);
    }
}
