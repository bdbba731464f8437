//! The route table and the layers around it.
//!
//! Layers, outermost first: `track` (arrival time for latency metrics; HTTP status and
//! failure-reason counters), `require_key` (API keys on every path but `/health` and
//! `/metrics`), the body limit. Unknown paths and wrong methods answer in OpenAI's error shape
//! (405 keeps axum's `Allow` header).

pub mod chat;
pub mod completions;
pub mod health;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod tokenize;

use crate::auth::require_key;
use crate::error::{ApiError, Failure};
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Instant;

/// When the request reached the router (start of TTFT and end-to-end latency).
#[derive(Clone, Copy, Debug)]
pub struct Arrived(pub Instant);

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{id}", get(models::get_model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(from_fn_with_state(Arc::clone(&state), require_key))
        .layer(from_fn_with_state(Arc::clone(&state), track))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn track(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Arrived(Instant::now()));
    let resp = next.run(req).await;
    state.metrics.status(resp.status().as_u16());
    if let Some(f) = resp.extensions().get::<Failure>() {
        state.metrics.fail(*f);
    }
    resp
}

/// The arrival time recorded by `track` (now, if a test calls a handler directly).
pub fn arrived(ext: Option<axum::Extension<Arrived>>) -> Instant {
    ext.map_or_else(Instant::now, |e| e.0 .0)
}
