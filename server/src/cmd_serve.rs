//! `kiln serve`: the OpenAI-compatible HTTP server (the `kiln_server` library) over the engine.
//!
//! Order of events: bind the port first (so a port conflict fails at once and `/health` can
//! say "loading" while the weights load), load the model on a blocking thread, open for
//! requests, then run until SIGTERM or Ctrl-C and drain (see `kiln_server::server`). Exit
//! status 0 after a clean drain; non-zero if binding or loading fails, or if the engine loop
//! dies (the server drains what it can and exits instead of serving a red `/health` forever).

use crate::device_arg::{pick_ranks, DeviceArg};
use anyhow::{bail, Context, Result};
use kiln_runtime::engine::EngineConfig;
use kiln_server::engine_backend::{load, ModelSpec};
use kiln_server::{start, AppState, ServerConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A GGUF file or an HF directory; default: the default model (fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require this API key (repeatable; the KILN_API_KEY environment variable adds one).
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// The model name clients send and `/v1/models` lists; default: the model file's stem.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences in the running batch.
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    /// Requests waiting beyond the running ones; past that, 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Tokens per engine step (decode tokens plus prefill chunks).
    #[arg(long, default_value_t = 2048)]
    max_batched_tokens: usize,
    /// KV cache size in bytes (suffixes K, M, G, KiB, MiB, GiB); default: per device.
    #[arg(long, value_parser = parse_bytes)]
    kv_cache_memory: Option<usize>,
    /// Cap on prompt + output tokens (default: the model's context length).
    #[arg(long)]
    max_model_len: Option<usize>,
    #[arg(long)]
    no_prefix_caching: bool,
    /// Where tokens are sampled: `auto` (on the model's device: a GPU sends back only token
    /// ids), `host` (logits copied to the CPU; the reference path), `device`.
    #[arg(long, value_enum, default_value_t = crate::device_arg::SamplingArg::Auto)]
    sampling: crate::device_arg::SamplingArg,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Tensor-parallel ranks: the model split over this many GPUs (GPU 0 … n-1), or CPU ranks
    /// (threads) on the CPU. It must divide the attention heads.
    #[arg(long, default_value_t = 1)]
    tp_size: usize,
    /// Keep quantized weights as stored (GGUF block formats, Q4_0 … Q6_K, on the CPU) or dequantize them.
    #[arg(long, value_enum, default_value_t = crate::device_arg::WeightsArg::Stored)]
    weights: crate::device_arg::WeightsArg,
    /// The KV cache's element type: `fp8` (e4m3, per-layer scales calibrated at start) holds
    /// twice the tokens of a bf16 cache in the same memory.
    #[arg(long, value_enum, default_value_t = crate::device_arg::KvCacheArg::Auto)]
    kv_cache_dtype: crate::device_arg::KvCacheArg,
    /// Seconds in-flight requests may run after SIGTERM before they are aborted.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024, value_parser = parse_bytes)]
    max_body_bytes: usize,
    /// `/health` turns 503 when the engine loop has not advanced for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    heartbeat_timeout: f64,
}

/// `123`, `64K`, `512MiB`, `2G` → bytes (K/M/G are powers of 1024 either way).
fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("`{s}` is not a byte count (e.g. 512MiB)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` in `{s}` (use K, M or G)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

fn seconds(what: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("--{what} must be a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn run(a: ServeArgs) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let path = match &a.model {
        Some(p) => p.clone(),
        None => kiln_models::fetch::default_model_path()?,
    };
    let served = a.served_model_name.clone().unwrap_or_else(|| {
        let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
        name.map_or_else(|| "kiln".to_string(), |n| n.to_string_lossy().into_owned())
    });
    let mut api_keys = a.api_keys.clone();
    if let Ok(k) = std::env::var("KILN_API_KEY") {
        if !k.is_empty() {
            api_keys.push(k);
        }
    }
    let cfg = ServerConfig {
        served_model_name: served.clone(),
        api_keys,
        max_body_bytes: a.max_body_bytes,
        max_in_flight: a.max_num_seqs.saturating_add(a.max_queue),
        shutdown_timeout: seconds("shutdown-timeout", a.shutdown_timeout)?,
        heartbeat_timeout: seconds("heartbeat-timeout", a.heartbeat_timeout)?,
        ..ServerConfig::default()
    };
    let (devices, dtype) = pick_ranks(a.device, a.tp_size)?;
    let spec = ModelSpec {
        path: path.clone(),
        devices,
        dtype,
        weights: a.weights.into(),
        kv_cache: a.kv_cache_dtype.into(),
        engine: EngineConfig {
            max_num_seqs: a.max_num_seqs,
            max_batched_tokens: a.max_batched_tokens,
            max_queue: a.max_queue,
            kv_cache_bytes: a.kv_cache_memory,
            max_model_len: a.max_model_len,
            enable_prefix_caching: !a.no_prefix_caching,
            sampling: a.sampling.into(),
            ..EngineConfig::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(serve(a.host, a.port, cfg, spec))
}

async fn serve(host: String, port: u16, cfg: ServerConfig, spec: ModelSpec) -> Result<()> {
    let listener =
        tokio::net::TcpListener::bind((host.as_str(), port)).await.with_context(|| format!("binding {host}:{port}"))?;
    let state = AppState::new(cfg);
    let server = start(state.clone(), listener)?;
    let addr = server.addr;
    eprintln!("kiln: listening on http://{addr}; loading {} ...", spec.path.display());
    let t = Instant::now();
    let loading = tokio::task::spawn_blocking(move || load(&spec));
    tokio::select! {
        loaded = loading => {
            let loaded = loaded.context("the model loading thread failed")??;
            let (max_len, blocks) = (loaded.backend.max_model_len(), loaded.backend.stats().kv_blocks_total);
            state.set_ready(loaded);
            eprintln!(
                "kiln: ready in {:.1} s: model `{}` (context {max_len} tokens, {blocks} KV blocks) at http://{addr}/v1",
                t.elapsed().as_secs_f64(),
                state.cfg.served_model_name
            );
        }
        _ = shutdown_signal() => {
            eprintln!("kiln: stopping before the model finished loading");
            server.shutdown().await?;
            return Ok(());
        }
    }
    let engine_died = tokio::select! {
        _ = shutdown_signal() => false,
        _ = engine_dead(&state) => true,
    };
    if engine_died {
        // Fail fast: a process whose engine is gone must not linger behind a red /health.
        eprintln!("kiln: the engine loop stopped; shutting down");
        server.shutdown().await?;
        bail!("the engine loop stopped (see the log above)");
    }
    eprintln!(
        "kiln: shutting down: {} requests in flight (up to {:.0} s to finish)",
        state.admission.in_flight(),
        state.cfg.shutdown_timeout.as_secs_f64()
    );
    let report = server.shutdown().await?;
    if report.aborted > 0 {
        eprintln!("kiln: aborted {} requests at the shutdown timeout", report.aborted);
    }
    eprintln!("kiln: stopped");
    Ok(())
}

/// Resolves once the engine reports itself dead (a panic in its loop); polled, since the
/// heartbeat is a value, not an event.
async fn engine_dead(state: &AppState) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if state.loaded().is_some_and(|l| !l.backend.heartbeat().alive) {
            return;
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("G").is_err());
    }
}
