//! `GET /v1/models` and `GET /v1/models/{id}`: served from configuration, so they answer
//! while the model loads (without `max_model_len` then).

use crate::error::{ApiError, ErrorBody};
use crate::protocol::models::{ModelCard, ModelList};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use std::sync::Arc;

fn card(st: &AppState) -> ModelCard {
    ModelCard {
        id: st.cfg.served_model_name.clone(),
        object: "model",
        created: st.started_unix,
        owned_by: "kiln",
        max_model_len: st.loaded().map(|l| l.backend.max_model_len()),
    }
}

/// The served model.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn list_models(State(st): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList { object: "list", data: vec![card(&st)] })
}

/// One model by name.
#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    params(("id" = String, Path, description = "The served model name")),
    responses(
        (status = 200, body = ModelCard),
        (status = 404, description = "`id` is not the served model", body = ErrorBody),
    )
)]
pub async fn get_model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    st.check_model(Some(&id))?;
    Ok(Json(card(&st)))
}
