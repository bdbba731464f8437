//! [`Element`]: the Rust types a tensor's elements can be read and written as, one per storage
//! [`DType`] (`f32`, `half::f16`, `half::bf16`, `i32`, [`E4m3`], `i8`). `Bool` is never stored.

use crate::DType;

/// A storable element type. Sealed: exactly the storage dtypes.
pub trait Element: bytemuck::Pod + Send + Sync + 'static + sealed::Sealed {
    const DTYPE: DType;
    /// Widen to f32 (`i32` converts by value).
    fn to_f32(self) -> f32;
    /// Narrow from f32 (round to nearest even for halves; `i32` truncates toward zero).
    fn from_f32(x: f32) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for super::E4m3 {}
    impl Sealed for i8 {}
}

/// An OCP FP8 e4m3 element: its byte. Conversions are the code generator's (the bits of the
/// CUDA prelude's `kiln_f32_to_e4m3`: nearest even, saturating at ±448), except NaN.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct E4m3(pub u8);

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> f32 {
        x
    }
}

impl Element for i32 {
    const DTYPE: DType = DType::I32;
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(x: f32) -> i32 {
        x as i32
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(x: f32) -> half::f16 {
        half::f16::from_f32(x)
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> half::bf16 {
        half::bf16::from_f32(x)
    }
}

impl Element for E4m3 {
    const DTYPE: DType = DType::F8E4M3;
    fn to_f32(self) -> f32 {
        kiln_codegen::cpu::math::e4m3_to_f32(self.0)
    }
    /// NaN becomes the NaN byte (host data keeps its poison; a kernel's cast saturates NaN,
    /// as the GPU's encoder does).
    fn from_f32(x: f32) -> E4m3 {
        E4m3(if x.is_nan() { 0x7f } else { kiln_codegen::cpu::math::f32_to_e4m3(x) })
    }
}

/// An int8 code. -128, which no cast writes (they saturate at ±127), is the NaN poison, as
/// e4m3's NaN byte is: host NaN becomes it and it reads back as NaN, so a check sees an
/// element no kernel wrote.
impl Element for i8 {
    const DTYPE: DType = DType::I8;
    fn to_f32(self) -> f32 {
        i8_value(self)
    }
    /// The kernels' cast (nearest even, saturating at ±127), except NaN.
    fn from_f32(x: f32) -> i8 {
        if x.is_nan() {
            i8::MIN
        } else {
            kiln_codegen::cpu::math::f32_to_i8(x)
        }
    }
}

fn i8_value(c: i8) -> f32 {
    if c == i8::MIN {
        f32::NAN
    } else {
        c as f32
    }
}

/// Convert raw little-endian element bytes of `dtype` to f32 (for `to_host_f32`).
pub(crate) fn bytes_to_f32(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        DType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::I32 => out.extend(bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)),
        DType::F16 => out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::F8E4M3 => out.extend(bytes.iter().map(|&b| kiln_codegen::cpu::math::e4m3_to_f32(b))),
        DType::I8 => out.extend(bytes.iter().map(|&b| i8_value(b as i8))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::tensor::Tensor;
    use crate::device::Device;

    #[test]
    fn e4m3_tensors_round_trip_and_keep_nan_poison() {
        // Values on the e4m3 grid come back exactly; others round to nearest even and saturate;
        // NaN stays NaN (the poison of a check harness), where a kernel's cast would saturate it.
        let data = [0.0f32, -0.0, 1.0, -1.75, 448.0, 0.001953125, 1.0625, 1.1875, 600.0, -1e9, f32::NAN];
        let want = [0.0f32, -0.0, 1.0, -1.75, 448.0, 0.001953125, 1.0, 1.25, 448.0, -448.0];
        let t = Tensor::from_f32_as(&Device::Cpu, DType::F8E4M3, &data, 1, data.len()).unwrap();
        assert_eq!(t.dtype().size_bytes(), 1);
        let back = t.to_host_f32().unwrap();
        assert_eq!(&back[..want.len()], &want);
        assert!(back[want.len()].is_nan());
        assert_eq!(E4m3::from_f32(f32::NAN).0 & 0x7f, 0x7f);
    }

    #[test]
    fn i8_tensors_round_to_even_saturate_and_keep_nan_poison() {
        let data = [0.0f32, 2.5, 3.5, -2.5, 126.6, 127.5, -300.0, f32::NAN];
        let t = Tensor::from_f32_as(&Device::Cpu, DType::I8, &data, 1, data.len()).unwrap();
        let back = t.to_host_f32().unwrap();
        assert_eq!(&back[..7], &[0.0, 2.0, 4.0, -2.0, 127.0, 127.0, -127.0]);
        assert!(back[7].is_nan(), "NaN stays the poison code");
    }
}
