//! `POST /v1/completions`.

use super::Arrived;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::generation::flight::Flight;
use crate::generation::{self, Flavor, Job};
use crate::protocol::completion::{CompletionRequest, CompletionResponse};
use crate::routes::openapi::CompletionStreamEvent;
use crate::state::{unix_now, AppState};
use crate::{guided, prompt, validate};
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use std::sync::Arc;

/// Text completion, streamed (SSE) or not.
#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion as JSON, or with `stream` an SSE stream of chunks of the same shape ending with `data: [DONE]`", content(
            (CompletionResponse = "application/json"),
            (CompletionStreamEvent = "text/event-stream"),
        )),
        (status = 404, description = "`model` is not the served model", body = ErrorBody),
        (status = 429, description = "Overloaded; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 500, description = "The engine failed the request", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody),
    )
)]
pub async fn completions(
    State(st): State<Arc<AppState>>,
    arrived: Option<Extension<Arrived>>,
    body: ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = super::arrived(arrived);
    st.warn_unknown_fields("/v1/completions", &body.unknown_fields);
    let req = body.value;
    st.check_model(req.model.as_deref())?;
    let asked = guided::spec(&req.guided())?;
    guided::check_ignore_eos(&asked, req.ignore_eos)?;
    let (permit, loaded) = st.admit()?;
    let plan = validate::plan(&req.sampling(), &st.cfg, loaded.codec.vocab_size())?;
    // A new (short) grammar compiles from here on, beside the prompt's rendering and prefill.
    let compiling = guided::compile(&loaded.codec, asked).await?;
    let echo = req.echo.unwrap_or(false);
    if echo && plan.logprobs {
        return Err(ApiError::bad_value(
            "echo",
            "echo together with logprobs is not supported (prompt logprobs are not computed)",
        ));
    }
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    let prompts = prompt::completion_prompts(req.prompt, &st.cfg, &loaded.codec, echo).await?;
    let reqs = generation::requests(&plan, &prompts, loaded.backend.max_model_len(), "prompt")?;
    let subs = generation::submit_all(loaded.backend.as_ref(), reqs, compiling).await?;
    let job = Job {
        flavor: Flavor::Completion,
        id: st.next_id("cmpl"),
        created: unix_now(),
        model: st.cfg.served_model_name.clone(),
        n: plan.n,
        logprobs: plan.logprobs,
        include_usage,
        echo: prompts.into_iter().map(|p| p.text).collect(),
        codec: Arc::clone(&loaded.codec),
        flight: Flight::new(permit, Arc::clone(&st.metrics), arrived),
        tools: None,
    };
    generation::respond(job, subs, stream, st.cfg.sse_keep_alive).await
}
