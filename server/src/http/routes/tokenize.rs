//! `POST /tokenize` and `POST /detokenize` with the model's tokenizer (and chat template).

use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::prompt;
use crate::protocol::tokenize::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use std::sync::Arc;

/// Token ids of a prompt or of a conversation rendered with the chat template.
#[utoipa::path(
    post,
    path = "/tokenize",
    request_body = TokenizeRequest,
    responses(
        (status = 200, body = TokenizeResponse),
        (status = 404, description = "`model` is not the served model", body = ErrorBody),
        (status = 500, description = "The tokenizer failed (a bug, never bad input)", body = ErrorBody),
        (status = 503, description = "The model is loading", body = ErrorBody),
    )
)]
pub async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    st.warn_unknown_fields("/tokenize", &body.unknown_fields);
    let req = body.value;
    st.check_model(req.model.as_deref())?;
    let loaded = st.model()?;
    let tokens = match (req.prompt, req.messages) {
        (Some(text), None) => {
            let bos = loaded.codec.default_bos() && req.add_special_tokens.unwrap_or(true);
            prompt::encode_text(text, bos, &st.cfg, &loaded.codec).await?
        }
        (None, Some(messages)) => {
            let messages = prompt::chat_messages(Some(messages))?;
            prompt::chat_prompt(messages, None, req.add_generation_prompt.unwrap_or(true), &st.cfg, &loaded.codec)
                .await?
                .ids
        }
        (None, None) => {
            return Err(ApiError::invalid(
                Some("prompt"),
                "missing_field",
                "give `prompt` (text) or `messages` (a conversation)",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                Some("messages"),
                "invalid_value",
                "give either `prompt` or `messages`, not both",
            ))
        }
    };
    Ok(Json(TokenizeResponse { count: tokens.len(), tokens, max_model_len: loaded.backend.max_model_len() }))
}

/// The text of token ids (special tokens left out).
#[utoipa::path(
    post,
    path = "/detokenize",
    request_body = DetokenizeRequest,
    responses(
        (status = 200, body = DetokenizeResponse),
        (status = 404, description = "`model` is not the served model", body = ErrorBody),
        (status = 500, description = "The tokenizer failed (a bug, never bad input)", body = ErrorBody),
        (status = 503, description = "The model is loading", body = ErrorBody),
    )
)]
pub async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    st.warn_unknown_fields("/detokenize", &body.unknown_fields);
    let req = body.value;
    st.check_model(req.model.as_deref())?;
    let loaded = st.model()?;
    let tokens =
        req.tokens.ok_or_else(|| ApiError::invalid(Some("tokens"), "missing_field", "`tokens` is required"))?;
    prompt::check_ids(&tokens, loaded.codec.vocab_size(), "tokens")?;
    let text = prompt::decode_ids(tokens, &loaded.codec).await?;
    Ok(Json(DetokenizeResponse { prompt: text }))
}
