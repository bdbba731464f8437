//! Load and fault test on the real default model, loopback only, bounded in time: 32
//! streaming and 32 non-streaming clients for `KILN_LOAD_SECS` (default 30) seconds, plus 100
//! clients that disconnect at random points (before the first byte, after 1 or 5 chunks, or a
//! non-streaming request given up after 50-500 ms). Pass: no transport error and no non-2xx
//! among the well-behaved clients, every stream ends with `[DONE]` after every choice's
//! `finish_reason`, no U+FFFD in any text, and afterwards the KV pool is whole again
//! (`llm_kv_blocks_used` 0, free == total, nothing running or waiting) and the server still
//! answers, with streamed text equal to non-streamed text.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROMPTS: &[&str] = &[
    "Hi",
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three fruits:",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old woodcutter who",
    "Explain in one sentence why the sky is blue, and then explain it again for a five-year-old child who keeps asking why.",
    "1, 2, 3, 4,",
    "Translate to French: good morning, my friend. How are you today? I hope the weather is kind to you.",
];

fn body(i: usize, k: usize, stream: bool) -> (String, Value) {
    let prompt = PROMPTS[(i + k) % PROMPTS.len()];
    let max_tokens = 1 + (i * 7 + k * 3) % 12;
    let sampling = if (i + k).is_multiple_of(3) {
        json!({"temperature": 0})
    } else {
        json!({"temperature": 0.8, "seed": (i * 1000 + k) as u64})
    };
    let mut b = if (i + k).is_multiple_of(2) {
        json!({"model": REAL_MODEL_NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": stream})
    } else {
        json!({"model": REAL_MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "stream": stream, "n": 1 + (k % 2)})
    };
    for (key, v) in sampling.as_object().unwrap() {
        b[key] = v.clone();
    }
    let path = if b.get("messages").is_some() { "/v1/chat/completions" } else { "/v1/completions" };
    (path.to_string(), b)
}

/// Checks one finished stream: `[DONE]` last, every choice finished, valid text.
fn check_stream(text: &str, n: usize) -> Result<(), String> {
    let datas = sse_data(text);
    if datas.last().map(String::as_str) != Some("[DONE]") {
        return Err(format!("stream did not end with [DONE]: {:?}", datas.last()));
    }
    if datas.iter().any(|d| d.contains("\"error\"")) {
        return Err(format!("stream carried an error: {text}"));
    }
    let (texts, fins) = stream_text(&datas);
    if fins.len() != n || fins.iter().any(Option::is_none) {
        return Err(format!("not every choice finished: {fins:?}"));
    }
    if texts.iter().any(|t| t.contains('\u{FFFD}')) {
        return Err("U+FFFD in streamed text".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_disconnects_leaves_no_blocks_behind() {
    let secs: u64 = std::env::var("KILN_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let srv = real_server();
    let base = srv.base.clone();
    let c = reqwest::Client::builder().timeout(Duration::from_secs(120)).pool_max_idle_per_host(256).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (c, base, errors, done) = (c.clone(), base.clone(), errors.clone(), done.clone());
        let stream = i < 32;
        tasks.push(tokio::spawn(async move {
            let mut k = 0;
            while Instant::now() < deadline {
                let (path, b) = body(i, k, stream);
                let n = b["n"].as_u64().unwrap_or(1) as usize;
                k += 1;
                let res = c.post(format!("{base}{path}")).json(&b).send().await;
                let r = match res {
                    Ok(r) => r,
                    Err(e) => {
                        errors.lock().unwrap().push(format!("transport error: {e:?}"));
                        continue;
                    }
                };
                let status = r.status();
                let text = match r.text().await {
                    Ok(t) => t,
                    Err(e) => {
                        errors.lock().unwrap().push(format!("reading the body: {e:?}"));
                        continue;
                    }
                };
                let verdict = if status != 200 {
                    Err(format!("status {status}: {text}"))
                } else if stream {
                    check_stream(&text, n)
                } else {
                    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string()).unwrap_or(Value::Null);
                    let ch = v["choices"].as_array().cloned().unwrap_or_default();
                    if ch.len() == n && ch.iter().all(|c| c["finish_reason"].is_string()) {
                        Ok(())
                    } else {
                        Err(format!("bad body: {text}"))
                    }
                };
                match verdict {
                    Ok(()) => {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    // 100 clients that go away at random points, spread over the run.
    let spread = Duration::from_secs(secs).mul_f64(0.8) / 100;
    for i in 0..100u32 {
        let (c, base) = (c.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(spread * i).await;
            let b = json!({"model": REAL_MODEL_NAME, "prompt": PROMPTS[i as usize % PROMPTS.len()], "max_tokens": 256, "ignore_eos": true, "stream": i % 4 != 3});
            match i % 4 {
                3 => {
                    let quick = reqwest::Client::builder().timeout(Duration::from_millis(50 + u64::from(i * 37 % 450))).build().unwrap();
                    let _ = quick.post(format!("{base}/v1/completions")).json(&b).send().await;
                }
                mode => {
                    let Ok(mut r) = c.post(format!("{base}/v1/completions")).json(&b).send().await else { return };
                    let chunks = [0, 1, 5][mode as usize];
                    let mut got = 0;
                    while got < chunks {
                        match r.chunk().await {
                            Ok(Some(_)) => got += 1,
                            _ => break,
                        }
                    }
                    drop(r);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = Instant::now() - (deadline - Duration::from_secs(secs));
    let errors = errors.lock().unwrap().clone();
    let completed = done.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("load: {completed} requests completed in {:.1} s, {} errors", elapsed.as_secs_f64(), errors.len());
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert!(completed >= 64, "only {completed} requests completed");
    let metrics = wait_kv_drained(&c, &base, Duration::from_secs(20)).await;
    for name in
        ["llm_time_to_first_token_seconds", "llm_inter_token_latency_seconds", "llm_e2e_request_latency_seconds"]
    {
        let (sum, count) =
            (metric(&metrics, &format!("{name}_sum")).unwrap(), metric(&metrics, &format!("{name}_count")).unwrap());
        eprintln!("load: {name} mean {:.3} s over {count}", sum / count.max(1.0));
    }
    eprintln!(
        "load: client disconnects counted {:?}, aborted choices {:?}, preemptions {:?}",
        metric(&metrics, "llm_request_failures_total{reason=\"client_disconnect\"}"),
        metric(&metrics, "llm_requests_finished_total{reason=\"abort\"}"),
        metric(&metrics, "llm_preemptions_total")
    );
    assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 200);
    // Afterwards, a streamed answer still equals the non-streamed one.
    for (i, k) in [(0, 0), (1, 3), (2, 5)] {
        let (path, mut b) = body(i, k, false);
        let v: Value = c.post(format!("{base}{path}")).json(&b).send().await.unwrap().json().await.unwrap();
        b["stream"] = json!(true);
        let text = c.post(format!("{base}{path}")).json(&b).send().await.unwrap().text().await.unwrap();
        let (texts, _) = stream_text(&sse_data(&text));
        for (j, ch) in v["choices"].as_array().unwrap().iter().enumerate() {
            let want = ch["text"].as_str().or_else(|| ch["message"]["content"].as_str()).unwrap();
            assert_eq!(texts[j], want, "{b}");
        }
    }
}
