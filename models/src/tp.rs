//! Tensor parallelism: one model over `world` ranks, driven as one [`CausalLm`].
//!
//! [`TpModel`] holds one rank model per device (each a [`crate::decoder::Decoder`] loaded with
//! its shard of the weights, see `decoder::tp`) and their communicators. The engine, its
//! scheduler, KV allocator and sampler see one model and run once: a step is handed to every
//! rank (rank 0 on the calling thread, the others on one scoped thread each), each rank builds
//! its own device inputs and runs its shard, the ranks meet in their collectives, and rank 0's
//! logits (gathered over the vocabulary) are the step's.
//!
//! The KV cache the engine holds is every rank's pools, rank after rank (`k[r * L + l]` is rank
//! `r`'s pool of KV layer `l`): block numbers and slots are the same on every rank (the
//! allocator runs once), each rank's pools hold only its KV heads, and copying blocks (beam
//! search, forks) copies them in every rank's pools alike.
//!
//! Invariants: every rank gets the same batch in the same order; a rank that fails aborts every
//! rank's communicator, so no other rank waits in a collective for it (the CPU group's waits
//! also end at its timeout; NCCL ranks enqueue their collectives without waiting on the host,
//! and an aborted communicator ends the kernels that wait); after a failed step the model
//! refuses further steps (the ranks' collective sequences may no longer line up) with the first
//! rank's error. Not bounded yet: a GPU rank whose kernel never finishes without any rank
//! failing (a hang inside the device), which only a watchdog on the step's completion can end.

use crate::config::LlamaConfig;
use crate::decoder::{Decoder, DecoderSpec};
use crate::model::{CausalLm, ForwardBatch, KvCache, ModelError, ModelInfo, Runner};
use kiln_runtime::comm::cpu::CpuGroup;
use kiln_runtime::comm::nccl::NcclGroup;
use kiln_runtime::comm::{Communicator, DEFAULT_TIMEOUT};
use kiln_runtime::{DType, Device, Tensor};
use std::sync::{Arc, Mutex};

/// One model over several ranks (see the module header).
pub struct TpModel {
    ranks: Vec<Box<dyn CausalLm>>,
    comms: Vec<Arc<dyn Communicator>>,
    info: ModelInfo,
    /// The error of the step that failed, once one has.
    failed: Mutex<Option<String>>,
}

impl TpModel {
    /// `ranks[r]` must be rank `r` of the group `comms` (also by index) connects.
    pub fn new(ranks: Vec<Box<dyn CausalLm>>, comms: Vec<Arc<dyn Communicator>>) -> Result<TpModel, ModelError> {
        let first = ranks.first().ok_or_else(|| ModelError::Load("a tensor-parallel model of no ranks".into()))?;
        if comms.len() != ranks.len()
            || comms.iter().enumerate().any(|(r, c)| c.rank() != r || c.world() != ranks.len())
        {
            return Err(ModelError::Load(format!(
                "{} ranks with {} communicators out of order",
                ranks.len(),
                comms.len()
            )));
        }
        let info = first.info().clone();
        if let Some(r) = ranks.iter().position(|m| m.info() != &info) {
            return Err(ModelError::Load(format!("rank {r} was built with other sizes than rank 0")));
        }
        Ok(TpModel { ranks, comms, info, failed: Mutex::new(None) })
    }

    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// Rank `r`'s part of the engine's cache (its pools, sharing their storage).
    fn rank_kv(&self, kv: &KvCache, r: usize) -> Result<KvCache, ModelError> {
        let per = kv.k.len() / self.world();
        if kv.k.len() != per * self.world() || kv.v.len() != kv.k.len() {
            return Err(ModelError::Batch(format!("a KV cache of {} pools for {} ranks", kv.k.len(), self.world())));
        }
        Ok(KvCache {
            k: kv.k[r * per..(r + 1) * per].to_vec(),
            v: kv.v[r * per..(r + 1) * per].to_vec(),
            block_size: kv.block_size,
            num_blocks: kv.num_blocks,
            fp8: kv.fp8.clone(),
        })
    }

    /// Rank `r`'s step; on failure (a panic included) every rank's communicator is aborted,
    /// so that no rank waits for this one (an NCCL abort reaches only its own communicator).
    fn run_rank(&self, r: usize, batch: &ForwardBatch<'_>, mut kv: KvCache) -> Result<Tensor, ModelError> {
        let run = std::panic::AssertUnwindSafe(|| self.ranks[r].forward(batch, &mut kv));
        let out = std::panic::catch_unwind(run)
            .unwrap_or_else(|_| Err(ModelError::Batch(format!("rank {r} panicked in its step"))));
        if out.is_err() {
            self.comms.iter().for_each(|c| c.abort());
        }
        out
    }
}

