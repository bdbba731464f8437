//! [`Tensor`]: a 2-D strided view over shared storage on one device.
//!
//! Layout: element `(r, c)` of a tensor lives at element index `offset + r * row_stride + c` of
//! its storage (element size from [`Tensor::dtype`]). Columns within a row are contiguous;
//! rows are `row_stride` elements apart (`row_stride >= cols`).
//!
//! Vectors: a 1-D tensor (a `[width]` Bcast weight, a `[rows]` PerRow vector such as token
//! positions) is a tensor with **one row** (`1 × n`). A contiguous column (`n × 1` with
//! `row_stride == 1`) is accepted wherever a vector is ([`Tensor::vector_len`]).
//!
//! Invariants:
//! - the view `[offset, offset + span)` (span = `(rows-1)*row_stride + cols`) lies inside the
//!   storage (checked by every constructor and view);
//! - `Clone` is shallow: clones and views share storage, like the storage of a fused QKV
//!   projection shared by its q/k/v column views; [`Tensor::deep_copy`] copies;
//! - host storage is 16-byte aligned; CUDA storage is a `cuMemAlloc` block (256-aligned).

use crate::device::cuda_error::CudaError;
use crate::device::element::{bytes_to_f32, Element};
use crate::device::host_buf::{HostBuf, Poisoned};
use crate::device::Device;
use crate::DType;
use cudarc::driver::CudaSlice;
use std::fmt;
use std::sync::Arc;

/// The memory behind one or more tensors.
pub enum Storage {
    Cpu(HostBuf),
    Cuda(CudaSlice<u8>),
}

#[derive(Clone)]
pub struct Tensor {
    pub(crate) storage: Arc<Storage>,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) offset: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("{0}")]
    Shape(String),
    #[error("{op}: tensor is {got}, expected {expected}")]
    DType { op: &'static str, expected: DType, got: DType },
    #[error("{0} cannot be stored in a tensor")]
    NotStorable(kiln_codegen::ir::DType),
    #[error("{op}: {len} elements given for a {rows}x{cols} tensor")]
    DataLen { op: &'static str, len: usize, rows: usize, cols: usize },
    #[error("{op} needs a CPU tensor, this one is on {device}")]
    NotHost { op: &'static str, device: String },
    #[error("storage is misaligned for {0} (offset not a multiple of the element size)")]
    Misaligned(DType),
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({}x{} {} on {}, stride {}, offset {})",
            self.rows,
            self.cols,
            self.dtype,
            self.device.label(),
            self.row_stride,
            self.offset
        )
    }
}

impl Tensor {
    /// A contiguous `rows × cols` tensor holding a copy of `data` (row-major).
    pub fn from_host<T: Element>(dev: &Device, data: &[T], rows: usize, cols: usize) -> Result<Tensor, TensorError> {
        check_len("from_host", data.len(), rows, cols)?;
        Tensor::from_bytes(dev, T::DTYPE, bytemuck::cast_slice(data), rows, cols)
    }

    /// `from_host` for f32 data.
    pub fn from_f32(dev: &Device, data: &[f32], rows: usize, cols: usize) -> Result<Tensor, TensorError> {
        Tensor::from_host(dev, data, rows, cols)
    }

