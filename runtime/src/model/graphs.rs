//! Decode steps replayed from CUDA graphs, for any architecture that implements
//! [`StepModel`]: a step of `n` one-token sequences runs in the graph of the smallest bucket
//! `B >= n` of [`BUCKETS`], padded to `B` rows (see [`StepInputs`]).
//!
//! An entry (per bucket) owns its fixed inputs, its activations and its logits buffer, and the
//! graph that reads and writes exactly those and the KV pools it was captured with. It is
//! (re)made when none fits: first use of the bucket, a longer block table than its inputs hold
//! (strides grow by powers of two), or another KV cache (an entry holds its cache's first K
//! pool, so no other cache can take that address while the entry could be replayed). Making one runs the step eagerly
//! (loading every kernel, and producing this step's logits) and then captures it.
//!
//! Invariants: the logits a replay returns are a view of the entry's buffer, valid until the
//! next step; graphs are off with `KILN_CUDA_GRAPHS=0` (the eager path is the reference).

use super::step::{Heads, StepInputs};
use super::{ForwardBatch, KvCache, ModelError, ModelInfo};
use crate::device::graph::{capture, CapturedGraph};
use crate::DType;
use crate::{Device, Storage, Tensor};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

/// Batch sizes decode graphs are captured for.
pub const BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// What an architecture implements: its facts, its workspace and its step on device inputs.
/// [`super::runner::Runner`] turns it into a [`super::CausalLm`] (eager steps, workspace
/// growth, decode graphs, KV pools from the layer specs).
pub trait StepModel: Send + Sync {
    type Workspace: Send;
    /// What the engine needs to know: vocabulary, context length, per-layer KV specs.
    fn info(&self) -> &ModelInfo;
    fn device(&self) -> &Device;
    /// The activations' (and logits') storage dtype.
    fn dtype(&self) -> DType;
    /// The attention heads the step plan is built for.
    fn heads(&self) -> Heads;
    /// Activations for steps of up to `capacity` tokens.
    fn workspace(&self, capacity: usize) -> Result<Self::Workspace, ModelError>;
    /// Whether decode steps may be captured in CUDA graphs: `false` for a step that reads
    /// device results on the host (MoE routing today).
    fn captures_graphs(&self) -> bool {
        true
    }
    /// Whether the step waits on other threads (a tensor-parallel rank's collectives): it must
    /// then run on its own thread, never on a worker of the shared CPU pool, whose workers the
    /// other ranks' kernels need while this one waits.
    fn waits_on_peers(&self) -> bool {
        false
    }
    /// Whether the step writes and reads FP8 KV caches (`KvCache::fp8`): it must then write
    /// its new K and V through `kv_fp8::store` ([`StepInputs::kv_stage`] gives the rows).
    fn fp8_kv_supported(&self) -> bool {
        false
    }
    /// FP8 KV scales the checkpoint stores (one per KV layer), if any.
    fn checkpoint_kv_scales(&self) -> Option<&[super::kv_fp8::KvScale]> {
        None
    }
    /// See [`super::CausalLm::observe_projection_inputs`].
    fn observe_projection_inputs(&mut self) -> Result<Vec<super::ProjectionInputs>, ModelError> {
        Err(ModelError::Unsupported("observing the projections' inputs of this model".into()))
    }
    /// The step on device-resident inputs, logits into `logits` (`[logits rows, vocab]`):
    /// kernels and GEMMs only, no host copies and no allocations (unless
    /// [`StepModel::captures_graphs`] says otherwise).
    fn step(
        &self,
        inp: &StepInputs,
        kv: &mut KvCache,
        ws: &mut Self::Workspace,
        logits: &mut Tensor,
    ) -> Result<(), ModelError>;
}

struct Entry<W> {
    /// The first K pool of the cache the graph writes, held so that its address cannot be
    /// reused by another cache while the entry lives (the identity check is exact).
    kv_anchor: Arc<Storage>,
    inp: StepInputs,
    /// The activations the graph reads and writes: kept alive, never touched on the host.
    _ws: W,
    logits: Tensor,
    graph: CapturedGraph,
}

pub struct DecodeGraphs<W> {
    entries: Mutex<HashMap<usize, Entry<W>>>,
    enabled: bool,
}

impl<W: Send> Default for DecodeGraphs<W> {
    fn default() -> Self {
        DecodeGraphs {
            entries: Mutex::new(HashMap::new()),
            enabled: std::env::var("KILN_CUDA_GRAPHS").as_deref() != Ok("0"),
        }
    }
}

/// A step the graphs can run: one token per sequence, logits for every row in order.
pub fn is_decode(batch: &ForwardBatch<'_>) -> bool {
    let n = batch.tokens.len();
    n <= BUCKETS[BUCKETS.len() - 1]
        && batch.seqs.len() == n
        && batch.seqs.iter().all(|s| s.q_len == 1)
        && batch.logits_rows.len() == n
        && batch.logits_rows.iter().enumerate().all(|(i, &r)| i == r)
}

/// Whether `e` was captured with the cache `kv`.
fn same_cache<W>(e: &Entry<W>, kv: &KvCache) -> bool {
    kv.k.first().is_some_and(|t| Arc::ptr_eq(t.storage(), &e.kv_anchor))
}

impl<W: Send> DecodeGraphs<W> {
    /// Run `batch` through a decode graph when it is a decode step on a GPU and graphs are on;
    /// `None` when the caller should run it eagerly.
    pub fn forward<M: StepModel<Workspace = W>>(
        &self,
        m: &M,
        batch: &ForwardBatch<'_>,
        kv: &mut KvCache,
    ) -> Result<Option<Tensor>, ModelError> {
        let dev = m.device();
        let Some(backend) = dev.cuda_backend() else { return Ok(None) };
        if !self.enabled || !m.captures_graphs() || !is_decode(batch) {
            return Ok(None);
        }
        let n = batch.tokens.len();
        let Some(&bucket) = BUCKETS.iter().find(|&&b| b >= n) else { return Ok(None) };
        let need = batch.seqs.iter().map(|s| s.ctx_len.div_ceil(kv.block_size)).max().unwrap_or(1);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let fits = entries.get(&bucket).is_some_and(|e| same_cache(e, kv) && e.inp.plan.bt_stride() >= need);
        if fits {
            let e = entries.get_mut(&bucket).ok_or_else(|| ModelError::Batch("graph entry vanished".into()))?;
            e.inp.refresh_decode(dev, batch, kv)?;
            e.graph.launch()?;
            return Ok(Some(e.logits.view_rows(0, n)?));
        }
        // Make the entry: fixed inputs, eager warm-up step (this step's result), capture.
        entries.remove(&bucket);
        let bt_stride = need.next_power_of_two().max(16).min(kv.num_blocks.max(1));
        let mut inp = StepInputs::for_decode(dev, bucket, bt_stride, kv, m.heads())?;
        inp.refresh_decode(dev, batch, kv)?;
        let mut ws = m.workspace(bucket)?;
        let mut logits = Tensor::uninit(dev, m.dtype(), bucket, m.info().vocab_size)?;
        m.step(&inp, kv, &mut ws, &mut logits)?;
        let (graph, ()) = capture(backend, || m.step(&inp, kv, &mut ws, &mut logits))?;
        let view = logits.view_rows(0, n)?;
        let Some(kv_anchor) = kv.k.first().map(|t| t.storage().clone()) else { return Ok(Some(view)) };
        entries.insert(bucket, Entry { kv_anchor, inp, _ws: ws, logits, graph });
        Ok(Some(view))
    }
}
