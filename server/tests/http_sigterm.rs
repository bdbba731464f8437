//! SIGTERM on the real `kiln serve` binary (default model, CPU, loopback): `/health` is 503
//! while the model loads; after SIGTERM `/health` and new requests get 503 at once, in-flight
//! streams finish normally (or, with `--shutdown-timeout 0`, end with `abort` and `[DONE]`),
//! and the process exits 0 with no panic in its log.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

struct Kiln {
    child: Child,
    base: String,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Kiln {
    fn spawn(args: &[&str]) -> Kiln {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--device",
                "cpu",
                "--served-model-name",
                REAL_MODEL_NAME,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kiln serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut k = Kiln { child, base: String::new(), lines, log: Vec::new() };
        let line = k.wait_line("listening on http://", Duration::from_secs(60));
        let addr = line.split("http://").nth(1).unwrap().split(';').next().unwrap().to_string();
        k.base = format!("http://{addr}");
        k
    }

    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            let left = limit.saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no `{needle}` within {limit:?}; log: {:?}", self.log)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("kiln exited before `{needle}`; log: {:?}", self.log)
                }
            }
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for exit; returns the exit code and the rest of the log.
    fn wait_exit(mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.log.extend(self.lines.try_iter());
                return (status.code(), self.log);
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("kiln did not exit within {limit:?}; log: {:?}", self.log);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn start_streams(
    c: &reqwest::Client,
    base: &str,
    count: usize,
    max_tokens: u32,
) -> Vec<tokio::task::JoinHandle<String>> {
    let mut v = Vec::new();
    for i in 0..count {
        let r = post(c, &format!("{base}/v1/completions"), &json!({"prompt": format!("Story number {i}:"), "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0, "stream": true})).await;
        assert_eq!(r.status(), 200);
        v.push(tokio::spawn(async move { r.text().await.unwrap_or_default() }));
    }
    v
}

/// Polls until `/health` answers 503 (or the port is closed), returning how long it took.
async fn health_goes_503(c: &reqwest::Client, base: &str) -> Duration {
    let t = Instant::now();
    loop {
        match c.get(format!("{base}/health")).send().await {
            Ok(r) if r.status() == 503 => return t.elapsed(),
            Err(_) => return t.elapsed(),
            _ => {}
        }
        assert!(t.elapsed() < Duration::from_secs(2), "/health still 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let mut k = Kiln::spawn(&["--shutdown-timeout", "60"]);
    let c = client();
    // The port is bound before the weights load: health says so.
    let r = c.get(format!("{}/health", k.base)).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    let ready_already = k.lines.try_iter().any(|l| l.contains("ready in"));
    assert!(ready_already || (status == 503 && body.contains("model_loading")), "{status} {body}");
    if !ready_already {
        k.wait_line("ready in", Duration::from_secs(120));
    }
    assert_eq!(c.get(format!("{}/health", k.base)).send().await.unwrap().status(), 200);
    let streams = start_streams(&c, &k.base, 4, 24).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    k.sigterm();
    let took = health_goes_503(&c, &k.base).await;
    assert!(took < Duration::from_secs(1), "health took {took:?} to turn 503");
    match c.post(format!("{}/v1/completions", k.base)).json(&json!({"prompt": "x", "max_tokens": 1})).send().await {
        Ok(r) => {
            assert_eq!(r.status(), 503);
            assert!(r.headers().get("retry-after").is_some());
            assert_eq!(error_obj(&r.text().await.unwrap())["code"], "shutting_down");
        }
        Err(e) => assert!(e.is_connect(), "{e}"),
    }
    for s in streams {
        let datas = sse_data(&s.await.unwrap());
        assert_eq!(datas.last().map(String::as_str), Some("[DONE]"));
        let (texts, fins) = stream_text(&datas);
        assert_eq!(fins[0].as_deref(), Some("length"), "in-flight streams finish normally");
        assert!(!texts[0].is_empty());
    }
    let (code, log) = tokio::task::spawn_blocking(move || k.wait_exit(Duration::from_secs(30))).await.unwrap();
    assert_eq!(code, Some(0), "{log:?}");
    assert!(log.iter().all(|l| !l.contains("panicked")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("kiln: stopped")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_zero_timeout_aborts_streams_with_done() {
    let mut k = Kiln::spawn(&["--shutdown-timeout", "0"]);
    k.wait_line("ready in", Duration::from_secs(120));
    let c = client();
    let streams = start_streams(&c, &k.base, 3, 4000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    k.sigterm();
    for s in streams {
        let datas = sse_data(&s.await.unwrap());
        assert_eq!(datas.last().map(String::as_str), Some("[DONE]"));
        let (_, fins) = stream_text(&datas);
        assert_eq!(fins[0].as_deref(), Some("abort"));
    }
    let (code, log) = tokio::task::spawn_blocking(move || k.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(code, Some(0), "{log:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "exit took {:?}", t.elapsed());
    assert!(log.iter().all(|l| !l.contains("panicked")), "{log:?}");
}

/// `kiln bench --url` (the online load generator) against the real server: every token is
/// counted from the server's usage, every stream times its first token.
#[test]
fn online_bench_drives_a_running_server() {
    let mut k = Kiln::spawn(&[]);
    k.wait_line("ready in", Duration::from_secs(120));
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "bench",
            "--url",
            &k.base,
            "--num-requests",
            "3",
            "--prompt-len",
            "6",
            "--output-len",
            "4",
            "--vocab",
            "49152",
            "--json",
        ])
        .output()
        .expect("run kiln bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["requests"], 3);
    assert_eq!(v["output_tokens"], 12);
    assert_eq!(v["prompt_tokens"], 18);
    assert!(v["ttft_ms"]["p50"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    k.sigterm();
    let (code, log) = k.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log:?}");
}