    /// f32 data converted to `dtype` (round to nearest even for halves and e4m3).
    pub fn from_f32_as(
        dev: &Device,
        dtype: DType,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, TensorError> {
        check_len("from_f32_as", data.len(), rows, cols)?;
        match dtype {
            DType::F32 => Tensor::from_host(dev, data, rows, cols),
            DType::F16 => Tensor::from_host(dev, &convert::<half::f16>(data), rows, cols),
            DType::BF16 => Tensor::from_host(dev, &convert::<half::bf16>(data), rows, cols),
            DType::I32 => Tensor::from_host(dev, &convert::<i32>(data), rows, cols),
            DType::F8E4M3 => Tensor::from_host(dev, &convert::<crate::device::element::E4m3>(data), rows, cols),
            DType::I8 => Tensor::from_host(dev, &convert::<i8>(data), rows, cols),
        }
    }

    /// A `1 × n` vector holding a copy of `data`.
    pub fn vector<T: Element>(dev: &Device, data: &[T]) -> Result<Tensor, TensorError> {
        Tensor::from_host(dev, data, 1, data.len())
    }

    /// A contiguous tensor of zeros.
    pub fn zeros(dev: &Device, dtype: DType, rows: usize, cols: usize) -> Result<Tensor, TensorError> {
        Tensor::alloc(dev, dtype, rows, cols, true)
    }

    /// A contiguous tensor whose contents are unspecified (zeros on the CPU; whatever the
    /// allocator returns on a GPU). For outputs that a kernel overwrites entirely.
    pub fn uninit(dev: &Device, dtype: DType, rows: usize, cols: usize) -> Result<Tensor, TensorError> {
        Tensor::alloc(dev, dtype, rows, cols, false)
    }

    fn alloc(dev: &Device, dtype: DType, rows: usize, cols: usize, zero: bool) -> Result<Tensor, TensorError> {
        let bytes = elems(rows, cols)? * dtype.size_bytes();
        let storage = match dev {
            Device::Cpu => Storage::Cpu(HostBuf::zeroed(bytes)),
            Device::Cuda(b) => Storage::Cuda(crate::device::tensor_io::cuda_alloc(b, bytes, zero)?),
        };
        Ok(Tensor::contiguous(dev, storage, dtype, rows, cols))
    }

    /// A contiguous `rows × cols` tensor of `dtype` from its raw little-endian bytes.
    pub fn from_bytes(
        dev: &Device,
        dtype: DType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, TensorError> {
        let want = elems(rows, cols)? * dtype.size_bytes();
        if bytes.len() != want {
            return Err(TensorError::DataLen { op: "from_bytes", len: bytes.len() / dtype.size_bytes(), rows, cols });
        }
        let storage = match dev {
            Device::Cpu => Storage::Cpu(HostBuf::from_bytes(bytes)),
            Device::Cuda(b) => Storage::Cuda(crate::device::tensor_io::cuda_upload(b, bytes)?),
        };
        Ok(Tensor::contiguous(dev, storage, dtype, rows, cols))
    }

    fn contiguous(dev: &Device, storage: Storage, dtype: DType, rows: usize, cols: usize) -> Tensor {
        Tensor { storage: Arc::new(storage), device: dev.clone(), dtype, rows, cols, row_stride: cols, offset: 0 }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Elements between the starts of consecutive rows.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// Element index of `(0, 0)` in the storage.
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Number of elements in the view.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rows are back to back (`row_stride == cols`, or a single row).
    pub fn is_contiguous(&self) -> bool {
        self.rows <= 1 || self.row_stride == self.cols
    }
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }
    /// Whether two tensors are views of the same memory.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }
    /// Elements from `(0,0)` to the last element of the view, inclusive.
    pub fn span(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + self.cols
        }
    }

    /// The length of a vector (`1 × n`, or `n × 1` with `row_stride == 1`); `None` otherwise.
    pub fn vector_len(&self) -> Option<usize> {
        if self.rows == 1 {
            Some(self.cols)
        } else if self.cols == 1 && self.row_stride == 1 {
            Some(self.rows)
        } else {
            None
        }
    }

    /// Columns `start .. start+len` of every row: same storage, same stride.
    pub fn view_cols(&self, start: usize, len: usize) -> Result<Tensor, TensorError> {
        if start.checked_add(len).is_none_or(|end| end > self.cols) {
            return Err(TensorError::Shape(format!(
                "view_cols({start}, {len}) of a tensor with {} columns",
                self.cols
            )));
        }
        Ok(Tensor { cols: len, offset: self.offset + start, ..self.clone() })
    }

    /// Rows `start .. start+len`: same storage, same stride.
    pub fn view_rows(&self, start: usize, len: usize) -> Result<Tensor, TensorError> {
        if start.checked_add(len).is_none_or(|end| end > self.rows) {
            return Err(TensorError::Shape(format!("view_rows({start}, {len}) of a tensor with {} rows", self.rows)));
        }
        Ok(Tensor { rows: len, offset: self.offset + start * self.row_stride, ..self.clone() })
    }

    /// The same bytes seen as `dtype`, whose elements are as wide as this one's (an `i32`
    /// buffer holding `f32` values too, so that both come back in one copy).
    pub fn bitcast(&self, dtype: DType) -> Result<Tensor, TensorError> {
        if dtype.size_bytes() != self.dtype.size_bytes() {
            return Err(TensorError::Shape(format!("bitcast of {self:?} to {dtype}: element sizes differ")));
        }
        Ok(Tensor { dtype, ..self.clone() })
    }

    /// The same elements as `rows × cols` (row-major): a view of a contiguous tensor only (e.g. a
    /// `[tokens, heads * head_dim]` projection seen as one row per head).
    pub fn reshape(&self, rows: usize, cols: usize) -> Result<Tensor, TensorError> {
        if !self.is_contiguous() || rows.checked_mul(cols) != Some(self.rows * self.cols) {
            return Err(TensorError::Shape(format!("reshape of {self:?} to {rows}x{cols}")));
        }
        Ok(Tensor { rows, cols, row_stride: cols, ..self.clone() })
    }

    /// Device address of element `(0, 0)` (CUDA tensors only).
    pub(crate) fn cuda_ptr(&self) -> Option<u64> {
        match &*self.storage {
            Storage::Cuda(s) => {
                Some(crate::device::tensor_io::base_ptr(s) + (self.offset * self.dtype.size_bytes()) as u64)
            }
            Storage::Cpu(_) => None,
        }
    }

    /// The view's elements, row-major and contiguous, as `T` (which must be the dtype).
    pub fn to_host<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        self.expect_dtype("to_host", T::DTYPE)?;
        let bytes = crate::device::tensor_io::gather_bytes(self)?;
        let mut out = vec![T::zeroed(); self.len()];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes);
        Ok(out)
    }

    /// The view's elements, row-major and contiguous, converted to f32.
    pub fn to_host_f32(&self) -> Result<Vec<f32>, TensorError> {
        let bytes = crate::device::tensor_io::gather_bytes(self)?;
        let mut out = Vec::with_capacity(self.len());
        bytes_to_f32(self.dtype, &bytes, &mut out);
        Ok(out)
    }

    /// This view on `dev`: the same tensor (shared) if it is already there, else a contiguous copy.
    pub fn to_device(&self, dev: &Device) -> Result<Tensor, TensorError> {
        if &self.device == dev {
            return Ok(self.clone());
        }
        let bytes = crate::device::tensor_io::gather_bytes(self)?;
        Tensor::from_bytes(dev, self.dtype, &bytes, self.rows, self.cols)
    }

    /// A contiguous copy on the same device (never shares storage).
    pub fn deep_copy(&self) -> Result<Tensor, TensorError> {
        let mut t = Tensor::uninit(&self.device, self.dtype, self.rows, self.cols)?;
        t.copy_from(self)?;
        Ok(t)
    }

    /// Overwrite this view with `src`'s elements (same shape and dtype, same device). On a GPU
    /// this is one device-to-device 2-D copy on the stream (asynchronous).
    pub fn copy_from(&mut self, src: &Tensor) -> Result<(), TensorError> {
        self.expect_dtype("copy_from", src.dtype)?;
        if (self.rows, self.cols) != (src.rows, src.cols) {
            return Err(TensorError::Shape(format!(
                "copy_from: {}x{} into {}x{}",
                src.rows, src.cols, self.rows, self.cols
            )));
        }
        if self.device != src.device {
            return Err(TensorError::Shape(format!(
                "copy_from: {} into {} (use to_device)",
                src.device.label(),
                self.device.label()
            )));
        }
        match &*self.storage {
            Storage::Cuda(_) => crate::device::tensor_io::copy_device(src, self),
            Storage::Cpu(_) => {
                let bytes = crate::device::tensor_io::gather_bytes(src)?;
                crate::device::tensor_io::scatter_bytes(self, &bytes)
            }
        }
    }

    /// Overwrite the view with `data` (row-major `rows × cols`).
    pub fn copy_from_host<T: Element>(&mut self, data: &[T]) -> Result<(), TensorError> {
        self.expect_dtype("copy_from_host", T::DTYPE)?;
        check_len("copy_from_host", data.len(), self.rows, self.cols)?;
        crate::device::tensor_io::scatter_bytes(self, bytemuck::cast_slice(data))
    }

    /// Overwrite the view with raw little-endian bytes of its dtype (row-major `rows × cols`).
    pub fn copy_from_host_bytes(&mut self, bytes: &[u8]) -> Result<(), TensorError> {
        let want = elems(self.rows, self.cols)? * self.dtype.size_bytes();
        if bytes.len() != want {
            let len = bytes.len() / self.dtype.size_bytes();
            return Err(TensorError::DataLen { op: "copy_from_host_bytes", len, rows: self.rows, cols: self.cols });
        }
        crate::device::tensor_io::scatter_bytes(self, bytes)
    }

    /// Read a CPU tensor in place, as `T` (which must be the dtype).
    pub fn with_host<T: Element, R>(&self, f: impl FnOnce(HostView<'_, T>) -> R) -> Result<R, TensorError> {
        self.expect_dtype("with_host", T::DTYPE)?;
        let buf = self.host_buf("with_host")?;
        let guard = buf.read()?;
        let data = self.typed::<T>(guard.bytes())?;
        Ok(f(HostView { data, rows: self.rows, cols: self.cols, stride: self.row_stride }))
    }

    /// Write a CPU tensor in place, as `T` (which must be the dtype). Other views of the same
    /// storage wait (read/write lock) until `f` returns.
    pub fn with_host_mut<T: Element, R>(&mut self, f: impl FnOnce(HostViewMut<'_, T>) -> R) -> Result<R, TensorError> {
        self.expect_dtype("with_host_mut", T::DTYPE)?;
        let buf = self.host_buf("with_host_mut")?;
        let mut guard = buf.write()?;
        let (start, end) = self.byte_range();
        let data = bytemuck::try_cast_slice_mut(&mut guard.bytes_mut()[start..end])
            .map_err(|_| TensorError::Misaligned(self.dtype))?;
        Ok(f(HostViewMut { data, rows: self.rows, cols: self.cols, stride: self.row_stride }))
    }

    pub(crate) fn host_buf(&self, op: &'static str) -> Result<&HostBuf, TensorError> {
        match &*self.storage {
            Storage::Cpu(h) => Ok(h),
            Storage::Cuda(_) => Err(TensorError::NotHost { op, device: self.device.label() }),
        }
    }

    /// Byte range of the view in its storage.
    pub(crate) fn byte_range(&self) -> (usize, usize) {
        let sz = self.dtype.size_bytes();
        (self.offset * sz, (self.offset + self.span()) * sz)
    }

    /// The view's part of `bytes` (the whole storage) as `T`.
    pub(crate) fn typed<'a, T: Element>(&self, bytes: &'a [u8]) -> Result<&'a [T], TensorError> {
        let (start, end) = self.byte_range();
        bytemuck::try_cast_slice(&bytes[start..end]).map_err(|_| TensorError::Misaligned(self.dtype))
    }

    pub(crate) fn expect_dtype(&self, op: &'static str, want: DType) -> Result<(), TensorError> {
        if self.dtype != want {
            return Err(TensorError::DType { op, expected: want, got: self.dtype });
        }
        Ok(())
    }
}

