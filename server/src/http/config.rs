//! [`ServerConfig`]: the HTTP layer's knobs, with the defaults `kiln serve` uses.
//!
//! Invariant: every cap here bounds work or memory one request can cause (body size, prompts,
//! choices, stop strings), so a hostile request costs at most a bounded amount before it is
//! refused.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The name `/v1/models` lists and requests may name.
    pub served_model_name: String,
    /// Accepted API keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Largest request body (bytes); larger bodies get 413.
    pub max_body_bytes: usize,
    /// Requests in flight (running + waiting) before new ones get 429 at once. Set it to the
    /// engine's `max_num_seqs + max_queue` so the HTTP layer refuses before tokenizing.
    pub max_in_flight: usize,
    /// How long in-flight requests may run after SIGTERM before they are aborted.
    pub shutdown_timeout: Duration,
    /// `/health` turns 503 when the engine loop has not advanced for this long.
    pub heartbeat_timeout: Duration,
    /// A connection must deliver a request's headers within this time (slowloris guard).
    pub header_read_timeout: Duration,
    /// Interval of SSE keep-alive comments (also how soon a silent stream notices a gone
    /// client by a failed write).
    pub sse_keep_alive: Duration,
    /// Most choices (`n`, beam width) per prompt.
    pub max_n: usize,
    /// Most prompts in one completions request.
    pub max_prompts: usize,
    /// Most stop strings, and longest one (bytes).
    pub max_stop: usize,
    pub max_stop_bytes: usize,
    /// Prompts longer than this (bytes) are tokenized on the blocking pool, not the reactor.
    pub inline_tokenize_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            served_model_name: "kiln".into(),
            api_keys: Vec::new(),
            max_body_bytes: 2 * 1024 * 1024,
            max_in_flight: 64 + 256,
            shutdown_timeout: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            sse_keep_alive: Duration::from_secs(5),
            max_n: 16,
            max_prompts: 16,
            max_stop: 16,
            max_stop_bytes: 1024,
            inline_tokenize_bytes: 4096,
        }
    }
}
