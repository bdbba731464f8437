//! Benchmarks of the HTTP layer (ignored by default; run with
//! `cargo test --release -p kiln-server --test bench_http -- --ignored --nocapture --test-threads 1`).
//! Results are recorded in docs/perf.md.
//!
//! - `http_layer_throughput`: requests/s of `max_tokens: 1` completions over loopback with the
//!   fake engine (the model step costs nothing), from an in-process keep-alive load generator;
//! - `serve_fake_for_external_load`: keeps a fake-engine server up for `KILN_BENCH_HOLD_SECS`
//!   so an external tool (`wrk`) can load it;
//! - `server_overhead_vs_engine`: p50 latency of the same request through HTTP and straight
//!   through the engine handle, on the real default model.

mod common;

use common::*;
use kiln_server::fake::FakeConfig;
use kiln_server::ServerConfig;
use serde_json::json;
use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn http_layer_throughput() {
    let secs: u64 = std::env::var("KILN_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let conns: usize = std::env::var("KILN_BENCH_CONNS").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let s = fake_server(
        ServerConfig { max_in_flight: 4096, ..ServerConfig::default() },
        FakeConfig { capacity: 4096, ..FakeConfig::default() },
    )
    .await;
    let url = format!("{}/v1/completions", s.base);
    let body = serde_json::to_vec(&json!({"model": "kiln", "prompt": "Hello, world", "max_tokens": 1})).unwrap();
    let c = reqwest::Client::builder().pool_max_idle_per_host(conns).build().unwrap();
    // Warm up the connections.
    for _ in 0..conns {
        c.post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    // One connection, one request at a time: the HTTP layer's own latency (the fake engine
    // answers at once), next to the same request submitted to the fake engine directly.
    let mut seq = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        c.post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        seq.push(t.elapsed());
    }
    seq.sort();
    let backend = s.server.state.loaded().unwrap().backend.clone();
    let mut direct = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let req = kiln_runtime::engine::GenerateRequest {
            prompt_ids: b"Hello, world".iter().map(|&b| u32::from(b)).collect(),
            params: kiln_runtime::sample::SamplingParams { max_tokens: 1, ..Default::default() },
            n: 1,
            beam: None,
        };
        let mut st = backend.submit(req).unwrap();
        while st.recv().await.is_some() {}
        direct.push(t.elapsed());
    }
    direct.sort();
    println!(
        "http_layer_latency: sequential p50 {:?} p99 {:?}; fake engine direct p50 {:?}",
        pct(&seq, 0.5),
        pct(&seq, 0.99),
        pct(&direct, 0.5)
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (c, url, body) = (c.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r =
                    c.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = t0.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "http_layer_throughput: {} requests in {wall:.1} s over {conns} connections = {:.0} req/s; latency p50 {:?} p99 {:?}",
        lat.len(),
        lat.len() as f64 / wall,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark helper"]
async fn serve_fake_for_external_load() {
    let secs: u64 = std::env::var("KILN_BENCH_HOLD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let port: u16 = std::env::var("KILN_BENCH_PORT").ok().and_then(|s| s.parse().ok()).unwrap_or(18099);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let state = kiln_server::AppState::new(ServerConfig { max_in_flight: 4096, ..ServerConfig::default() });
    let fake = kiln_server::fake::FakeBackend::new(FakeConfig { capacity: 4096, ..FakeConfig::default() });
    state.set_ready(kiln_server::state::Loaded {
        backend: fake,
        codec: std::sync::Arc::new(kiln_server::fake::ByteCodec),
    });
    let srv = kiln_server::start(state, listener).unwrap();
    println!("serving the fake engine on http://{} for {secs} s", srv.addr);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn server_overhead_vs_engine() {
    let iters: usize = std::env::var("KILN_BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let srv = real_server();
    let loaded = srv.state.loaded().expect("loaded");
    let c = client();
    let prompt = "The capital of France is";
    let ids = loaded.codec.encode(prompt, loaded.codec.default_bos()).unwrap();
    for max_tokens in [1usize, 16] {
        let body = serde_json::to_vec(&json!({"model": REAL_MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})).unwrap();
        let (mut direct, mut http) = (Vec::new(), Vec::new());
        for i in 0..iters + 10 {
            // Interleaved, so drift (caches, clocks) hits both sides alike.
            let t = Instant::now();
            let req = kiln_runtime::engine::GenerateRequest {
                prompt_ids: ids.clone(),
                params: kiln_runtime::sample::SamplingParams {
                    max_tokens,
                    ignore_eos: true,
                    ..kiln_runtime::sample::SamplingParams::greedy()
                },
                n: 1,
                beam: None,
            };
            let mut s = loaded.backend.submit(req).unwrap();
            while let Some(ev) = s.recv().await {
                if matches!(
                    ev,
                    kiln_runtime::engine::EngineEvent::Done { .. } | kiln_runtime::engine::EngineEvent::Error { .. }
                ) {
                    break;
                }
            }
            let d = t.elapsed();
            let t = Instant::now();
            let r = c
                .post(format!("{}/v1/completions", srv.base))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            let h = t.elapsed();
            if i >= 10 {
                direct.push(d);
                http.push(h);
            }
        }
        direct.sort();
        http.sort();
        let (pd, ph) = (pct(&direct, 0.5), pct(&http, 0.5));
        println!(
            "server_overhead_vs_engine max_tokens={max_tokens}: engine p50 {pd:?}, HTTP p50 {ph:?}, overhead p50 {:.3} ms ({iters} interleaved requests each)",
            (ph.as_secs_f64() - pd.as_secs_f64()) * 1e3
        );
    }
}
