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
