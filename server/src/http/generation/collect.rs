//! Non-streamed answers: every event of every prompt's stream, folded into one response.

use super::events::merge;
use super::{logprobs, Flavor, Job};
use crate::backend::RequestStream;
use crate::engine_api::EngineEvent;
use crate::error::ApiError;
use crate::protocol::chat::{ChatChoice, ChatCompletionResponse, ChatLogprobs, ChatMessageOut};
use crate::protocol::common::UsageInfo;
use crate::protocol::completion::{CompletionChoice, CompletionLogprobs, CompletionResponse};
use crate::tools::parse;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use kiln_runtime::sample::FinishReason;

#[derive(Default)]
struct Choice {
    text: String,
    finish: Option<FinishReason>,
    chat_lp: ChatLogprobs,
    cmpl_lp: CompletionLogprobs,
}

/// Sums of the engine's per-prompt usage.
#[derive(Default, Clone, Copy)]
pub struct UsageSum {
    pub prompt: usize,
    pub completion: usize,
    pub cached: usize,
}

impl UsageSum {
    pub fn add(&mut self, u: &crate::engine_api::Usage) {
        self.prompt += u.prompt_tokens;
        self.completion += u.completion_tokens;
        self.cached += u.cached_prompt_tokens;
    }

    pub fn info(&self) -> UsageInfo {
        UsageInfo::new(self.prompt, self.completion, self.cached)
    }
}

pub async fn collect(mut job: Job, subs: Vec<Box<dyn RequestStream>>) -> Result<Response, ApiError> {
    let (choices, usage) = match fold(&mut job, subs).await {
        Ok(r) => r,
        Err(e) => {
            job.flight.mark_reported();
            return Err(e);
        }
    };
    job.flight.complete();
    let tools = job.tools.take();
    let finish = |c: &Choice| c.finish.map(|r| r.as_str().to_string());
    // With tools, the text is read for tool calls; a choice that stopped after calls ends
    // with `tool_calls`.
    let message = |c: &Choice| match &tools {
        None => (ChatMessageOut { role: "assistant", content: Some(c.text.clone()), tool_calls: None }, finish(c)),
        Some(names) => {
            let (content, calls) = parse::parse(&c.text, names.clone());
            let fin = match c.finish {
                Some(FinishReason::Stop) if !calls.is_empty() => Some("tool_calls".to_string()),
                _ => finish(c),
            };
            (ChatMessageOut { role: "assistant", content, tool_calls: (!calls.is_empty()).then_some(calls) }, fin)
        }
    };
    let body = match job.flavor {
        Flavor::Chat => Json(ChatCompletionResponse {
            id: job.id,
            object: "chat.completion",
            created: job.created,
            model: job.model,
            choices: choices
                .into_iter()
                .enumerate()
                .map(|(index, c)| {
                    let (message, finish_reason) = message(&c);
                    ChatChoice { index, finish_reason, logprobs: job.logprobs.then_some(c.chat_lp), message }
                })
                .collect(),
            usage: usage.info(),
        })
        .into_response(),
        Flavor::Completion => Json(CompletionResponse {
            id: job.id,
            object: "text_completion",
            created: job.created,
            model: job.model,
            choices: choices
                .into_iter()
                .enumerate()
                .map(|(index, c)| CompletionChoice {
                    index,
                    finish_reason: finish(&c),
                    logprobs: job.logprobs.then_some(c.cmpl_lp),
                    text: c.text,
                })
                .collect(),
            usage: Some(usage.info()),
        })
        .into_response(),
    };
    Ok(body)
}

/// Folds every event into per-choice text, finish reason and logprobs, plus usage.
async fn fold(job: &mut Job, subs: Vec<Box<dyn RequestStream>>) -> Result<(Vec<Choice>, UsageSum), ApiError> {
    let n = job.n;
    let total = job.choices();
    let mut choices: Vec<Choice> =
        (0..total).map(|c| Choice { text: job.echo[c / n].clone().unwrap_or_default(), ..Choice::default() }).collect();
    let mut usage = UsageSum::default();
    let mut done = vec![false; subs.len()];
    let mut events = merge(subs);
    while let Some((pos, ev)) = events.next().await {
        match ev.ok_or_else(stopped_early)? {
            EngineEvent::Token { index, token, text, logprob } => {
                let c = choice_index(pos, index, n, total)?;
                job.flight.on_token(c);
                let ch = &mut choices[c];
                if let (true, Some(lp)) = (job.logprobs, logprob) {
                    match job.flavor {
                        Flavor::Chat => ch.chat_lp.content.push(logprobs::chat_entry(job.codec.as_ref(), token, &lp)),
                        Flavor::Completion => {
                            logprobs::completion_push(job.codec.as_ref(), &mut ch.cmpl_lp, token, &lp, ch.text.len())
                        }
                    }
                }
                ch.text.push_str(&text);
            }
            EngineEvent::Finished { index, reason, text, .. } => {
                let c = choice_index(pos, index, n, total)?;
                job.flight.on_finished();
                job.flight.metrics().finished(reason);
                choices[c].text.push_str(&text);
                choices[c].finish = Some(reason);
            }
            EngineEvent::Done { usage: u } => {
                usage.add(&u);
                done[pos] = true;
            }
            EngineEvent::Error { message } => return Err(ApiError::engine(message)),
        }
    }
    if done.iter().any(|d| !d) {
        return Err(stopped_early());
    }
    Ok((choices, usage))
}

pub fn stopped_early() -> ApiError {
    ApiError::engine("the engine stopped before the request finished")
}

/// The response index of choice `index` of stream `pos`; an index the request never asked
/// for is an engine fault, reported as one instead of a panic.
pub fn choice_index(pos: usize, index: usize, n: usize, total: usize) -> Result<usize, ApiError> {
    let c = pos * n + index;
    if index < n && c < total {
        Ok(c)
    } else {
        Err(ApiError::engine(format!("the engine sent an event for choice {index} of a request with n = {n}")))
    }
}
