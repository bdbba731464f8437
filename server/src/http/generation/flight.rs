//! [`Flight`]: one admitted request's admission permit and latency bookkeeping, alive exactly
//! as long as its response. It records time to first token, inter-token gaps per choice and
//! end-to-end latency; dropped before [`Flight::complete`] or [`Flight::fail`], it counts a
//! client disconnect (the response future or body stream was dropped by the server because
//! the client went away).

use crate::admission::Permit;
use crate::error::Failure;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Completed,
    Failed,
}

pub struct Flight {
    _permit: Permit,
    metrics: Arc<Metrics>,
    arrived: Instant,
    first_output: bool,
    last_token: Vec<Option<Instant>>,
    outcome: Outcome,
}

impl Flight {
    pub fn new(permit: Permit, metrics: Arc<Metrics>, arrived: Instant) -> Self {
        Flight {
            _permit: permit,
            metrics,
            arrived,
            first_output: false,
            last_token: Vec::new(),
            outcome: Outcome::Pending,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn output(&mut self, now: Instant) {
        if !self.first_output {
            self.first_output = true;
            self.metrics.ttft.observe((now - self.arrived).as_secs_f64());
        }
    }

    /// A generated token of `choice`.
    pub fn on_token(&mut self, choice: usize) {
        let now = Instant::now();
        self.output(now);
        if self.last_token.len() <= choice {
            self.last_token.resize(choice + 1, None);
        }
        if let Some(prev) = self.last_token[choice].replace(now) {
            self.metrics.itl.observe((now - prev).as_secs_f64());
        }
    }

    /// A choice finished (beam search's first output is a finish).
    pub fn on_finished(&mut self) {
        self.output(Instant::now());
    }

    pub fn complete(&mut self) {
        if self.outcome == Outcome::Pending {
            self.outcome = Outcome::Completed;
            self.metrics.e2e.observe(self.arrived.elapsed().as_secs_f64());
        }
    }

    /// Marks the request failed without counting it: the error response carries its
    /// [`Failure`] and the HTTP metrics layer counts it from there.
    pub fn mark_reported(&mut self) {
        if self.outcome == Outcome::Pending {
            self.outcome = Outcome::Failed;
        }
    }

    /// Counts a failure that has no error response of its own (one inside an SSE stream).
    pub fn fail(&mut self, why: Failure) {
        if self.outcome == Outcome::Pending {
            self.outcome = Outcome::Failed;
            self.metrics.fail(why);
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.outcome == Outcome::Pending {
            self.metrics.fail(Failure::ClientDisconnect);
        }
    }
}
