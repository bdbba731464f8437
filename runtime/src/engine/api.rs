//! The engine's public surface: what a caller (the CLI, the HTTP server, a benchmark) submits,
//! what it gets back, and how it aborts. The engine thread owns the model, the scheduler and
//! all request state; callers hold only an [`EngineHandle`] and per-request [`RequestHandle`]s
//! and talk to it over channels.
//!
//! Contract:
//! - `submit` answers at once: accepted (a handle), or refused with a [`SubmitError`] whose
//!   kind maps to an HTTP status (invalid → 400, overloaded → 429, shutting down → 503);
//! - every accepted request ends with exactly one [`EngineEvent::Done`] (after its choices'
//!   `Finished` events) or one [`EngineEvent::Error`]; nothing follows it;
//! - text in `Token` events is UTF-8-safe and never contains text past a stop string;
//!   concatenating a choice's deltas gives its final text;
//! - dropping a [`RequestHandle`] (or calling `abort`) aborts the request: its KV blocks are
//!   freed within one engine step.

use crate::sample::{FinishReason, SamplingParams};
use serde::Serialize;
use std::time::Instant;

/// Beam search settings (HF `generate(num_beams=W, do_sample=False, ...)` semantics).
#[derive(Clone, Debug, PartialEq)]
pub struct BeamParams {
    pub width: usize,
    /// Scores are `sum logprob / len^length_penalty` (HF default 1.0).
    pub length_penalty: f32,
    /// Stop as soon as `width` finished hypotheses exist (HF `early_stopping=True`).
    pub early_stopping: bool,
}

impl Default for BeamParams {
    fn default() -> Self {
        BeamParams { width: 4, length_penalty: 1.0, early_stopping: true }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    /// Independent samples of the same prompt (OpenAI `n`); they share the prompt's KV.
    pub n: usize,
    /// Beam search instead of sampling; returns `n` best beams (n <= width).
    pub beam: Option<BeamParams>,
}

/// Log-probabilities of one generated token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// The best alternatives, best first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    /// One generated token of choice `index`, with the text that became safe to show.
    /// (Beam search emits no `Token` events: beams are only known at the end; it sends one
    /// `Token`-free `Finished` per returned beam with its full `text`/`token_ids`.)
    Token { index: usize, token: u32, text: String, logprob: Option<TokenLogprob> },
    /// Choice `index` is complete. `text`: any held-back text released at the end (append it);
    /// for beam search, the beam's whole text. `token_ids`: the choice's full output.
    Finished { index: usize, reason: FinishReason, text: String, token_ids: Vec<u32> },
    /// All choices are complete.
    Done { usage: Usage },
    /// The request failed after it was accepted (e.g. a model step failed).
    Error { message: String },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The request can never be served as given (empty prompt, too long for the context or
    /// for the whole KV pool, bad sampling parameters). HTTP 400.
    #[error("{0}")]
    Invalid(String),
    /// Queue full right now. HTTP 429 (with Retry-After).
    #[error("the server is overloaded: {0}")]
    Overloaded(String),
    /// The engine is stopping or has stopped. HTTP 503.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Counters for `/metrics` and `kiln bench`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub preemptions: u64,
    pub prefix_cache_hit_tokens: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub requests_finished_total: u64,
    pub requests_failed_total: u64,
    pub steps: u64,
    /// Time spent in the model's forward (the step's inputs, the kernels and, on a GPU, the
    /// wait for them and the copy of logits or tokens back), summed over steps.
    pub model_seconds: f64,
    /// Time spent in steps, summed (model plus scheduling, sampling, detokenizing, events).
    pub step_seconds: f64,
    /// Constrained decoding's per-token mask computations (each computed ahead, while the
    /// model's next step runs).
    pub masks: crate::sample::constraint::MaskSummary,
    /// How long sampling waited for each of those masks (zero where it was ready).
    pub mask_waits: crate::sample::constraint::MaskSummary,
    /// Steps whose logits were copied to the host and sampled there (the host placement, the
    /// CPU's default, beam search, a device sampler that failed); on a GPU the other steps
    /// send back only token ids and requested log-probabilities.
    pub host_sampling_steps: u64,
}

/// Engine sizing and policy.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    /// Waiting requests beyond the running ones before `submit` says `Overloaded`.
    pub max_queue: usize,
    pub block_size: usize,
    /// KV pool size in bytes (`--kv-cache-memory`); `None` takes a default for the device.
    pub kv_cache_bytes: Option<usize>,
    /// Cap on prompt + output (defaults to the model's context length).
    pub max_model_len: Option<usize>,
    pub enable_prefix_caching: bool,
    /// Where tokens are sampled.
    pub sampling: SamplingPlacement,
}

/// Where the engine samples tokens from a step's logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SamplingPlacement {
    /// On the model's device: a GPU samples every row itself (only token ids and requested
    /// log-probabilities come back), the CPU samples on the host. Beam search always reads its
    /// logits on the host.
    #[default]
    Auto,
    /// Copy the logits to the host and sample there (the reference path).
    Host,
    /// Always through the device sampler (on the CPU: its CPU twin; for tests of that path).
    Device,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 64,
            // One step's tokens bound the inter-token stall of running streams: on 2 CPU cores a
            // 2048-token step takes seconds. GPU deployments raise it (`--max-batched-tokens`).
            max_batched_tokens: 512,
            max_queue: 256,
            block_size: 16,
            kv_cache_bytes: None,
            max_model_len: None,
            enable_prefix_caching: true,
            sampling: SamplingPlacement::Auto,
        }
    }
}

/// Incremental, UTF-8-safe detokenization, provided by the model's tokenizer (kiln-models
/// implements it over its `DetokStream`). The engine stays independent of tokenizers.
pub trait Detokenizer: Send + Sync {
    /// A stream for one choice, given the prompt ids as context.
    fn stream(&self, prompt_ids: &[u32]) -> Box<dyn TextStream>;
}

pub trait TextStream: Send {
    /// The text that became safe to show after `token`.
    fn step(&mut self, token: u32) -> Result<String, String>;
    /// Whatever is still held back (end of stream).
    fn finish(&mut self) -> Result<String, String>;
}

/// When the engine loop last completed an iteration (idle waits count as progress), for
/// `/health`: a loop that stopped advancing makes the server unhealthy.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    pub last_progress: Instant,
    pub alive: bool,
}
