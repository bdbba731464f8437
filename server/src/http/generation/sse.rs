//! Streamed answers: engine events → SSE chunks (`data: {json}\n\n`), ending with
//! `data: [DONE]\n\n`.
//!
//! Invariants: every stream ends with `[DONE]`, also after an engine error, which is sent as a
//! `data: {"error": {...}}` event first (the status line went out long before); each choice's
//! last chunk carries its `finish_reason`; with `stream_options.include_usage` the chunk
//! before `[DONE]` has empty `choices` and the `usage`; the body stream owns the request's
//! engine streams and its [`super::flight::Flight`], so a client that goes away (the body is
//! dropped) aborts the request and releases its admission slot.

use super::collect::{choice_index, stopped_early, UsageSum};
use super::events::{merge, Tagged};
use super::{logprobs, Flavor, Job};
use crate::backend::RequestStream;
use crate::engine_api::{EngineEvent, TokenLogprob};
use crate::error::{ApiError, Failure};
use crate::protocol::chat::{ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs};
use crate::protocol::completion::{CompletionChoice, CompletionLogprobs, CompletionResponse};
use crate::protocol::tools::{FunctionCallDelta, ToolCallDelta};
use crate::tools::parse::{Piece, ToolStream};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, BoxStream, SelectAll, Stream, StreamExt};
use kiln_runtime::sample::FinishReason;
use serde::Serialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

struct State {
    job: Job,
    events: SelectAll<BoxStream<'static, Tagged>>,
    pending: VecDeque<Event>,
    done: Vec<bool>,
    usage: UsageSum,
    /// Bytes of text sent per choice (completions logprobs `text_offset`).
    sent: Vec<usize>,
    /// Chat with tools: per choice, the reader that turns text into content and tool calls.
    tool_streams: Vec<ToolStream>,
    ended: bool,
}

pub fn stream(
    job: Job,
    subs: Vec<Box<dyn RequestStream>>,
    keep_alive: Duration,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let total = job.choices();
    let tool_streams = match &job.tools {
        Some(names) => (0..total).map(|_| ToolStream::new(names.clone())).collect(),
        None => Vec::new(),
    };
    let mut st = State {
        tool_streams,
        done: vec![false; subs.len()],
        events: merge(subs),
        job,
        pending: VecDeque::new(),
        usage: UsageSum::default(),
        sent: vec![0; total],
        ended: false,
    };
    st.prelude();
    let body = stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.pending.pop_front() {
                return Some((Ok(e), st));
            }
            if st.ended {
                return None;
            }
            match st.events.next().await {
                Some((pos, Some(ev))) => st.on_event(pos, ev),
                Some((_, None)) | None => st.fail(stopped_early()),
            }
        }
    });
    Sse::new(body).keep_alive(KeepAlive::new().interval(keep_alive))
}

fn data<T: Serialize>(v: &T) -> Event {
    // serde_json escapes CR and LF inside strings, so the data never breaks SSE framing.
    match serde_json::to_string(v) {
        Ok(s) => Event::default().data(s),
        Err(e) => Event::default().data(ApiError::internal(format!("could not serialize a chunk: {e}")).json()),
    }
}

