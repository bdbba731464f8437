//! [`Runner`]: the `CausalLm` glue every architecture shares. An architecture implements
//! [`StepModel`] (its layers' step on device inputs); the runner validates the batch, replays
//! decode steps from CUDA graphs where it can, builds the step inputs, grows the eager
//! workspace and allocates logits, and makes KV pools from the model's layer specs.
//!
//! Invariant: the eager workspace only grows (to the next power of two of the step's tokens),
//! so a run of growing prefills allocates rarely; the decode graphs own their own workspaces.

use super::graphs::{DecodeGraphs, StepModel};
use super::step::StepInputs;
use super::{CausalLm, ForwardBatch, KvCache, ModelError, ModelInfo};
use crate::{Device, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Steps of at most this many tokens run inside one rayon scope on the CPU (see `forward`).
const SCOPED_STEP_TOKENS: usize = 16;

/// The other workers' part of a small CPU step: run whatever the step's parallel loops leave
/// in the pool, spinning in between, until the step is `done`. Without it a worker went to
/// sleep after each of the step's ~150 parallel loops and had to be woken by a system call for
/// the next (a context switch per loop, ~15% of a 2-core decode in the kernel's scheduler).
/// The stepping thread itself returns at once if it picks this job up while it waits inside a
/// loop: it would otherwise spin on a flag only its own suspended step can set.
fn keep_hot(done: &AtomicBool, stepper: Option<usize>) {
    if rayon::current_thread_index() == stepper {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
}

/// Sets its flag when dropped (the end of a step, normal or not).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// An architecture's [`StepModel`] run as a [`CausalLm`].
pub struct Runner<M: StepModel> {
    model: M,
    /// The model's info, with the KV cache type chosen for it ([`CausalLm::use_fp8_kv`]).
    info: ModelInfo,
    /// `(capacity in tokens, activations)` of the last eager step.
    workspace: Mutex<Option<(usize, M::Workspace)>>,
    graphs: DecodeGraphs<M::Workspace>,
}

impl<M: StepModel> Runner<M> {
    pub fn new(model: M) -> Runner<M> {
        let info = model.info().clone();
        Runner { model, info, workspace: Mutex::new(None), graphs: DecodeGraphs::default() }
    }

    /// The architecture inside.
    pub fn model(&self) -> &M {
        &self.model
    }
}

impl<M: StepModel> CausalLm for Runner<M> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        self.model.device()
    }

    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache, ModelError> {
        self.info.new_kv_cache(self.model.device(), num_blocks, block_size)
    }

    fn use_fp8_kv(&mut self, scales: Vec<super::kv_fp8::KvScale>) -> Result<(), ModelError> {
        if !self.model.fp8_kv_supported() {
            return Err(ModelError::Unsupported(format!("an FP8 KV cache for `{}`", self.info.architecture)));
        }
        // The GPU's attention reads FP8 pools with half-precision queries only.
        if !self.model.device().is_cpu() && self.model.dtype() == crate::DType::F32 {
            return Err(ModelError::Unsupported(
                "an FP8 KV cache on a GPU with f32 activations (KILN_DTYPE=f32)".into(),
            ));
        }
        self.info = self.info.with_fp8_kv(scales)?;
        Ok(())
    }

    fn checkpoint_kv_scales(&self) -> Option<Vec<super::kv_fp8::KvScale>> {
        self.model.checkpoint_kv_scales().map(<[_]>::to_vec)
    }

    fn observe_projection_inputs(&mut self) -> Result<Vec<super::ProjectionInputs>, ModelError> {
        self.model.observe_projection_inputs()
    }

    fn forward(&self, batch: &ForwardBatch<'_>, kv: &mut KvCache) -> Result<Tensor, ModelError> {
        let m = &self.model;
        batch.validate(m.info().vocab_size)?;
        if let Some(logits) = self.graphs.forward(m, batch, kv)? {
            return Ok(logits);
        }
        let dev = m.device();
        let inp = StepInputs::new(dev, batch, kv, m.heads())?;
        let n = inp.tokens();
        let mut slot = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_none_or(|(capacity, _)| *capacity < n) {
            *slot = None; // free the old activations before making the larger ones
            let capacity = n.next_power_of_two();
            *slot = Some((capacity, m.workspace(capacity)?));
        }
        let (_, ws) = slot.as_mut().ok_or_else(|| ModelError::Batch("no workspace".into()))?;
        let mut logits = Tensor::uninit(dev, m.dtype(), inp.logits_rows.cols(), m.info().vocab_size)?;
        if dev.is_cpu() && n <= SCOPED_STEP_TOKENS && !m.waits_on_peers() {
            // A small step runs whole on a rayon worker: its kernels' parallel loops then share
            // the pool from inside it instead of this thread waking the workers and sleeping on
            // a latch for every GEMM (default model, 2 cores: decode 67 -> 74 tok/s). Larger
            // steps stay outside (prefill measured slower inside: 220 -> 163 tok/s).
            let done = AtomicBool::new(false);
            rayon::scope(|s| {
                let stepper = rayon::current_thread_index();
                for _ in 1..rayon::current_num_threads() {
                    let done = &done;
                    s.spawn(move |_| keep_hot(done, stepper));
                }
                // Set however the step ends: a panic unwinding through here must still release
                // the spinners, or the scope would wait for them forever.
                let _done = SetOnDrop(&done);
                m.step(&inp, kv, ws, &mut logits)
            })?;
        } else {
            m.step(&inp, kv, ws, &mut logits)?;
        }
        Ok(logits)
    }
}
