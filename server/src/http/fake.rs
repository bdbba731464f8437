//! Test doubles: [`FakeBackend`], an engine whose "model step" costs nothing, and
//! [`ByteCodec`], a tokenizer whose tokens are bytes. They let the HTTP layer be tested for
//! behaviours a real model makes slow or hard to provoke (overload, mid-stream engine errors,
//! a stalled engine loop, drain timeouts) and benchmarked on its own (`max_tokens: 1` at
//! thousands of requests per second).
//!
//! They keep the engine's contract ([`crate::backend`]): events of choice `i` in order, one
//! `Finished` per choice, then exactly one `Done` (or one `Error`); dropping a stream aborts
//! it; `abort_all` ends every live stream with `abort`.
//!
//! Output: choice `i` of a request with seed `s` emits, at step `k`, the byte
//! `b'a' + (s + k + i) % 26` (the seed defaults to 0), so a seeded request is reproducible.

use crate::backend::{Backend, BoxFuture, RequestStream};
use crate::codec::{Codec, CodecError};
use crate::engine_api::{EngineEvent, EngineStats, GenerateRequest, Heartbeat, SubmitError, TokenLogprob, Usage};
use kiln_models::tokenizer::ChatMessage;
use kiln_runtime::sample::FinishReason;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub max_model_len: usize,
    /// Requests live at once (running + waiting) before `submit` says overloaded.
    pub capacity: usize,
    /// Sleep before each step (0: none, every event is ready at once).
    pub step_delay: Duration,
    /// Send an `Error` event after this many steps.
    pub fail_after: Option<usize>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig { max_model_len: 4096, capacity: 1024, step_delay: Duration::ZERO, fail_after: None }
    }
}

#[derive(Default)]
struct Counters {
    live: AtomicUsize,
    submitted: AtomicU64,
    aborted: AtomicU64,
    completed: AtomicU64,
    steps: AtomicU64,
    generated: AtomicU64,
    prompt: AtomicU64,
    /// Bumped by `abort_all`; streams started under an older epoch end with `abort`.
    abort_epoch: AtomicU64,
}

pub struct FakeBackend {
    cfg: FakeConfig,
    c: Arc<Counters>,
    alive: AtomicBool,
    stalled: AtomicBool,
    shut: AtomicBool,
}

impl FakeBackend {
    pub fn new(cfg: FakeConfig) -> Arc<Self> {
        Arc::new(FakeBackend {
            cfg,
            c: Arc::default(),
            alive: AtomicBool::new(true),
            stalled: AtomicBool::new(false),
            shut: AtomicBool::new(false),
        })
    }

    /// Requests whose stream is still held.
    pub fn live(&self) -> usize {
        self.c.live.load(Ordering::SeqCst)
    }

    pub fn submitted(&self) -> u64 {
        self.c.submitted.load(Ordering::SeqCst)
    }

    /// Requests dropped before their `Done` (client went away).
    pub fn aborted(&self) -> u64 {
        self.c.aborted.load(Ordering::SeqCst)
    }

    /// Make the heartbeat look stale (a wedged engine loop) or fresh again.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::SeqCst);
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }
}

impl Backend for FakeBackend {
    fn submit(&self, req: GenerateRequest) -> Result<Box<dyn RequestStream>, SubmitError> {
        if self.shut.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if req.prompt_ids.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if req.prompt_ids.len() + req.params.max_tokens > self.cfg.max_model_len {
            return Err(SubmitError::Invalid(format!("prompt + max_tokens exceeds {}", self.cfg.max_model_len)));
        }
        if self.c.live.fetch_add(1, Ordering::SeqCst) >= self.cfg.capacity {
            self.c.live.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Overloaded(format!("{} requests live", self.cfg.capacity)));
        }
        self.c.submitted.fetch_add(1, Ordering::SeqCst);
        self.c.prompt.fetch_add(req.prompt_ids.len() as u64, Ordering::Relaxed);
        let epoch = self.c.abort_epoch.load(Ordering::SeqCst);
        Ok(Box::new(FakeStream {
            req,
            cfg: self.cfg.clone(),
            c: Arc::clone(&self.c),
            epoch,
            step: 0,
            queue: VecDeque::new(),
            finished: false,
        }))
    }

    fn stats(&self) -> EngineStats {
        let live = self.live();
        EngineStats {
            running: live,
            waiting: 0,
            kv_blocks_used: live,
            kv_blocks_total: self.cfg.capacity,
            prompt_tokens_total: self.c.prompt.load(Ordering::Relaxed),
            generation_tokens_total: self.c.generated.load(Ordering::Relaxed),
            requests_finished_total: self.c.completed.load(Ordering::Relaxed),
            steps: self.c.steps.load(Ordering::Relaxed),
            ..EngineStats::default()
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        let now = Instant::now();
        let last_progress = if self.stalled.load(Ordering::SeqCst) {
            now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
        } else {
            now
        };
        Heartbeat { last_progress, alive: self.alive.load(Ordering::SeqCst) }
    }

    fn max_model_len(&self) -> usize {
        self.cfg.max_model_len
    }

    fn abort_all(&self) {
        self.c.abort_epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
        self.abort_all();
    }
}

