//! `kiln bench --url URL`: the same synthetic requests as `--offline`, sent as streaming
//! completions (`POST /v1/completions`, token-id prompts, greedy, `ignore_eos`) to a running
//! server, the way a load generator of the peers' tools does. Timing is the client's: a
//! request's clock starts when it is sent, its first token is the first SSE chunk with a
//! choice, inter-token gaps are between such chunks; the output count is the server's
//! `usage.completion_tokens` (sent with `stream_options.include_usage`).

use crate::cmd_bench::{BenchArgs, Summary, Trace};
use anyhow::{bail, Context, Result};
use futures::StreamExt;
use kiln_runtime::engine::GenerateRequest;
use std::time::{Duration, Instant};

async fn model_name(client: &reqwest::Client, base: &str) -> Result<String> {
    let v: serde_json::Value = client.get(format!("{base}/v1/models")).send().await?.error_for_status()?.json().await?;
    v["data"][0]["id"].as_str().map(str::to_string).context("the server lists no model")
}

async fn one(client: reqwest::Client, base: String, model: String, req: GenerateRequest) -> Trace {
    let prompt_tokens = req.prompt_ids.len();
    let sent = Instant::now();
    let mut t = Trace { prompt_tokens, output_tokens: 0, ttft: None, gaps: vec![], end: sent, error: None };
    let body = serde_json::json!({
        "model": model,
        "prompt": req.prompt_ids,
        "max_tokens": req.params.max_tokens,
        "temperature": req.params.temperature,
        "top_p": req.params.top_p,
        "top_k": req.params.top_k,
        "seed": req.params.seed,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let resp =
        match client.post(format!("{base}/v1/completions")).json(&body).send().await.and_then(|r| r.error_for_status())
        {
            Ok(r) => r,
            Err(e) => {
                t.error = Some(e.to_string());
                return t;
            }
        };
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut last = sent;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                t.error = Some(e.to_string());
                break;
            }
        };
        buf.extend_from_slice(&chunk);
        while let Some(at) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..at + 2).collect();
            let now = Instant::now();
            let text = String::from_utf8_lossy(&event);
            let Some(data) = text.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                t.end = now;
                return t;
            }
            let v: serde_json::Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => {
                    t.error = Some(format!("bad SSE data: {e}"));
                    return t;
                }
            };
            if let Some(e) = v.get("error") {
                t.error = Some(e.to_string());
                return t;
            }
            if v["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                match t.ttft {
                    None => t.ttft = Some(now - sent),
                    Some(_) => t.gaps.push(now - last),
                }
                last = now;
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                t.output_tokens = n as usize;
            }
        }
    }
    t.end = Instant::now();
    if t.error.is_none() {
        t.error = Some("the stream ended without [DONE]".into());
    }
    t
}

pub fn run(url: &str, a: &BenchArgs, reqs: Vec<(Duration, GenerateRequest)>) -> Result<()> {
    let base = url.trim_end_matches('/').trim_end_matches("/v1").to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client = reqwest::Client::builder().build()?;
    let model = rt.block_on(model_name(&client, &base)).with_context(|| format!("asking {base} for its model"))?;
    let t0 = Instant::now();
    let traces: Vec<Trace> = rt.block_on(async {
        let mut tasks = Vec::with_capacity(reqs.len());
        for (at, req) in reqs {
            let wait = (t0 + at).saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            tasks.push(tokio::spawn(one(client.clone(), base.clone(), model.clone(), req)));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await?);
        }
        Ok::<_, tokio::task::JoinError>(out)
    })?;
    let total = traces.iter().map(|t| t.end).max().unwrap_or(t0) - t0;
    let sum = Summary::of(&traces, total)?;
    if traces.iter().any(|t| t.output_tokens == 0) {
        bail!("a stream carried no usage (the server must honour stream_options.include_usage)");
    }
    if a.json {
        let mut v = sum.json();
        v["url"] = serde_json::json!(base);
        v["model"] = serde_json::json!(model);
        println!("{v}");
        return Ok(());
    }
    println!("kiln bench --url {base}: model `{model}`");
    sum.print("over HTTP");
    Ok(())
}
