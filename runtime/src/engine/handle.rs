//! The caller's side: [`EngineHandle`] (submit, stats, health, shutdown) and [`RequestHandle`]
//! (one request's event stream). Both only send commands to the engine thread and read shared
//! counters; no model work happens on the caller's thread.
//!
//! Invariants: a request is validated and counted (queue, in flight) before its submission is
//! sent, and a submission that never reaches the engine still ends with an `Error` (its
//! [`Ticket`] sees to it); a `RequestHandle` dropped before its terminal event asks the engine
//! to abort the request.

use super::api::{EngineEvent, EngineStats, GenerateRequest, Heartbeat, SubmitError};
use super::shared::{lock, KvWasteStats, Shared, Ticket};
use super::validate::validate;
use crate::model::ModelInfo;
use crate::sample::ConstraintSource;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// What the engine thread is asked to do.
pub(crate) enum Command {
    Submit(Box<Submission>),
    Abort(u64),
    AbortAll,
    /// Wakes the thread after `accepting` was cleared, so it can exit once idle.
    Shutdown,
}

pub(crate) struct Submission {
    pub id: u64,
    pub req: GenerateRequest,
    /// The grammar every sequence of the request follows, if any.
    pub constraint: Option<Arc<dyn ConstraintSource>>,
    pub ticket: Ticket,
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: Sender<Command>,
}

impl EngineHandle {
    /// Validates and queues a request. Answers at once: a handle streaming its events, or why
    /// not (invalid → 400, overloaded → 429, shutting down → 503).
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestHandle, SubmitError> {
        self.submit_constrained(req, None)
    }

    /// [`EngineHandle::submit`] with a grammar that every sequence of the request follows
    /// (each choice or beam starts its own [`crate::sample::TokenConstraint`] from it).
    pub fn submit_constrained(
        &self,
        req: GenerateRequest,
        constraint: Option<Arc<dyn ConstraintSource>>,
    ) -> Result<RequestHandle, SubmitError> {
        let s = &self.shared;
        if !s.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let id = s.new_seq_id();
        validate(id, &req, s.info.vocab_size, &s.limits)?;
        if let Err(waiting) = s.reserve_queue() {
            return Err(SubmitError::Overloaded(format!(
                "{waiting} requests are waiting (limit {}); retry later",
                s.limits.max_queue
            )));
        }
        let (etx, erx) = unbounded_channel();
        let ticket = Ticket::new(s.clone(), etx);
        if let Err(e) = self.tx.send(Command::Submit(Box::new(Submission { id, req, constraint, ticket }))) {
            // The engine thread is gone; dropping the submission settles its counters.
            drop(e);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(RequestHandle { id, rx: erx, tx: self.tx.clone(), ended: false })
    }

    /// The counters as of the end of the engine's last step.
    pub fn stats(&self) -> EngineStats {
        lock(&self.shared.stats).clone()
    }

    /// KV memory waste sampled over the steps so far.
    pub fn kv_waste(&self) -> KvWasteStats {
        lock(&self.shared.waste).clone()
    }

    pub fn heartbeat(&self) -> Heartbeat {
        *lock(&self.shared.heartbeat)
    }

    /// Longest prompt + output a request may ask for (the model's context length, or less when
    /// configured or when the KV pool holds less).
    pub fn max_model_len(&self) -> usize {
        self.shared.limits.max_model_len
    }

    pub fn model_info(&self) -> ModelInfo {
        self.shared.info.clone()
    }

    /// One line saying where this engine samples tokens and why, for logs.
    pub fn sampling_note(&self) -> String {
        lock(&self.shared.sampling_note).clone()
    }

    /// Stops accepting requests (`submit` answers `ShuttingDown`); accepted ones finish, then
    /// the engine thread exits.
    pub fn shutdown(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        let _ = self.tx.send(Command::Shutdown);
    }

    /// [`EngineHandle::shutdown`], then waits until the engine thread has finished and dropped
    /// the model (so GPU memory and graphs are released before, say, the process exits). False
    /// on timeout.
    pub fn shutdown_and_join(&self, timeout: Duration) -> bool {
        self.shutdown();
        self.shared.wait_exited(timeout)
    }

    /// Waits until every accepted request has ended (its terminal event sent, its blocks freed
    /// and the stats updated). False on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.shared.wait_idle(timeout)
    }

    /// Aborts every request in flight (each ends with `Finished { reason: Abort }` + `Done`).
    pub fn abort_all(&self) {
        let _ = self.tx.send(Command::AbortAll);
    }
}

/// One request's event stream. Dropping it (or [`RequestHandle::abort`]) before the terminal
/// event aborts the request; the engine frees its KV blocks within one step.
pub struct RequestHandle {
    pub id: u64,
    rx: UnboundedReceiver<EngineEvent>,
    tx: Sender<Command>,
    ended: bool,
}

impl RequestHandle {
    fn note(&mut self, ev: &Option<EngineEvent>) {
        if matches!(ev, None | Some(EngineEvent::Done { .. }) | Some(EngineEvent::Error { .. })) {
            self.ended = true;
        }
    }

    /// The next event; `None` after the terminal event.
    pub async fn recv(&mut self) -> Option<EngineEvent> {
        let ev = self.rx.recv().await;
        self.note(&ev);
        ev
    }

    /// The next event, blocking the thread. Must not be called from async code (tokio panics
    /// when a runtime thread blocks); use [`Self::recv`] there.
    pub fn blocking_recv(&mut self) -> Option<EngineEvent> {
        let ev = self.rx.blocking_recv();
        self.note(&ev);
        ev
    }

    /// An event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<EngineEvent> {
        let ev = self.rx.try_recv().ok();
        if ev.is_some() {
            self.note(&ev);
        }
        ev
    }

    /// Aborts the request (same as dropping the handle).
    pub fn abort(self) {}
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.tx.send(Command::Abort(self.id));
        }
    }
}
