//! Per-layer KV specs: what each layer of a model keeps in the paged cache and how it attends.
//!
//! A model declares one [`LayerKv`] per transformer layer. Layers of kind
//! [`AttentionKind::None`] keep no KV; every other layer gets a K and a V pool of
//! `n_kv_heads * head_dim` columns. Today all KV layers share one allocator group (one block
//! table per sequence), so the engine refuses a model whose KV layers differ in width; the
//! specs carry the attention kind so that a later allocator can keep only the last `W` tokens
//! of a sliding-window layer.

/// How a layer attends over its context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    /// Every earlier token (causal).
    Global,
    /// The last `window` tokens only (Mistral, Gemma 2/3 local layers).
    SlidingWindow { window: usize },
    /// No attention (and no KV), e.g. a recurrent or MLP-only layer.
    None,
}

/// One layer's KV shape and attention kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerKv {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub attention: AttentionKind,
}

impl LayerKv {
    /// A global-attention layer.
    pub fn global(n_kv_heads: usize, head_dim: usize) -> LayerKv {
        LayerKv { n_kv_heads, head_dim, attention: AttentionKind::Global }
    }

    /// Whether the layer keeps K and V in the cache.
    pub fn has_kv(&self) -> bool {
        self.attention != AttentionKind::None
    }

    /// Columns of one K (or V) pool row: `n_kv_heads * head_dim`.
    pub fn width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// `n` global layers of one shape (the Llama family).
    pub fn uniform(n: usize, n_kv_heads: usize, head_dim: usize) -> Vec<LayerKv> {
        vec![LayerKv::global(n_kv_heads, head_dim); n]
    }
}

/// What one sequence of `context` tokens keeps in the KV cache against what its next query can
/// still see, in layer-blocks (one layer's K and V for one block of tokens): with one block
/// table shared by every layer (today's allocator), each KV layer keeps every block of the
/// context; a sliding-window layer's next query sees only the blocks that overlap its last
/// `window` positions (at most `ceil(window / block_size) + 1` of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvResidency {
    pub kept: usize,
    pub visible: usize,
}

impl KvResidency {
    /// `kept / visible` (1 when nothing is kept).
    pub fn ratio(&self) -> f64 {
        if self.visible == 0 {
            1.0
        } else {
            self.kept as f64 / self.visible as f64
        }
    }
}

/// [`KvResidency`] of `layers` for one sequence of `context` tokens in blocks of `block_size`.
pub fn kv_residency(layers: &[LayerKv], context: usize, block_size: usize) -> KvResidency {
    let all = context.div_ceil(block_size.max(1));
    let (mut kept, mut visible) = (0, 0);
    for l in layers {
        match l.attention {
            AttentionKind::None => {}
            AttentionKind::Global => {
                kept += all;
                visible += all;
            }
            AttentionKind::SlidingWindow { window } => {
                kept += all;
                // Positions context-window+1 ..= context: their blocks, the boundary one included.
                let first = (context + 1).saturating_sub(window) / block_size.max(1);
                visible += all.saturating_sub(first).min(all);
            }
        }
    }
    KvResidency { kept, visible }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_layers_keep_their_whole_context_but_see_only_the_window() {
        let sliding = LayerKv { n_kv_heads: 1, head_dim: 8, attention: AttentionKind::SlidingWindow { window: 32 } };
        // Gemma 3's pattern: 5 sliding layers and 1 global.
        let layers = [vec![sliding; 5], vec![LayerKv::global(1, 8)]].concat();
        // 20 tokens, inside the window: everything is visible.
        assert_eq!(kv_residency(&layers, 20, 16), KvResidency { kept: 12, visible: 12 });
        // 160 tokens = 10 blocks: the next query (position 160) sees positions 129..=160,
        // blocks 8 and 9 of the cached ones (block 10 holds only itself, not yet cached).
        assert_eq!(kv_residency(&layers, 160, 16), KvResidency { kept: 60, visible: 5 * 2 + 10 });
        // 161 tokens: positions 130..=161 lie in blocks 8, 9 and 10.
        let r = kv_residency(&layers, 161, 16);
        assert_eq!(r, KvResidency { kept: 66, visible: 5 * 3 + 11 });
        assert!((r.ratio() - 66.0 / 26.0).abs() < 1e-12);
        let none = [LayerKv { n_kv_heads: 1, head_dim: 8, attention: AttentionKind::None }];
        assert_eq!(kv_residency(&none, 100, 16), KvResidency { kept: 0, visible: 0 });
    }
}
