//! Shared helpers of the HTTP tests: servers on 127.0.0.1:0 (fake or real engine), an SSE
//! reader, and request shorthands. All traffic stays on loopback.

#![allow(dead_code)]

use kiln_server::fake::{ByteCodec, FakeBackend, FakeConfig};
use kiln_server::state::Loaded;
use kiln_server::{start, AppState, RunningServer, ServerConfig};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub struct FakeServer {
    pub base: String,
    pub server: RunningServer,
    pub fake: Arc<FakeBackend>,
}

/// A server over the fake engine and the byte codec.
pub async fn fake_server(cfg: ServerConfig, fake: FakeConfig) -> FakeServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let state = AppState::new(cfg);
    let backend = FakeBackend::new(fake);
    assert!(state.set_ready(Loaded { backend: backend.clone(), codec: Arc::new(ByteCodec) }));
    let server = start(state, listener).expect("start");
    FakeServer { base: format!("http://{}", server.addr), server, fake: backend }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
}

/// The `data:` payloads of an SSE body, in order (keep-alive comments skipped).
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:"))))
        .map(str::to_string)
        .collect()
}

/// Concatenated text per choice index of a completions or chat SSE body, plus finish reasons.
pub fn stream_text(datas: &[String]) -> (Vec<String>, Vec<Option<String>>) {
    let mut texts: Vec<String> = Vec::new();
    let mut fins: Vec<Option<String>> = Vec::new();
    for d in datas {
        if d == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk is not JSON ({e}): {d}"));
        for c in v["choices"].as_array().cloned().unwrap_or_default() {
            let i = c["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                fins.resize(i + 1, None);
            }
            let piece = c["text"].as_str().or_else(|| c["delta"]["content"].as_str()).unwrap_or("");
            texts[i].push_str(piece);
            if let Some(f) = c["finish_reason"].as_str() {
                fins[i] = Some(f.to_string());
            }
        }
    }
    (texts, fins)
}

/// Asserts the OpenAI error shape and returns the error object.
pub fn error_obj(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let e = v["error"].clone();
    assert!(e["message"].is_string() && e["type"].is_string(), "not an OpenAI error: {body}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "param/code missing: {body}");
    e
}

pub async fn post(c: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    c.post(url).json(body).send().await.expect("request")
}

/// Value of a sample line (`name` or `name{labels}`) of a Prometheus text body.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

/// A server over the real default model (CPU, f32), shared by every test of one test binary:
/// it runs on its own thread and runtime so each `#[tokio::test]` can use it.
pub struct RealServer {
    pub base: String,
    pub state: Arc<AppState>,
}

pub const REAL_MODEL_NAME: &str = "smollm2";

pub fn real_server() -> &'static RealServer {
    static SERVER: std::sync::OnceLock<RealServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        start_real(
            ServerConfig { served_model_name: REAL_MODEL_NAME.into(), ..ServerConfig::default() },
            kiln_runtime::engine::EngineConfig::default(),
        )
    })
}

/// Starts a real-model server that lives until the test process exits.
pub fn start_real(cfg: ServerConfig, engine: kiln_runtime::engine::EngineConfig) -> RealServer {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let path = kiln_models::fetch::default_model_path().expect("the default model (run `kiln fetch`)");
            let spec = kiln_server::engine_backend::ModelSpec {
                path,
                devices: vec![kiln_runtime::Device::Cpu],
                dtype: kiln_runtime::DType::F32,
                weights: Default::default(),
                kv_cache: Default::default(),
                engine,
            };
            let loaded = tokio::task::spawn_blocking(move || kiln_server::engine_backend::load(&spec))
                .await
                .expect("load thread")
                .expect("load the model");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            let state = AppState::new(cfg);
            state.set_ready(loaded);
            let server = start(state.clone(), listener).expect("start");
            let _ = tx.send(RealServer { base: format!("http://{}", server.addr), state });
            // Serve until the test process exits.
            std::future::pending::<()>().await;
            drop(server);
        });
    });
    rx.recv().expect("the real server did not start")
}

/// Polls `/metrics` until the engine holds no KV blocks and runs nothing.
pub async fn wait_kv_drained(c: &reqwest::Client, base: &str, limit: Duration) -> String {
    let t = std::time::Instant::now();
    loop {
        let text = c.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("metrics body");
        let used = metric(&text, "llm_kv_blocks_used");
        let drained = used == Some(0.0)
            && metric(&text, "llm_requests_running") == Some(0.0)
            && metric(&text, "llm_requests_waiting") == Some(0.0)
            && metric(&text, "llm_http_requests_in_flight") == Some(0.0);
        if drained {
            assert_eq!(metric(&text, "llm_kv_blocks_free"), metric(&text, "llm_kv_blocks_total"));
            return text;
        }
        assert!(t.elapsed() < limit, "KV not drained within {limit:?}: used {used:?}\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