impl State {
    /// Chat streams open with each choice's role; completions with the echoed prompt.
    fn prelude(&mut self) {
        for c in 0..self.job.choices() {
            match self.job.flavor {
                Flavor::Chat => {
                    let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()), tool_calls: None };
                    let e = self.chat_chunk(c, delta, None, None);
                    self.pending.push_back(e);
                }
                Flavor::Completion => {
                    if let Some(text) = self.job.echo[c / self.job.n].clone() {
                        self.sent[c] = text.len();
                        let e = self.completion_chunk(c, text, None, None);
                        self.pending.push_back(e);
                    }
                }
            }
        }
    }

    fn on_event(&mut self, pos: usize, ev: EngineEvent) {
        let (n, total) = (self.job.n, self.job.choices());
        match ev {
            EngineEvent::Token { index, token, text, logprob } => {
                let c = match choice_index(pos, index, n, total) {
                    Ok(c) => c,
                    Err(e) => return self.fail(e),
                };
                self.job.flight.on_token(c);
                let lp = if self.job.logprobs { logprob.map(|lp| (token, lp)) } else { None };
                if !text.is_empty() || lp.is_some() {
                    self.push_text(c, text, lp, None);
                }
            }
            EngineEvent::Finished { index, reason, text, .. } => {
                let c = match choice_index(pos, index, n, total) {
                    Ok(c) => c,
                    Err(e) => return self.fail(e),
                };
                self.job.flight.on_finished();
                self.job.flight.metrics().finished(reason);
                self.push_text(c, text, None, Some(reason));
            }
            EngineEvent::Done { usage } => {
                self.usage.add(&usage);
                self.done[pos] = true;
                if self.done.iter().all(|&d| d) {
                    if self.job.include_usage {
                        let e = self.usage_chunk();
                        self.pending.push_back(e);
                    }
                    self.pending.push_back(Event::default().data("[DONE]"));
                    self.job.flight.complete();
                    self.ended = true;
                }
            }
            EngineEvent::Error { message } => self.fail(ApiError::engine(message)),
        }
    }

    /// Ends the stream with an error event and `[DONE]`; the other prompts' engine streams
    /// are dropped now (aborted), not when the client has read the rest.
    fn fail(&mut self, e: ApiError) {
        self.job.flight.fail(Failure::EngineError);
        self.events = SelectAll::new();
        self.pending.push_back(Event::default().data(e.json()));
        self.pending.push_back(Event::default().data("[DONE]"));
        self.ended = true;
    }

    fn push_text(&mut self, c: usize, text: String, lp: Option<(u32, TokenLogprob)>, finish: Option<FinishReason>) {
        let e = match self.job.flavor {
            Flavor::Chat => {
                let lp = lp.map(|(t, lp)| ChatLogprobs {
                    content: vec![logprobs::chat_entry(self.job.codec.as_ref(), t, &lp)],
                });
                if !self.tool_streams.is_empty() {
                    return self.push_tool_text(c, text, lp, finish);
                }
                let delta = ChatDelta { role: None, content: (!text.is_empty()).then_some(text), tool_calls: None };
                self.chat_chunk(c, delta, lp, finish)
            }
            Flavor::Completion => {
                let lp = lp.map(|(t, lp)| {
                    let mut out = CompletionLogprobs::default();
                    logprobs::completion_push(self.job.codec.as_ref(), &mut out, t, &lp, self.sent[c]);
                    out
                });
                self.sent[c] += text.len();
                self.completion_chunk(c, text, lp, finish)
            }
        };
        self.pending.push_back(e);
    }

    /// Chat with tools: the text goes through the choice's [`ToolStream`]; each content piece,
    /// each call's start (id, type, name) and each piece of its arguments is a chunk (calls as
    /// `delta.tool_calls`), and a choice that stopped after calls ends with `tool_calls`.
    fn push_tool_text(&mut self, c: usize, text: String, mut lp: Option<ChatLogprobs>, finish: Option<FinishReason>) {
        let ts = &mut self.tool_streams[c];
        let mut pieces = ts.push(&text);
        if finish.is_some() {
            pieces.extend(ts.finish());
        }
        for p in pieces {
            let delta = match p {
                Piece::Content(t) => ChatDelta { role: None, content: Some(t), tool_calls: None },
                Piece::CallStart { index, id, name } => {
                    let function = FunctionCallDelta { name: Some(name), arguments: String::new() };
                    let d = ToolCallDelta { index, id: Some(id), kind: Some("function"), function };
                    ChatDelta { role: None, content: None, tool_calls: Some(vec![d]) }
                }
                Piece::Arguments { index, text } => {
                    let function = FunctionCallDelta { name: None, arguments: text };
                    let d = ToolCallDelta { index, id: None, kind: None, function };
                    ChatDelta { role: None, content: None, tool_calls: Some(vec![d]) }
                }
            };
            let e = self.chat_chunk(c, delta, lp.take(), None);
            self.pending.push_back(e);
        }
        if lp.is_some() || finish.is_some() {
            let reason = match finish {
                Some(FinishReason::Stop) if self.tool_streams[c].calls > 0 => Some("tool_calls".to_string()),
                other => other.map(|r| r.as_str().to_string()),
            };
            let e = self.chat_chunk_reason(c, ChatDelta::default(), lp, reason);
            self.pending.push_back(e);
        }
    }

    fn chat_chunk(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<FinishReason>,
    ) -> Event {
        self.chat_chunk_reason(index, delta, logprobs, finish.map(|r| r.as_str().to_string()))
    }

    fn chat_chunk_reason(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<String>,
    ) -> Event {
        data(&ChatCompletionChunk {
            id: self.job.id.clone(),
            object: "chat.completion.chunk",
            created: self.job.created,
            model: self.job.model.clone(),
            choices: vec![ChatChunkChoice { index, delta, logprobs, finish_reason }],
            usage: None,
        })
    }

    fn completion_chunk(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<FinishReason>,
    ) -> Event {
        data(&CompletionResponse {
            id: self.job.id.clone(),
            object: "text_completion",
            created: self.job.created,
            model: self.job.model.clone(),
            choices: vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: finish.map(|r| r.as_str().to_string()),
            }],
            usage: None,
        })
    }

    fn usage_chunk(&self) -> Event {
        let usage = Some(self.usage.info());
        match self.job.flavor {
            Flavor::Chat => data(&ChatCompletionChunk {
                id: self.job.id.clone(),
                object: "chat.completion.chunk",
                created: self.job.created,
                model: self.job.model.clone(),
                choices: vec![],
                usage,
            }),
            Flavor::Completion => data(&CompletionResponse {
                id: self.job.id.clone(),
                object: "text_completion",
                created: self.job.created,
                model: self.job.model.clone(),
                choices: vec![],
                usage,
            }),
        }
    }
}
