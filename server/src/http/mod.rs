//! kiln's HTTP layer (`kiln serve`): an OpenAI-compatible API on axum in front of the engine.
//!
//! Data flows one way: request → [`extract`] (JSON, typed errors) → [`validate`] (sampling
//! parameters, context length) → [`backend::Backend::submit`] → engine events →
//! [`generation`] (one JSON body, or SSE chunks) → client.
//!
//! Invariants every module here keeps:
//! - no input makes a handler panic or answer 5xx; every failure is an [`error::ApiError`]
//!   rendered as OpenAI's body `{"error": {"message", "type", "param", "code"}}`, axum's own
//!   rejections included;
//! - a request the engine accepted is owned by exactly one [`backend::RequestStream`]; when the
//!   client goes away the response future or body stream is dropped, which drops the stream and
//!   aborts the request in the engine (its KV blocks are freed within one engine step);
//! - the in-flight count ([`admission`]) is taken before any tokenization and released when the
//!   response is fully sent or dropped, so overload is answered at once and drain can wait on it;
//! - the HTTP layer reaches the engine only through [`backend::Backend`] and the tokenizer only
//!   through [`codec::Codec`], so tests and the HTTP benchmark can run on [`fake`] doubles.

pub mod admission;
pub mod auth;
pub mod backend;
pub mod chat_data;
pub mod codec;
pub mod config;
pub mod engine_backend;
pub mod error;
pub mod extract;
pub mod fake;
pub mod generation;
pub mod guided;
pub mod metrics;
pub mod prompt;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod state;
pub mod structured;
pub mod tools;
pub mod validate;

pub use config::ServerConfig;
pub use server::{start, RunningServer, ServeError};
pub use state::AppState;

/// The engine's public types (GenerateRequest, EngineEvent, SubmitError, ...).
pub use kiln_runtime::engine as engine_api;
