//! `POST /v1/chat/completions`: messages rendered with the model's chat template.

use super::Arrived;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::generation::flight::Flight;
use crate::generation::{self, Flavor, Job};
use crate::protocol::chat::{ChatCompletionRequest, ChatCompletionResponse};
use crate::routes::openapi::ChatCompletionStreamEvent;
use crate::state::{unix_now, AppState};
use crate::{guided, prompt, tools, validate};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use std::sync::Arc;

/// Chat completion, streamed (SSE) or not.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion as JSON, or with `stream` an SSE stream of `chat.completion.chunk` objects ending with `data: [DONE]`", content(
            (ChatCompletionResponse = "application/json"),
            (ChatCompletionStreamEvent = "text/event-stream"),
        )),
        (status = 404, description = "`model` is not the served model", body = ErrorBody),
        (status = 429, description = "Overloaded; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 500, description = "The engine failed the request", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody),
    )
)]
pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    arrived: Option<Extension<Arrived>>,
    body: ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = super::arrived(arrived);
    st.warn_unknown_fields("/v1/chat/completions", &body.unknown_fields);
    let req = body.value;
    st.check_model(req.model.as_deref())?;
    let tools = tools::plan(req.tools.clone(), req.tool_choice.clone(), req.parallel_tool_calls)?;
    let asked = match (guided::spec(&req.guided())?, tools.as_ref().and_then(|t| t.spec())) {
        (Some((_, param)), Some(_)) => {
            return Err(ApiError::bad_value(
                param,
                format!("`{param}` and a `tool_choice` that forces a call both constrain the output: give one"),
            ))
        }
        (Some(a), None) => Some(a),
        (None, Some(spec)) => Some((spec, "tools")),
        (None, None) => None,
    };
    guided::check_ignore_eos(&asked, req.ignore_eos)?;
    let (permit, loaded) = st.admit()?;
    let plan = validate::plan(&req.sampling(), &st.cfg, loaded.codec.vocab_size())?;
    // A new (short) grammar compiles from here on, beside the prompt's rendering and prefill.
    let compiling = guided::compile(&loaded.codec, asked).await?;
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    let messages = prompt::chat_messages(req.messages)?;
    let p = prompt::chat_prompt(
        messages,
        tools.as_ref(),
        req.add_generation_prompt.unwrap_or(true),
        &st.cfg,
        &loaded.codec,
    )
    .await?;
    let reqs = generation::requests(&plan, std::slice::from_ref(&p), loaded.backend.max_model_len(), "messages")?;
    let subs = generation::submit_all(loaded.backend.as_ref(), reqs, compiling).await?;
    let job = Job {
        flavor: Flavor::Chat,
        id: st.next_id("chatcmpl"),
        created: unix_now(),
        model: st.cfg.served_model_name.clone(),
        n: plan.n,
        logprobs: plan.logprobs,
        include_usage,
        echo: vec![None],
        codec: Arc::clone(&loaded.codec),
        flight: Flight::new(permit, Arc::clone(&st.metrics), arrived),
        tools: tools.map(|t| t.names()),
    };
    generation::respond(job, subs, stream, st.cfg.sse_keep_alive).await
}