impl CausalLm for TpModel {
    /// Rank 0's facts: the whole vocabulary, and one rank's KV layers (what one device holds).
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        self.ranks[0].device()
    }

    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache, ModelError> {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for m in &self.ranks {
            let c = m.new_kv_cache(num_blocks, block_size)?;
            k.extend(c.k);
            v.extend(c.v);
        }
        Ok(KvCache { k, v, block_size, num_blocks, fp8: self.info.kv_fp8.clone() })
    }

    /// Rank 0's (every rank reads the same scales from the checkpoint).
    fn checkpoint_kv_scales(&self) -> Option<Vec<kiln_runtime::model::kv_fp8::KvScale>> {
        self.ranks[0].checkpoint_kv_scales()
    }

    fn use_fp8_kv(&mut self, scales: Vec<kiln_runtime::model::kv_fp8::KvScale>) -> Result<(), ModelError> {
        let info = self.info.with_fp8_kv(scales.clone())?;
        for m in &mut self.ranks {
            m.use_fp8_kv(scales.clone())?;
        }
        self.info = info;
        Ok(())
    }

    fn forward(&self, batch: &ForwardBatch<'_>, kv: &mut KvCache) -> Result<Tensor, ModelError> {
        if let Some(e) = self.failed.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Err(ModelError::Batch(format!("the tensor-parallel group failed in an earlier step: {e}")));
        }
        // Bad input is refused here, before any rank starts a collective.
        batch.validate(self.info.vocab_size)?;
        let kvs = (0..self.world()).map(|r| self.rank_kv(kv, r)).collect::<Result<Vec<_>, _>>()?;
        let mut kvs = kvs.into_iter();
        let kv0 = kvs.next().ok_or_else(|| ModelError::Batch("no ranks".into()))?;
        let results: Vec<Result<Tensor, ModelError>> = std::thread::scope(|s| {
            let others: Vec<_> =
                kvs.enumerate().map(|(i, kv)| s.spawn(move || self.run_rank(i + 1, batch, kv))).collect();
            let mut all = vec![self.run_rank(0, batch, kv0)];
            for h in others {
                all.push(h.join().unwrap_or_else(|_| Err(ModelError::Batch("a rank's thread died".into()))));
            }
            all
        });
        let mut results = results.into_iter();
        let first = results.next().ok_or_else(|| ModelError::Batch("no ranks".into()))?;
        let rest: Vec<_> = results.collect();
        // The root cause: a rank's own error, not the aborts it caused in the others.
        let cause = std::iter::once(&first)
            .chain(&rest)
            .filter_map(|r| r.as_ref().err())
            .min_by_key(|e| matches!(e, ModelError::Comm(kiln_runtime::comm::CommError::Aborted { .. })));
        if let Some(e) = cause {
            let msg = e.to_string();
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
            return Err(ModelError::Batch(format!("tensor-parallel step failed: {msg}")));
        }
        first
    }
}

/// Connected communicators for ranks on `devices` (by index): the CPU group when every device is
/// the CPU, NCCL when every one is a CUDA GPU.
pub fn group(devices: &[Device]) -> Result<Vec<Arc<dyn Communicator>>, ModelError> {
    if devices.is_empty() {
        return Err(ModelError::Load("tensor parallelism over no devices".into()));
    }
    if devices.iter().all(Device::is_cpu) {
        return Ok(CpuGroup::connect(devices.len(), DEFAULT_TIMEOUT)
            .into_iter()
            .map(|c| c as Arc<dyn Communicator>)
            .collect());
    }
    if devices.iter().all(|d| d.cuda_backend().is_some()) {
        return Ok(NcclGroup::one_host(devices)?.into_iter().map(|c| c as Arc<dyn Communicator>).collect());
    }
    Err(ModelError::Unsupported("tensor parallelism mixing CPU and GPU ranks".into()))
}

/// A synthetic Llama of `cfg`'s shapes (see [`crate::synth`]) over `devices.len()` ranks: each
/// rank makes only its parts of the weights `llama::random` makes whole, on its own device.
pub fn random_parallel(cfg: LlamaConfig, devices: &[Device], dtype: DType, seed: u64) -> Result<TpModel, ModelError> {
    let comms = group(devices)?;
    let ranks = devices
        .iter()
        .zip(&comms)
        .map(|(dev, comm)| {
            let rank = Decoder::random_rank(DecoderSpec::llama(cfg.clone()), dev, dtype, seed, Some(comm.clone()))?;
            Ok(Box::new(Runner::new(rank)) as Box<dyn CausalLm>)
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    TpModel::new(ranks, comms)
}