struct FakeStream {
    req: GenerateRequest,
    cfg: FakeConfig,
    c: Arc<Counters>,
    epoch: u64,
    step: usize,
    queue: VecDeque<EngineEvent>,
    finished: bool,
}

impl FakeStream {
    fn byte(&self, step: usize, choice: usize) -> u8 {
        let s = self.req.params.seed.unwrap_or(0);
        b'a' + ((s.wrapping_add(step as u64).wrapping_add(choice as u64)) % 26) as u8
    }

    fn finish_all(&mut self, reason: FinishReason) {
        let n = self.req.n.max(1);
        for index in 0..n {
            let (text, token_ids) = if self.req.beam.is_some() && reason != FinishReason::Abort {
                let ids: Vec<u32> = (0..self.step).map(|k| u32::from(self.byte(k, index))).collect();
                (ids.iter().map(|&b| b as u8 as char).collect(), ids)
            } else {
                (String::new(), (0..self.step).map(|k| u32::from(self.byte(k, index))).collect())
            };
            self.queue.push_back(EngineEvent::Finished { index, reason, text, token_ids });
        }
        let usage = Usage {
            prompt_tokens: self.req.prompt_ids.len(),
            completion_tokens: self.step * n,
            cached_prompt_tokens: 0,
        };
        self.queue.push_back(EngineEvent::Done { usage });
        self.finished = true;
    }

    /// Queues the next step's events.
    fn advance(&mut self) {
        if self.c.abort_epoch.load(Ordering::SeqCst) != self.epoch {
            return self.finish_all(FinishReason::Abort);
        }
        if self.cfg.fail_after == Some(self.step) {
            self.queue.push_back(EngineEvent::Error { message: "injected engine failure".into() });
            self.finished = true;
            return;
        }
        if self.step >= self.req.params.max_tokens {
            return self.finish_all(FinishReason::Length);
        }
        self.c.steps.fetch_add(1, Ordering::Relaxed);
        if self.req.beam.is_none() {
            for index in 0..self.req.n.max(1) {
                let b = self.byte(self.step, index);
                let logprob = self.req.params.logprobs.map(|k| TokenLogprob {
                    logprob: -0.5,
                    top: (0..k as u32).map(|j| (u32::from(b'a') + j, -0.5 - j as f32)).collect(),
                });
                self.queue.push_back(EngineEvent::Token {
                    index,
                    token: u32::from(b),
                    text: (b as char).to_string(),
                    logprob,
                });
                self.c.generated.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.step += 1;
    }
}

impl RequestStream for FakeStream {
    fn recv(&mut self) -> BoxFuture<'_, Option<EngineEvent>> {
        Box::pin(async move {
            // Beam steps queue nothing until the end, so step until there is an event.
            while self.queue.is_empty() && !self.finished {
                if !self.cfg.step_delay.is_zero() {
                    tokio::time::sleep(self.cfg.step_delay).await;
                }
                self.advance();
            }
            let ev = self.queue.pop_front();
            if matches!(ev, Some(EngineEvent::Done { .. })) {
                self.c.completed.fetch_add(1, Ordering::SeqCst);
            }
            ev
        })
    }
}

impl Drop for FakeStream {
    fn drop(&mut self) {
        if !(self.finished && self.queue.is_empty()) {
            self.c.aborted.fetch_add(1, Ordering::SeqCst);
        }
        self.c.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes as tokens: id = byte value; vocabulary 256. Chat renders `role: content\n` lines
/// plus `assistant:` when a reply is wanted.
pub struct ByteCodec;

impl Codec for ByteCodec {
    fn encode(&self, text: &str, _with_bos: bool) -> Result<Vec<u32>, CodecError> {
        Ok(text.bytes().map(u32::from).collect())
    }

    fn default_bos(&self) -> bool {
        false
    }

    fn decode(&self, ids: &[u32]) -> Result<String, CodecError> {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(&[id as u8]).into_owned()
    }

    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, CodecError> {
        let mut s = String::new();
        for m in messages {
            s.push_str(&format!("{}: {}\n", m.role, m.content));
        }
        if add_generation_prompt {
            s.push_str("assistant:");
        }
        Ok(s)
    }

    fn vocab_size(&self) -> usize {
        256
    }
}
