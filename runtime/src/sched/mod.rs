//! The iteration-level scheduler: pure data in and out, no device access.
//!
//! ```text
//! add(Request) ─▶ waiting ─admit─▶ running ─▶ schedule() -> StepPlan ─▶ engine runs the model
//!                    ▲                │                                      │
//!                    └── preempt ─────┘            update(StepResult) ◀──────┘
//! ```
//!
//! Each step has a token budget shared by decode tokens (first) and prefill chunks (chunked
//! prefill); requests join and leave at any step; FCFS admission under a cap on running
//! sequences; when KV blocks run out the most recently admitted running sequence is preempted and
//! later recomputed (its output so far is kept, and recomputation reproduces its KV exactly).
//! Requests that can never fit are refused at `add` with the numbers; a full queue is refused
//! with a distinct overload error (HTTP 429). `fork` shares a sequence's blocks copy-on-write
//! for `n > 1` and beam search.
//!
//! Protocol: `schedule` → run the plan (copies first, in order) → `update` with one sampled token
//! per `needs_logits` sequence → `schedule` ... Plans must run in the order they were produced.
//! `abort` may come at any time; the blocks are back in the pool when it returns.
//!
//! Invariants are listed in each file's header and checked by [`Scheduler::check_invariants`].

mod config;
mod error;
mod idmap;
mod plan;
mod request;
mod scheduler;
mod seq;
mod stats;
mod step;
mod update;

pub use config::SchedulerConfig;
pub use error::{AdmissionError, SchedError};
pub use plan::{ScheduledSeq, StepPlan, StepResult};
pub use request::{Request, SeqId};
pub use scheduler::Scheduler;
pub use stats::SchedulerStats;
