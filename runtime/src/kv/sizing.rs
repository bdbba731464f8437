//! How many KV blocks a memory budget holds. One block stores, for every layer, a K and a V
//! tensor of `block_size x kv_heads x head_dim` elements, so
//! `bytes_per_block = 2 * layers * kv_heads * head_dim * dtype_bytes * block_size`.
//! All arithmetic is checked: absurd shapes are errors, never wrapped numbers.

use super::error::KvError;

/// The shape of the KV cache of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Transformer layers (each has its own K and V pools).
    pub num_layers: usize,
    /// Key/value heads per layer (after GQA grouping).
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Bytes per stored element (2 for f16/bf16, 1 for fp8, 4 for f32).
    pub dtype_bytes: usize,
    /// Token slots per block.
    pub block_size: usize,
}

impl KvLayout {
    /// Bytes one block takes across all layers, K and V.
    pub fn bytes_per_block(&self) -> Result<u64, KvError> {
        let fields = [
            ("num_layers", self.num_layers),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("dtype_bytes", self.dtype_bytes),
            ("block_size", self.block_size),
        ];
        let mut bytes: u64 = 2;
        for (name, v) in fields {
            if v == 0 {
                return Err(KvError::InvalidConfig(format!("KV layout field `{name}` is 0")));
            }
            bytes = bytes
                .checked_mul(v as u64)
                .ok_or_else(|| KvError::InvalidConfig(format!("KV block size in bytes overflows u64 ({self:?})")))?;
        }
        Ok(bytes)
    }

    /// Bytes per token of context across all layers (for reports in tokens).
    pub fn bytes_per_token(&self) -> Result<u64, KvError> {
        Ok(self.bytes_per_block()? / self.block_size as u64)
    }

    /// Blocks that fit in `budget_bytes` (rounded down), at least 1, at most what a block id
    /// can address.
    pub fn blocks_for_budget(&self, budget_bytes: u64) -> Result<usize, KvError> {
        let block_bytes = self.bytes_per_block()?;
        let blocks = budget_bytes / block_bytes;
        if blocks == 0 {
            return Err(KvError::BudgetTooSmall { budget: budget_bytes, block_bytes });
        }
        Ok(blocks.min((u32::MAX - 1) as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm(block_size: usize) -> KvLayout {
        // SmolLM2-135M: 30 layers, 3 KV heads of 64, bf16.
        KvLayout { num_layers: 30, num_kv_heads: 3, head_dim: 64, dtype_bytes: 2, block_size }
    }

    #[test]
    fn block_bytes_and_budget() {
        let l = smollm(16);
        assert_eq!(l.bytes_per_block().unwrap(), 2 * 30 * 3 * 64 * 2 * 16);
        assert_eq!(l.bytes_per_token().unwrap(), 23_040);
        let per = l.bytes_per_block().unwrap();
        assert_eq!(l.blocks_for_budget(per * 10 + per - 1).unwrap(), 10);
        assert_eq!(l.blocks_for_budget(per - 1), Err(KvError::BudgetTooSmall { budget: per - 1, block_bytes: per }));
    }

    #[test]
    fn zero_and_overflow_are_errors() {
        let mut l = smollm(16);
        l.head_dim = 0;
        assert!(matches!(l.bytes_per_block(), Err(KvError::InvalidConfig(m)) if m.contains("head_dim")));
        let huge =
            KvLayout { num_layers: usize::MAX, num_kv_heads: usize::MAX, head_dim: 2, dtype_bytes: 2, block_size: 2 };
        assert!(matches!(huge.blocks_for_budget(u64::MAX), Err(KvError::InvalidConfig(_))));
    }
}
