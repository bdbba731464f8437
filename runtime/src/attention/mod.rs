//! Attention over a paged KV cache.
//!
//! Layout (shared with the CUDA kernels to come):
//! - per layer, a K pool and a V pool, each a `[num_blocks * block_size, n_kv_heads * head_dim]`
//!   tensor: one row per *slot*; slot `s` is token `s % block_size` of physical block
//!   `s / block_size`;
//! - a sequence's token `t` lives in slot `block_table[t / block_size] * block_size + t % block_size`;
//! - a batch is a flat list of new tokens (`q`: `[tokens, n_heads * head_dim]`), split into
//!   sequences by [`SeqAttn`]: the sequence's new tokens are rows `q_start .. q_start + q_len`,
//!   and its context after this step is `ctx_len` tokens (cached prefix + the new ones), so new
//!   token `j` sits at position `ctx_len - q_len + j` and attends, causally, to positions
//!   `0 ..= ctx_len - q_len + j` (decode is the case `q_len == 1`).
//!
//! The new tokens' K and V must be written ([`write_kv`]) before attention runs.
//! GQA/MQA: query head `h` reads KV head `h / (n_heads / n_kv_heads)`.

mod cpu;

use crate::{Device, Tensor, TensorError};
use kiln_codegen::ir::DType;

/// One sequence of a batch, as attention sees it.
#[derive(Clone, Debug)]
pub struct SeqAttn<'a> {
    pub q_start: usize,
    pub q_len: usize,
    pub ctx_len: usize,
    pub block_table: &'a [u32],
}

#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// Multiplies q·k (usually `1/sqrt(head_dim)`).
    pub scale: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum AttnError {
    #[error("attention: {0}")]
    Shape(String),
    #[error("attention on {0} is not implemented yet (CPU only for now)")]
    Device(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), AttnError> {
    if cond {
        Ok(())
    } else {
        Err(AttnError::Shape(msg()))
    }
}

impl AttnShape {
    fn validate(&self) -> Result<(), AttnError> {
        check(self.n_heads > 0 && self.n_kv_heads > 0 && self.head_dim > 0 && self.block_size > 0, || {
            format!("zero-sized shape {self:?}")
        })?;
        check(self.n_heads % self.n_kv_heads == 0, || {
            format!("{} query heads is not a multiple of {} KV heads", self.n_heads, self.n_kv_heads)
        })
    }
    fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Write the new tokens' K and V rows (`[tokens, n_kv_heads * head_dim]`) into their slots.
pub fn write_kv(k: &Tensor, v: &Tensor, slots: &[u32], k_pool: &mut Tensor, v_pool: &mut Tensor) -> Result<(), AttnError> {
    check(k.rows() == slots.len() && v.rows() == slots.len(), || {
        format!("{} slots for {} K rows and {} V rows", slots.len(), k.rows(), v.rows())
    })?;
    check(k.cols() == k_pool.cols() && v.cols() == v_pool.cols(), || {
        format!("K/V width {}/{} differs from the pools' {}/{}", k.cols(), v.cols(), k_pool.cols(), v_pool.cols())
    })?;
    if k.shares_storage(k_pool) || v.shares_storage(v_pool) {
        return Err(AttnError::Shape("new K/V rows must not live in the pool they are written to".into()));
    }
    if let Some(&bad) = slots.iter().find(|&&s| s as usize >= k_pool.rows().min(v_pool.rows())) {
        return Err(AttnError::Shape(format!("slot {bad} is outside the pool of {} slots", k_pool.rows())));
    }
    match k.device() {
        Device::Cpu => {
            cpu::write_kv(k, slots, k_pool)?;
            cpu::write_kv(v, slots, v_pool)?;
            Ok(())
        }
        d => Err(AttnError::Device(d.label())),
    }
}

/// Causal attention of the batch's new tokens over their sequences' paged context.
/// `out`: `[tokens, n_heads * head_dim]`.
pub fn paged_attention(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    seqs: &[SeqAttn<'_>],
    shape: &AttnShape,
    out: &mut Tensor,
) -> Result<(), AttnError> {
    shape.validate()?;
    let qw = shape.n_heads * shape.head_dim;
    check(q.cols() == qw && out.cols() == qw && out.rows() == q.rows(), || {
        format!("q is {}x{}, out {}x{}, expected width {qw}", q.rows(), q.cols(), out.rows(), out.cols())
    })?;
    check(k_pool.cols() == shape.kv_width() && v_pool.cols() == shape.kv_width(), || {
        format!("KV pools are {} / {} wide, expected {}", k_pool.cols(), v_pool.cols(), shape.kv_width())
    })?;
    for (i, s) in seqs.iter().enumerate() {
        check(s.q_len >= 1 && s.q_len <= s.ctx_len, || format!("sequence {i}: q_len {} ctx_len {}", s.q_len, s.ctx_len))?;
        check(s.q_start + s.q_len <= q.rows(), || format!("sequence {i}: rows {}..{} past {} tokens", s.q_start, s.q_start + s.q_len, q.rows()))?;
        check(s.ctx_len <= s.block_table.len() * shape.block_size, || {
            format!("sequence {i}: {} tokens but {} blocks of {}", s.ctx_len, s.block_table.len(), shape.block_size)
        })?;
        let slots = k_pool.rows().min(v_pool.rows());
        if let Some(&b) = s.block_table.iter().find(|&&b| (b as usize + 1) * shape.block_size > slots) {
            return Err(AttnError::Shape(format!("sequence {i}: block {b} is outside the pool")));
        }
    }
    for t in [q, k_pool, v_pool, &*out] {
        if t.dtype() != DType::F32 {
            return Err(AttnError::Shape(format!("CPU attention runs in f32, got a {} tensor", t.dtype())));
        }
    }
    match q.device() {
        Device::Cpu => cpu::paged_attention(q, k_pool, v_pool, seqs, shape, out),
        d => Err(AttnError::Device(d.label())),
    }
}
