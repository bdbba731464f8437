//! Counters for the server's metrics. Gauges (`running`, `waiting`, `kv`) are read at the time
//! of the call; the others only grow.

use crate::kv::KvStats;

/// A snapshot of the scheduler's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerStats {
    /// Sequences running (holding KV blocks).
    pub running: usize,
    /// Sequences waiting for admission (new or preempted).
    pub waiting: usize,
    /// The KV pool: blocks used / cached / free / total, prefix-cache query and hit tokens.
    pub kv: KvStats,
    /// Preemptions since creation.
    pub preemptions: u64,
    /// Prompt tokens of accepted requests.
    pub prompt_tokens: u64,
    /// Sampled tokens accepted by `update`.
    pub generation_tokens: u64,
    /// Tokens scheduled over all steps (prefill and decode; recomputation included).
    pub scheduled_tokens: u64,
    /// Plans produced.
    pub steps: u64,
}
