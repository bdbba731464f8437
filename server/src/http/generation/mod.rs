//! Running an accepted request: submit its prompts to the engine, then either collect the
//! events into one JSON body ([`collect`]) or forward them as SSE chunks ([`sse`]).
//!
//! Invariants: streamed and non-streamed answers are built from the same events by the same
//! rules (text = the concatenation of `Token` texts and the `Finished` text), so the streamed
//! text equals the non-streamed one for the same seeded request; choice `i` of prompt `p` is
//! index `p * n + i`; a request whose prompts were only partly accepted is dropped whole
//! (the accepted parts are aborted by dropping their streams).

pub mod collect;
pub mod events;
pub mod flight;
pub mod logprobs;
pub mod sse;

use crate::backend::{Backend, RequestStream};
use crate::codec::Codec;
use crate::engine_api::GenerateRequest;
use crate::error::ApiError;
use crate::guided::Verdict;
use crate::prompt::Prompt;
use crate::validate::{self, GenPlan};
use axum::response::{IntoResponse, Response};
use flight::Flight;
use kiln_runtime::sample::ConstraintSource;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Completion,
    Chat,
}

/// Everything needed to answer one HTTP request once the engine accepted it.
pub struct Job {
    pub flavor: Flavor,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// Choices per prompt.
    pub n: usize,
    pub logprobs: bool,
    pub include_usage: bool,
    /// Per prompt: the text to echo in front of each choice (completions `echo`).
    pub echo: Vec<Option<String>>,
    pub codec: Arc<dyn Codec>,
    pub flight: Flight,
    /// Chat with tools: the offered tools' names (tool calls are parsed from the output).
    pub tools: Option<Vec<String>>,
}

impl Job {
    pub fn choices(&self) -> usize {
        self.echo.len() * self.n
    }
}

/// The engine requests of `prompts` under `plan`.
pub fn requests(
    plan: &GenPlan,
    prompts: &[Prompt],
    max_model_len: usize,
    prompt_param: &str,
) -> Result<Vec<GenerateRequest>, ApiError> {
    prompts
        .iter()
        .map(|p| {
            let params = validate::for_prompt(plan, p.ids.len(), max_model_len, prompt_param)?;
            Ok(GenerateRequest { prompt_ids: p.ids.clone(), params, n: plan.n, beam: plan.beam.clone() })
        })
        .collect()
}

/// Submits every request, or none: on a refusal the accepted ones are dropped (aborted).
/// Every request follows `constraint` when given; `verdict` is its compiler's answer (the
/// grammar may still be compiling while the requests start), and a grammar that does not
/// compile is the error — before a refusal's, as when compiling came first — with every
/// accepted request dropped.
pub async fn submit_all(
    backend: &dyn Backend,
    reqs: Vec<GenerateRequest>,
    (constraint, verdict): (Option<Arc<dyn ConstraintSource>>, Verdict),
) -> Result<Vec<Box<dyn RequestStream>>, ApiError> {
    let mut subs = Vec::with_capacity(reqs.len());
    for r in reqs {
        match backend.submit_constrained(r, constraint.clone()) {
            Ok(s) => subs.push(s),
            Err(e) => {
                drop(subs);
                verdict.wait().await?;
                return Err(e.into());
            }
        }
    }
    verdict.wait().await?;
    Ok(subs)
}

/// Answers the request: SSE when `stream`, else one JSON body.
pub async fn respond(
    job: Job,
    subs: Vec<Box<dyn RequestStream>>,
    stream: bool,
    keep_alive: std::time::Duration,
) -> Result<Response, ApiError> {
    job.flight.metrics().accepted.fetch_add(subs.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if stream {
        Ok(sse::stream(job, subs, keep_alive).into_response())
    } else {
        collect::collect(job, subs).await
    }
}
