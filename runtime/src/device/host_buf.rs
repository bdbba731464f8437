//! [`HostBuf`]: a tensor's host memory — bytes aligned to 16, behind a read/write lock.
//!
//! Why a lock: tensor views share storage (a fused q/k/v projection is read as three column
//! views of one buffer), so "only one writer" cannot come from `&mut` alone. Readers take the
//! read lock and writers the write lock for the duration of one operation (one kernel, one
//! GEMM, one copy); an operation that would read and write the same buffer detects that first
//! (`Arc::ptr_eq` on the storage) and never asks for both locks.
//!
//! Why 16 bytes: typed views (`&[f32]`, `&[bf16]`, ...) of any element offset need at most
//! 4-byte alignment, and 16 lets SIMD code and the CUDA ABI's "16-byte aligned" rule read the
//! same buffers.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// 16 bytes, 16-aligned: the allocation unit that gives the alignment.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(16))]
pub(crate) struct Chunk([u8; 16]);

pub struct HostBuf {
    chunks: RwLock<Vec<Chunk>>,
    len: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("a thread panicked while holding this tensor's host memory; its contents are unknown")]
pub struct Poisoned;

impl HostBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> HostBuf {
        HostBuf { chunks: RwLock::new(vec![Chunk([0; 16]); len.div_ceil(16)]), len }
    }

    /// A copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> HostBuf {
        let buf = HostBuf::zeroed(bytes.len());
        if let Ok(mut g) = buf.chunks.write() {
            bytemuck::cast_slice_mut::<Chunk, u8>(&mut g)[..bytes.len()].copy_from_slice(bytes);
        }
        buf
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn read(&self) -> Result<HostRead<'_>, Poisoned> {
        Ok(HostRead { g: self.chunks.read().map_err(|_| Poisoned)?, len: self.len })
    }

    pub fn write(&self) -> Result<HostWrite<'_>, Poisoned> {
        Ok(HostWrite { g: self.chunks.write().map_err(|_| Poisoned)?, len: self.len })
    }
}

pub struct HostRead<'a> {
    g: RwLockReadGuard<'a, Vec<Chunk>>,
    len: usize,
}

impl HostRead<'_> {
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Chunk, u8>(&self.g)[..self.len]
    }
}

pub struct HostWrite<'a> {
    g: RwLockWriteGuard<'a, Vec<Chunk>>,
    len: usize,
}

impl HostWrite<'_> {
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Chunk, u8>(&self.g)[..self.len]
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Chunk, u8>(&mut self.g)[..self.len]
    }
}
