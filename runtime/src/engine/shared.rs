//! State shared between the engine thread and every handle: the numbers `submit` validates
//! against, the queue and in-flight counters, the published stats and the heartbeat.
//!
//! Invariants:
//! - `inflight` counts accepted requests whose terminal event (`Done` or `Error`) has not been
//!   sent; it is decremented exactly once per request, by its [`Ticket`], after the engine has
//!   published the stats that reflect the request's end (so `wait_idle` then `stats` sees its
//!   blocks freed);
//! - `queued` counts accepted requests that were never scheduled yet; `submit` refuses with
//!   `Overloaded` when it would pass `max_queue`;
//! - locks are only held for a copy or a counter update, never across model work, and a poisoned
//!   lock is still read (the data are plain counters).

use super::api::{EngineEvent, EngineStats, Heartbeat};
use crate::model::ModelInfo;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The limits `submit` checks synchronously.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub max_model_len: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_num_seqs: usize,
    pub max_queue: usize,
}

/// KV memory wasted by block granularity (allocated but unfilled slots), sampled while requests
/// run: the "KV waste" target, reported by `kiln bench`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KvWasteStats {
    /// Steps sampled.
    pub samples: u64,
    /// Mean over samples of wasted slots / all slots of the pool.
    pub mean_of_pool: f64,
    /// Largest sample of wasted slots / all slots of the pool.
    pub max_of_pool: f64,
    /// Mean over samples of wasted slots / allocated slots.
    pub mean_of_used: f64,
}

impl KvWasteStats {
    pub(crate) fn add(&mut self, of_pool: f64, of_used: f64) {
        let n = self.samples as f64;
        self.mean_of_pool = (self.mean_of_pool * n + of_pool) / (n + 1.0);
        self.mean_of_used = (self.mean_of_used * n + of_used) / (n + 1.0);
        self.max_of_pool = self.max_of_pool.max(of_pool);
        self.samples += 1;
    }
}

pub(crate) struct Shared {
    pub info: ModelInfo,
    pub limits: Limits,
    /// Where the engine samples and why (decided at start; changed if the device sampler
    /// fails later).
    pub sampling_note: Mutex<String>,
    pub accepting: AtomicBool,
    /// Sequence ids, for requests (a request's id is its first sequence's) and forks alike.
    pub next_seq: AtomicU64,
    pub queued: AtomicUsize,
    pub stats: Mutex<EngineStats>,
    pub waste: Mutex<KvWasteStats>,
    pub heartbeat: Mutex<Heartbeat>,
    /// Durations of constrained decoding's mask computations (computed ahead, on the pool).
    pub mask_times: std::sync::Arc<Mutex<crate::sample::constraint::MaskTimes>>,
    /// How long sampling waited for each mask (zero where it was ready).
    pub mask_waits: std::sync::Arc<Mutex<crate::sample::constraint::MaskTimes>>,
    inflight: Mutex<usize>,
    idle: Condvar,
    /// Set once the engine thread has dropped its state (the model among it).
    exited: Mutex<bool>,
    exited_cv: Condvar,
}

impl Shared {
    /// The engine thread is done: its state (the model, the KV pools) is dropped.
    pub fn mark_exited(&self) {
        *lock(&self.exited) = true;
        self.exited_cv.notify_all();
    }

    /// Waits for [`Shared::mark_exited`]; false on timeout.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut done = lock(&self.exited);
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self.exited_cv.wait_timeout(done, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    pub fn new(info: ModelInfo, limits: Limits, stats: EngineStats, sampling_note: String) -> Self {
        Shared {
            info,
            limits,
            sampling_note: Mutex::new(sampling_note),
            accepting: AtomicBool::new(true),
            next_seq: AtomicU64::new(1),
            queued: AtomicUsize::new(0),
            stats: Mutex::new(stats),
            waste: Mutex::new(KvWasteStats::default()),
            heartbeat: Mutex::new(Heartbeat { last_progress: Instant::now(), alive: true }),
            mask_times: Default::default(),
            mask_waits: Default::default(),
            inflight: Mutex::new(0),
            exited: Mutex::new(false),
            exited_cv: Condvar::new(),
            idle: Condvar::new(),
        }
    }

    pub fn new_seq_id(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a queue place, or says how full the queue is.
    pub fn reserve_queue(&self) -> Result<(), usize> {
        let max = self.limits.max_queue;
        self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| (q < max).then_some(q + 1)).map(|_| ())
    }

    pub fn release_queue(&self) {
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| q.checked_sub(1));
    }

    pub fn add_inflight(&self) {
        *lock(&self.inflight) += 1;
    }

    pub fn remove_inflight(&self) {
        let mut n = lock(&self.inflight);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    /// Waits until no request is in flight; false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let guard = lock(&self.inflight);
        let (guard, _) =
            self.idle.wait_timeout_while(guard, timeout, |n| *n > 0).unwrap_or_else(PoisonError::into_inner);
        *guard == 0
    }

    pub fn beat(&self) {
        lock(&self.heartbeat).last_progress = Instant::now();
    }

    /// The engine thread is gone: refuse new work, report a dead heartbeat.
    pub fn mark_dead(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        lock(&self.heartbeat).alive = false;
    }
}

/// One accepted request's obligations: exactly one terminal event, the in-flight count and the
/// queue place given back exactly once. Dropping an unfinished ticket (the engine stopped or
/// panicked, a submission was never picked up) sends an `Error`, so no caller waits forever.
pub(crate) struct Ticket {
    shared: std::sync::Arc<Shared>,
    events: UnboundedSender<EngineEvent>,
    queued: bool,
    open: bool,
}

impl Ticket {
    /// Counts the request in flight and in the queue (the queue place is already reserved).
    pub fn new(shared: std::sync::Arc<Shared>, events: UnboundedSender<EngineEvent>) -> Self {
        shared.add_inflight();
        Ticket { shared, events, queued: true, open: true }
    }

    /// Sends a non-terminal event (ignored once the receiver is gone).
    pub fn send(&self, ev: EngineEvent) {
        if self.open {
            let _ = self.events.send(ev);
        }
    }

    /// True when the caller dropped its handle.
    pub fn is_closed(&self) -> bool {
        self.events.is_closed()
    }

    /// The request got its first tokens scheduled: its queue place is free.
    pub fn started(&mut self) {
        if std::mem::replace(&mut self.queued, false) {
            self.shared.release_queue();
        }
    }

    /// Sends the terminal event and settles the counters.
    pub fn end(&mut self, ev: EngineEvent) {
        if !self.open {
            return;
        }
        let _ = self.events.send(ev);
        self.open = false;
        self.started();
        self.shared.remove_inflight();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.end(EngineEvent::Error { message: "the engine stopped before finishing this request".into() });
    }
}