/// A CPU tensor's elements, borrowed: `data[r * stride + c]` is element `(r, c)`.
pub struct HostView<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<T> HostView<'_, T> {
    pub fn row(&self, r: usize) -> &[T] {
        &self.data[r * self.stride..r * self.stride + self.cols]
    }
}

/// A CPU tensor's elements, mutably borrowed: `data[r * stride + c]` is element `(r, c)`.
pub struct HostViewMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<T> HostViewMut<'_, T> {
    pub fn row(&self, r: usize) -> &[T] {
        &self.data[r * self.stride..r * self.stride + self.cols]
    }
    pub fn row_mut(&mut self, r: usize) -> &mut [T] {
        &mut self.data[r * self.stride..r * self.stride + self.cols]
    }
}

fn elems(rows: usize, cols: usize) -> Result<usize, TensorError> {
    rows.checked_mul(cols).ok_or_else(|| TensorError::Shape(format!("{rows}x{cols} elements overflow")))
}

fn check_len(op: &'static str, len: usize, rows: usize, cols: usize) -> Result<(), TensorError> {
    if Some(len) != rows.checked_mul(cols) {
        return Err(TensorError::DataLen { op, len, rows, cols });
    }
    Ok(())
}

fn convert<T: Element>(data: &[f32]) -> Vec<T> {
    data.iter().map(|&x| T::from_f32(x)).collect()
}
