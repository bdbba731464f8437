//! Why the engine could not start. Errors after start reach callers as
//! [`super::EngineEvent::Error`] (per request) or [`super::SubmitError`] (at submit), never as
//! panics.

use crate::kv::KvError;
use crate::model::ModelError;
use crate::sched::SchedError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A limit in [`super::EngineConfig`] is out of range, or does not fit the model.
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    /// Sizing or allocating the KV cache failed.
    #[error("KV cache: {0}")]
    Kv(#[from] KvError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sched(#[from] SchedError),
    /// The engine thread could not be spawned.
    #[error("starting the engine thread: {0}")]
    Spawn(#[from] std::io::Error),
}
