//! `GET /health`: 200 only when the model is loaded, the server is not draining, and the
//! engine loop is alive and has advanced within `heartbeat_timeout` (idle waits count as
//! progress, so an idle engine stays healthy while a wedged one does not). Otherwise 503 in
//! OpenAI's error shape, saying which.

use crate::error::{ApiError, ErrorBody};
use crate::state::{AppState, Phase};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct HealthOk {
    /// `ok`
    pub status: &'static str,
}

/// Liveness and readiness.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthOk), (status = 503, description = "Loading, draining, or the engine is not advancing", body = ErrorBody)))]
pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    match check(&st) {
        Ok(()) => Json(HealthOk { status: "ok" }).into_response(),
        Err(e) => e.into_response(),
    }
}

fn check(st: &AppState) -> Result<(), ApiError> {
    match st.phase() {
        Phase::Loading => return Err(ApiError::loading()),
        Phase::Draining => return Err(ApiError::draining()),
        Phase::Ready => {}
    }
    let loaded = st.model()?;
    let hb = loaded.backend.heartbeat();
    if !hb.alive {
        return Err(unhealthy("the engine loop has stopped".into()));
    }
    let age = hb.last_progress.elapsed();
    if age > st.cfg.heartbeat_timeout {
        return Err(unhealthy(format!(
            "the engine loop has not advanced for {:.1} s (limit {:.1} s)",
            age.as_secs_f64(),
            st.cfg.heartbeat_timeout.as_secs_f64()
        )));
    }
    Ok(())
}

fn unhealthy(message: String) -> ApiError {
    let mut e = ApiError::engine(message);
    e.status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    e.kind = "unavailable_error";
    e.code = Some("engine_unhealthy");
    e
}
