//! The HTTP layer's view of the engine: [`Backend`] (submit, stats, liveness, shutdown) and
//! [`RequestStream`] (one accepted request's events). The real engine implements them in
//! [`crate::engine_backend`]; [`crate::fake`] implements them for tests and the HTTP
//! benchmark.
//!
//! Contract (the engine's, restated for implementors): `submit` answers at once; an accepted
//! request yields its events and then exactly one `Done` or `Error`, after which `recv` returns
//! `None`; dropping the stream aborts the request.

use crate::engine_api::{EngineEvent, EngineStats, GenerateRequest, Heartbeat, SubmitError};
use crate::error::ApiError;
use kiln_runtime::sample::ConstraintSource;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One accepted request. Dropping it aborts the request in the engine.
pub trait RequestStream: Send {
    /// The next event; `None` after the final `Done`/`Error`, or if the engine went away.
    fn recv(&mut self) -> BoxFuture<'_, Option<EngineEvent>>;
}

pub trait Backend: Send + Sync + 'static {
    fn submit(&self, req: GenerateRequest) -> Result<Box<dyn RequestStream>, SubmitError>;
    /// [`Backend::submit`] with a grammar every sequence of the request follows. A backend
    /// that cannot constrain its output refuses such requests.
    fn submit_constrained(
        &self,
        req: GenerateRequest,
        constraint: Option<Arc<dyn ConstraintSource>>,
    ) -> Result<Box<dyn RequestStream>, SubmitError> {
        match constraint {
            None => self.submit(req),
            Some(_) => Err(SubmitError::Invalid("this backend does not support constrained output".into())),
        }
    }
    fn stats(&self) -> EngineStats;
    fn heartbeat(&self) -> Heartbeat;
    /// Longest prompt + output the engine takes.
    fn max_model_len(&self) -> usize;
    /// Abort every request in flight (each ends with an abort finish or an error event).
    fn abort_all(&self);
    /// Stop the engine loop (after drain).
    fn shutdown(&self);
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(m) => ApiError::invalid(None, "invalid_request", m),
            SubmitError::Overloaded(_) => ApiError::overloaded(e.to_string()),
            SubmitError::ShuttingDown => ApiError::draining(),
        }
    }
}
