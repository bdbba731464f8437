//! The engine: one thread that owns the model, the KV cache, the scheduler and all request
//! state, and serves many concurrent requests with iteration-level (continuous) batching.
//! Callers hold an [`EngineHandle`] and per-request [`RequestHandle`]s (see [`api`] for the
//! contract of events and errors).
//!
//! ```text
//! submit ─validate─▶ channel ─▶ engine thread: schedule → KV copies → forward → sample/beam
//!                                   ▲                                             │
//!                   abort / drop ───┘            events (tokio unbounded) ◀───────┘
//! ```
//!
//! Semantics worth knowing:
//! - greedy output is independent of batching: a request produces the same tokens alone or among
//!   others, through chunked prefill and preemption (recompute keeps sampler, stop and
//!   detokenizer state, so already-streamed output is unchanged);
//! - `n > 1` forks the prompt's sequence at its first logits (copy-on-write: the prompt's KV is
//!   stored once); choice `i` samples with seed `seed + i`;
//! - beam search follows HF transformers (`beam.rs`), with beams as forked sequences
//!   (`beam_group.rs`);
//! - a failure in a step ends the affected requests with `Error`; a panic ends all of them and
//!   marks the heartbeat dead; nothing hangs.

pub mod api;
mod batch;
pub mod beam;
mod beam_group;
mod choice;
mod constrained;
mod core;
mod error;
mod handle;
mod kv_copy;
mod request;
mod shared;
pub mod sizing;
mod thread;
mod validate;

pub use api::*;
pub use error::EngineError;
pub use handle::{EngineHandle, RequestHandle};
pub use kv_copy::KvCopyError;
pub use shared::KvWasteStats;

use crate::model::CausalLm;
use crate::sched::{Scheduler, SchedulerConfig};
use shared::{Limits, Shared};
use std::sync::Arc;

/// Starts engines.
pub struct Engine;

impl Engine {
    /// Sizes the KV pool, builds the scheduler and starts the engine thread.
    pub fn start(
        model: Arc<dyn CausalLm>,
        detok: Arc<dyn Detokenizer>,
        cfg: EngineConfig,
    ) -> Result<EngineHandle, EngineError> {
        if cfg.max_num_seqs == 0 || cfg.max_batched_tokens == 0 || cfg.max_queue == 0 {
            return Err(EngineError::InvalidConfig(format!(
                "max_num_seqs ({}), max_batched_tokens ({}) and max_queue ({}) must be at least 1",
                cfg.max_num_seqs, cfg.max_batched_tokens, cfg.max_queue
            )));
        }
        let info = model.info().clone();
        let sz = sizing::size(&info, model.device(), &cfg)?;
        let sched = Scheduler::new(SchedulerConfig {
            max_batched_tokens: cfg.max_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            max_model_len: sz.max_model_len,
            block_size: sz.block_size,
            num_blocks: sz.num_blocks,
            enable_prefix_caching: cfg.enable_prefix_caching,
            // The engine enforces `max_queue` at submit; forks and re-added beams, which the
            // engine creates itself, must never be refused.
            max_queue: usize::MAX / 2,
        })?;
        let kv = model.new_kv_cache(sz.num_blocks, sz.block_size)?;
        let limits = Limits {
            max_model_len: sz.max_model_len,
            num_blocks: sz.num_blocks,
            block_size: sz.block_size,
            max_num_seqs: cfg.max_num_seqs,
            max_queue: cfg.max_queue,
        };
        let stats = EngineStats { kv_blocks_total: sz.num_blocks, ..EngineStats::default() };
        let (sampler_ok, note) = check_device_sampler(cfg.sampling, model.device(), info.vocab_size);
        let shared = Arc::new(Shared::new(info, limits, stats, note));
        let (tx, rx) = std::sync::mpsc::channel();
        let core = core::Core::new(
            model,
            detok,
            shared.clone(),
            kv,
            sched,
            core::Sampling { placement: cfg.sampling, device_ok: sampler_ok },
        );
        thread::spawn(core, rx)?;
        Ok(EngineHandle { shared, tx })
    }
}

/// Whether `Auto` may use the device sampler, and a line saying where the engine samples and
/// why. On a GPU the device sampler's start-up check runs first
/// ([`crate::sample::device::self_check`]); if it fails, sampled rows go to the host (greedy
/// rows keep the argmax kernel), so a broken kernel costs speed, never wrong tokens.
fn check_device_sampler(asked: SamplingPlacement, dev: &crate::Device, vocab: usize) -> (bool, String) {
    match asked {
        SamplingPlacement::Host => (false, "sampling: on the host (asked for)".into()),
        SamplingPlacement::Device => (true, "sampling: through the device sampler (asked for)".into()),
        SamplingPlacement::Auto if dev.is_cpu() => (false, "sampling: on the host (CPU device)".into()),
        SamplingPlacement::Auto => {
            let t = std::time::Instant::now();
            match crate::sample::device::self_check(dev, vocab) {
                Ok(()) => (
                    true,
                    format!(
                        "sampling: on the GPU (the device sampler agreed with its CPU twin at start-up, {:.0} ms)",
                        t.elapsed().as_secs_f64() * 1e3
                    ),
                ),
                Err(e) => (
                    false,
                    format!(
                        "sampling: sampled rows on the host, because the device sampler failed its start-up check: {e}"
                    ),
                ),
            }
        }
    }
}
