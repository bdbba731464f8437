//! Collectives between the ranks of a tensor-parallel group: the [`Communicator`] a sharded
//! model calls after its row-parallel projections (all-reduce), for its vocabulary-parallel
//! logits (all-gather) and for the embedding rows rank 0 looks up (broadcast).
//!
//! Two implementations: [`cpu::CpuGroup`] (threads of one process, deterministic: every rank
//! sums the ranks' buffers in rank order, so every rank holds bit-identical results; what CI
//! runs) and [`nccl::NcclGroup`] on CUDA devices (libnccl loaded at run time, like the other
//! CUDA libraries; its collectives cannot time out by themselves: see that module for how the
//! owner bounds them with `abort`).
//!
//! Invariants: every rank of a group calls the same collectives in the same order with the same
//! shapes; a collective that cannot complete (a rank failed, aborted or never came) returns an
//! error within the group's timeout instead of waiting forever, and after an error the group is
//! unusable (the model that owns it refuses further steps).

pub mod cpu;
pub mod nccl;

use crate::Tensor;
use std::time::Duration;

/// How long a rank waits in one collective for the others before the step fails (a rank that
/// died or hung). Long enough for the slowest step of a large prefill on a CPU.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("rank {rank}: the other ranks did not reach '{op}' within {timeout:?} (a rank failed or hung)")]
    Timeout { rank: usize, op: &'static str, timeout: Duration },
    #[error("rank {rank}: '{op}' aborted: another rank failed")]
    Aborted { rank: usize, op: &'static str },
    #[error("rank {rank}: '{op}': {msg}")]
    Shape { rank: usize, op: &'static str, msg: String },
    #[error("rank {rank}: '{op}' is not available here: {msg}")]
    Unsupported { rank: usize, op: &'static str, msg: String },
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error(transparent)]
    Tensor(#[from] crate::TensorError),
}

/// One rank's handle on its group. Tensors are the rank's own (on its device); the calls are
/// collective: each returns once this rank's part is done (on a GPU: enqueued on the rank's
/// stream, in order with its kernels).
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// `t = Σ over ranks of t`, in place (every rank ends with the same values).
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), CommError>;
    /// `recv` (`[world * rows, cols]`) = every rank's `send` (`[rows, cols]`), stacked by rank.
    fn all_gather_rows(&self, send: &Tensor, recv: &mut Tensor) -> Result<(), CommError>;
    /// Every rank's `t` = rank `root`'s `t`.
    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), CommError>;
    /// Make this rank's and every other rank's pending and later collectives fail promptly:
    /// called by the rank that failed, so no other rank waits for it.
    fn abort(&self);
}

/// The checks every implementation makes before a collective: the shapes it is given agree.
pub(crate) fn check_gather(rank: usize, world: usize, send: &Tensor, recv: &Tensor) -> Result<(), CommError> {
    if recv.rows() != world * send.rows() || recv.cols() != send.cols() || recv.dtype() != send.dtype() {
        return Err(CommError::Shape {
            rank,
            op: "all_gather_rows",
            msg: format!(
                "{}×{} {} from each of {world} ranks into {}×{} {}",
                send.rows(),
                send.cols(),
                send.dtype(),
                recv.rows(),
                recv.cols(),
                recv.dtype()
            ),
        });
    }
    Ok(())
}
