//! HTTP-layer tests over the fake engine (instant, deterministic, fault-injectable): every
//! route's shape, the error matrix, auth, overload, mid-stream errors, health, client
//! disconnects and drain. The same behaviours on the real model: `http_real.rs`.

mod common;

use common::*;
use kiln_server::fake::FakeConfig;
use kiln_server::ServerConfig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn cfg() -> ServerConfig {
    ServerConfig { served_model_name: "fake".into(), ..ServerConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_stream_equals_non_stream() {
    let s = fake_server(cfg(), FakeConfig::default()).await;
    let c = client();
    let url = format!("{}/v1/completions", s.base);
    let body = json!({"model": "fake", "prompt": "hello", "max_tokens": 7, "seed": 3, "n": 2});
    let r = post(&c, &url, &body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["completion_tokens"], 14);
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 19);
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let r = post(&c, &url, &sb).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let datas = sse_data(&r.text().await.unwrap());
    assert_eq!(datas.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&datas[datas.len() - 2]).unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"], v["usage"]);
    let (texts, fins) = stream_text(&datas);
    for i in 0..2 {
        assert_eq!(texts[i], v["choices"][i]["text"].as_str().unwrap());
        assert_eq!(fins[i].as_deref(), Some("length"));
        assert_eq!(v["choices"][i]["finish_reason"], "length");
    }
    assert_eq!(texts[0].len(), 7);
    assert_ne!(texts[0], texts[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_equals_non_stream_and_starts_with_role() {
    let s = fake_server(cfg(), FakeConfig::default()).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", s.base);
    let body = json!({"model": "fake", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 5, "seed": 1});
    let v: Value = post(&c, &url, &body).await.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(text.len(), 5);
    // ByteCodec renders "system: be brief\nuser: hi\nassistant:" = 36 bytes.
    assert_eq!(v["usage"]["prompt_tokens"], 36);
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let datas = sse_data(&post(&c, &url, &sb).await.text().await.unwrap());
    let first: Value = serde_json::from_str(&datas[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(datas.last().unwrap(), "[DONE]");
    let (texts, fins) = stream_text(&datas);
    assert_eq!(texts[0], text);
    assert_eq!(fins[0].as_deref(), Some("length"));
    assert!(datas.iter().all(|d| !d.contains("\"usage\"")), "no usage without include_usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_forms_echo_logprobs_and_beam() {
    let s = fake_server(cfg(), FakeConfig::default()).await;
    let c = client();
    let url = format!("{}/v1/completions", s.base);
    // Lists of strings and of token ids: choices are prompt-major.
    let v: Value =
        post(&c, &url, &json!({"prompt": ["ab", "cd", "ef"], "max_tokens": 2, "n": 2})).await.json().await.unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 6);
    assert_eq!(v["usage"]["prompt_tokens"], 6);
    let v: Value = post(&c, &url, &json!({"prompt": [[104, 105], [106]], "max_tokens": 1})).await.json().await.unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    // echo
    let v: Value =
        post(&c, &url, &json!({"prompt": "xy", "max_tokens": 2, "echo": true, "seed": 0})).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["text"], "xyab");
    // completions logprobs
    let v: Value = post(&c, &url, &json!({"prompt": "x", "max_tokens": 3, "logprobs": 2})).await.json().await.unwrap();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["text_offset"], json!([0, 1, 2]));
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    // chat logprobs, streamed and not
    let curl = format!("{}/v1/chat/completions", s.base);
    let b =
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "logprobs": true, "top_logprobs": 3});
    let v: Value = post(&c, &curl, &b).await.json().await.unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    let mut sb = b.clone();
    sb["stream"] = json!(true);
    let datas = sse_data(&post(&c, &curl, &sb).await.text().await.unwrap());
    let with_lp = datas.iter().filter(|d| d.contains("\"top_logprobs\"")).count();
    assert_eq!(with_lp, 2);
    // beam search returns n beams with text only in the finish
    let v: Value =
        post(&c, &url, &json!({"prompt": "x", "max_tokens": 3, "use_beam_search": true, "best_of": 3, "n": 2}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["text"].as_str().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_tokenize_openapi_metrics() {
    let s = fake_server(cfg(), FakeConfig::default()).await;
    let c = client();
    let v: Value = c.get(format!("{}/v1/models", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "fake");
    assert_eq!(v["data"][0]["max_model_len"], 4096);
    assert_eq!(c.get(format!("{}/v1/models/fake", s.base)).send().await.unwrap().status(), 200);
    let r = c.get(format!("{}/v1/models/other", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    error_obj(&r.text().await.unwrap());
    let v: Value = post(&c, &format!("{}/tokenize", s.base), &json!({"prompt": "abc"})).await.json().await.unwrap();
    assert_eq!(v["tokens"], json!([97, 98, 99]));
    assert_eq!(v["count"], 3);
    let v: Value = post(&c, &format!("{}/tokenize", s.base), &json!({"messages": [{"role": "user", "content": "a"}]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["count"], "user: a\nassistant:".len());
    let v: Value =
        post(&c, &format!("{}/detokenize", s.base), &json!({"tokens": [104, 105]})).await.json().await.unwrap();
    assert_eq!(v["prompt"], "hi");
    let spec: Value = c.get(format!("{}/openapi.json", s.base)).send().await.unwrap().json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for p in
        ["/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize", "/health", "/metrics"]
    {
        assert!(spec["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    assert!(spec["components"]["schemas"].get("ChatCompletionRequest").is_some());
    // /tokenize's two forms: each requires its field and leaves the other null or absent, so
    // `messages: []` beside a prompt (refused by the handler as both) matches neither.
    let forms = &spec["components"]["schemas"]["TokenizeRequest"]["allOf"][1]["oneOf"];
    for (form, (field, other)) in forms.as_array().unwrap().iter().zip([("prompt", "messages"), ("messages", "prompt")])
    {
        assert_eq!(form["required"], json!([field]), "{form}");
        assert_eq!(form["properties"][other]["type"], "null", "{form}");
    }
    let r = post(&c, &format!("{}/tokenize", s.base), &json!({"prompt": "a", "messages": []})).await;
    assert_eq!(r.status(), 400);
    let m = c.get(format!("{}/metrics", s.base)).send().await.unwrap();
    assert!(m.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = m.text().await.unwrap();
    for name in [
        "llm_requests_running",
        "llm_requests_waiting",
        "llm_kv_blocks_used",
        "llm_kv_blocks_total",
        "llm_preemptions_total",
        "llm_prefix_cache_hit_tokens_total",
        "llm_prompt_tokens_total",
        "llm_generation_tokens_total",
        "llm_time_to_first_token_seconds_count",
        "llm_inter_token_latency_seconds_count",
        "llm_e2e_request_latency_seconds_count",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "metrics lack {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_count_requests() {
    let s = fake_server(cfg(), FakeConfig::default()).await;
    let c = client();
    for stream in [false, true] {
        let r =
            post(&c, &format!("{}/v1/completions", s.base), &json!({"prompt": "x", "max_tokens": 3, "stream": stream}))
                .await;
        r.text().await.unwrap();
    }
    let text = c.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "llm_e2e_request_latency_seconds_count"), Some(2.0));
    assert_eq!(metric(&text, "llm_time_to_first_token_seconds_count"), Some(2.0));
    assert_eq!(metric(&text, "llm_inter_token_latency_seconds_count"), Some(4.0));
    assert_eq!(metric(&text, "llm_requests_finished_total{reason=\"length\"}"), Some(2.0));
}

/// Every way a request can be malformed: the exact status, OpenAI's error body, the param.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let s = fake_server(
        ServerConfig { max_body_bytes: 64 * 1024, ..cfg() },
        FakeConfig { max_model_len: 64, ..FakeConfig::default() },
    )
    .await;
    let c = client();
    let cmpl = format!("{}/v1/completions", s.base);
    let chat = format!("{}/v1/chat/completions", s.base);
    let p = |extra: Value| {
        let mut b = json!({"prompt": "hi", "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let m = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (&cmpl, p(json!({"prompt": ""})), 400, Some("prompt")),
        (&cmpl, p(json!({"prompt": []})), 400, Some("prompt")),
        (&cmpl, p(json!({"prompt": [[]]})), 400, Some("prompt")),
        (&cmpl, json!({"max_tokens": 2}), 400, Some("prompt")),
        (&cmpl, p(json!({"prompt": "x".repeat(64)})), 400, Some("prompt")),
        (&cmpl, p(json!({"prompt": "x".repeat(60), "max_tokens": 10})), 400, Some("max_tokens")),
        (&cmpl, p(json!({"max_tokens": 0})), 400, Some("max_tokens")),
        (&cmpl, p(json!({"max_tokens": -1})), 400, Some("max_tokens")),
        (&cmpl, p(json!({"max_tokens": 1_000_000_000_000u64})), 400, Some("max_tokens")),
        (&cmpl, p(json!({"max_tokens": "10"})), 400, Some("max_tokens")),
        (&cmpl, p(json!({"max_tokens": 1.5})), 400, Some("max_tokens")),
        (&cmpl, p(json!({"temperature": -1})), 400, Some("temperature")),
        (&cmpl, p(json!({"temperature": "NaN"})), 400, Some("temperature")),
        (&cmpl, p(json!({"temperature": 1e300})), 400, Some("temperature")),
        (&cmpl, p(json!({"temperature": 100.5})), 400, Some("temperature")),
        (&cmpl, p(json!({"top_p": 0})), 400, Some("top_p")),
        (&cmpl, p(json!({"top_p": -0.1})), 400, Some("top_p")),
        (&cmpl, p(json!({"top_p": 1.0001})), 400, Some("top_p")),
        (&cmpl, p(json!({"top_k": -2})), 400, Some("top_k")),
        (&cmpl, p(json!({"min_p": 2})), 400, Some("min_p")),
        (&cmpl, p(json!({"n": 0})), 400, Some("n")),
        (&cmpl, p(json!({"n": 1_000_000})), 400, Some("n")),
        (
            &cmpl,
            p(json!({"stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q"]})),
            400,
            Some("stop"),
        ),
        (&cmpl, p(json!({"stop": ""})), 400, Some("stop")),
        (&cmpl, p(json!({"stop": "x".repeat(10_000)})), 400, Some("stop")),
        (&cmpl, p(json!({"stop": 5})), 400, Some("stop")),
        (&cmpl, p(json!({"logit_bias": {"abc": 1}})), 400, Some("logit_bias")),
        (&cmpl, p(json!({"logprobs": 21})), 400, Some("logprobs")),
        (&cmpl, p(json!({"presence_penalty": 3})), 400, Some("presence_penalty")),
        (&cmpl, p(json!({"frequency_penalty": -3})), 400, Some("frequency_penalty")),
        (&cmpl, p(json!({"repetition_penalty": 0})), 400, Some("repetition_penalty")),
        (&cmpl, p(json!({"seed": "x"})), 400, Some("seed")),
        (&cmpl, p(json!({"stream": "yes"})), 400, Some("stream")),
        (&cmpl, p(json!({"prompt": [1, -1]})), 400, Some("prompt")),
        (&cmpl, p(json!({"prompt": [1, 99999]})), 400, Some("prompt")),
        (&cmpl, p(json!({"stop_token_ids": [100000]})), 400, Some("stop_token_ids")),
        (&cmpl, p(json!({"best_of": 3})), 400, Some("best_of")),
        (&cmpl, p(json!({"echo": true, "logprobs": 1})), 400, Some("echo")),
        (&cmpl, p(json!({"model": "nope"})), 404, Some("model")),
        (&cmpl, json!([1, 2]), 400, None),
        (&cmpl, json!("just a string"), 400, None),
        (&cmpl, json!(null), 400, None),
        (&chat, json!({"max_tokens": 2}), 400, Some("messages")),
        (&chat, m(json!({"messages": []})), 400, Some("messages")),
        (&chat, m(json!({"messages": [{"role": "wizard", "content": "x"}]})), 400, Some("messages[0].role")),
        (
            &chat,
            m(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})),
            400,
            Some("messages[0].content[0]"),
        ),
        (&chat, m(json!({"messages": [{"content": "x"}]})), 400, Some("messages[0]")),
        (&chat, m(json!({"messages": "hi"})), 400, Some("messages")),
        (&chat, m(json!({"max_completion_tokens": 0})), 400, Some("max_completion_tokens")),
        (&chat, m(json!({"top_logprobs": 30, "logprobs": true})), 400, Some("top_logprobs")),
        (&chat, m(json!({"tools": [{"type": "function"}]})), 400, Some("tools[0]")),
        (&chat, m(json!({"tool_choice": "required"})), 400, Some("tool_choice")),
        (
            &chat,
            m(json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]})),
            400,
            Some("tools[0].function.name"),
        ),
        // The fake codec has no grammar engine: structured output is refused, not ignored.
        (&chat, m(json!({"response_format": {"type": "json_object"}})), 400, Some("response_format")),
        (&chat, m(json!({"response_format": {"type": "json_object"}, "ignore_eos": true})), 400, Some("ignore_eos")),
        (&chat, m(json!({"temperature": -0.5})), 400, Some("temperature")),
    ];
    for (url, body, status, param) in cases {
        let r = post(&c, url, &body).await;
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, status, "{body}: {text}");
        let e = error_obj(&text);
        if let Some(p) = param {
            assert_eq!(e["param"].as_str(), Some(p), "{body}: {text}");
        }
    }
    // Raw bodies: malformed, truncated, bad UTF-8, lone surrogate, deep nesting, empty.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let raw: Vec<Vec<u8>> = vec![
        b"{\"prompt\": \"hi\", ".to_vec(),
        b"{\"prompt\": \"hi\"".to_vec(),
        b"{prompt: hi}".to_vec(),
        b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
        br#"{"prompt": "\ud800"}"#.to_vec(),
        deep.into_bytes(),
        Vec::new(),
        b"{\"prompt\": \"hi\"} trailing".to_vec(),
    ];
    for b in raw {
        let r = c.post(&cmpl).header("content-type", "application/json").body(b.clone()).send().await.unwrap();
        assert_eq!(r.status(), 400, "{:?}", String::from_utf8_lossy(&b));
        error_obj(&r.text().await.unwrap());
    }
    // Wrong content type → 415; body over the limit → 413.
    let r = c.post(&cmpl).header("content-type", "text/plain").body("{\"prompt\":\"hi\"}").send().await.unwrap();
    assert_eq!(r.status(), 415);
    error_obj(&r.text().await.unwrap());
    let big = json!({"prompt": "x".repeat(100 * 1024)});
    let r = post(&c, &cmpl, &big).await;
    assert_eq!(r.status(), 413);
    error_obj(&r.text().await.unwrap());
    // Unknown route → 404, wrong method → 405 with Allow; both OpenAI-shaped.
    let r = c.get(format!("{}/v1/nope", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    error_obj(&r.text().await.unwrap());
    let r = c.get(&cmpl).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("allow").is_some());
    error_obj(&r.text().await.unwrap());
    // Unknown fields are accepted.
    let r = post(&c, &cmpl, &p(json!({"frobnicate": {"x": 1}, "user": "u"}))).await;
    assert_eq!(r.status(), 200);
    // Nothing reached the engine with a bad request, and nothing was left running.
    assert_eq!(s.fake.live(), 0);
    let text = c.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(metric(&text, "llm_request_failures_total{reason=\"invalid\"}").unwrap() >= 60.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_route_but_health_and_metrics() {
    let s =
        fake_server(ServerConfig { api_keys: vec!["k-one".into(), "k-two".into()], ..cfg() }, FakeConfig::default())
            .await;
    let c = client();
    let routes: Vec<(&str, &str, Option<Value>)> = vec![
        ("POST", "/v1/completions", Some(json!({"prompt": "x", "max_tokens": 1}))),
        (
            "POST",
            "/v1/chat/completions",
            Some(json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1})),
        ),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/fake", None),
        ("POST", "/tokenize", Some(json!({"prompt": "x"}))),
        ("POST", "/detokenize", Some(json!({"tokens": [120]}))),
        ("GET", "/openapi.json", None),
        ("GET", "/no/such/route", None),
    ];
    let send = |method: &str, path: &str, body: &Option<Value>, auth: Option<(&'static str, String)>| {
        let mut rb = c.request(method.parse().unwrap(), format!("{}{}", s.base, path));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        if let Some((h, v)) = auth {
            rb = rb.header(h, v);
        }
        rb.send()
    };
    for (method, path, body) in &routes {
        for bad in [
            None,
            Some(("authorization", "Bearer wrong".to_string())),
            Some(("authorization", "bearer k-on".to_string())),
            Some(("authorization", "Basic k-one".to_string())),
            Some(("x-api-key", "k-one2".to_string())),
        ] {
            let r = send(method, path, body, bad.clone()).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} {bad:?}");
            let e = error_obj(&r.text().await.unwrap());
            assert_eq!(e["type"], "authentication_error");
        }
        for good in [
            ("authorization", "Bearer k-one".to_string()),
            ("authorization", "bearer k-two".to_string()),
            ("x-api-key", "k-two".to_string()),
        ] {
            let r = send(method, path, body, Some(good.clone())).await.unwrap();
            assert_ne!(r.status(), 401, "{method} {path} {good:?}");
        }
    }
    for open in ["/health", "/metrics"] {
        assert_eq!(c.get(format!("{}{}", s.base, open)).send().await.unwrap().status(), 200, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_429_with_retry_after_at_once() {
    let s = fake_server(
        ServerConfig { max_in_flight: 4, ..cfg() },
        FakeConfig { step_delay: Duration::from_millis(50), ..FakeConfig::default() },
    )
    .await;
    let c = client();
    let url = format!("{}/v1/completions", s.base);
    let body = json!({"prompt": "x", "max_tokens": 40, "stream": true});
    let mut held = Vec::new();
    for _ in 0..4 {
        let r = post(&c, &url, &body).await;
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let t = Instant::now();
    let r = post(&c, &url, &body).await;
    let took = t.elapsed();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let e = error_obj(&r.text().await.unwrap());
    assert_eq!(e["type"], "rate_limit_error");
    assert!(took < Duration::from_millis(500), "429 took {took:?}");
    assert_eq!(c.get(format!("{}/health", s.base)).send().await.unwrap().status(), 200);
    for r in held {
        let datas = sse_data(&r.text().await.unwrap());
        assert_eq!(datas.last().unwrap(), "[DONE]");
    }
    assert_eq!(post(&c, &url, &json!({"prompt": "x", "max_tokens": 1})).await.status(), 200);
    // The engine's own refusal (its queue is full) is a 429 too.
    let s2 = fake_server(cfg(), FakeConfig { capacity: 0, ..FakeConfig::default() }).await;
    let r = post(&c, &format!("{}/v1/completions", s2.base), &json!({"prompt": "x", "max_tokens": 1})).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_error_mid_stream_is_an_sse_error_then_done() {
    let s = fake_server(cfg(), FakeConfig { fail_after: Some(2), ..FakeConfig::default() }).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", s.base);
    let body = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10, "stream": true});
    let r = post(&c, &url, &body).await;
    assert_eq!(r.status(), 200);
    let datas = sse_data(&r.text().await.unwrap());
    assert_eq!(datas.last().unwrap(), "[DONE]");
    let err = &datas[datas.len() - 2];
    let e = error_obj(err);
    assert_eq!(e["type"], "server_error");
    let (texts, _) = stream_text(&datas[..datas.len() - 2]);
    assert_eq!(texts[0].len(), 2, "the tokens before the failure were streamed");
    let mut nb = body.clone();
    nb["stream"] = json!(false);
    let r = post(&c, &url, &nb).await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["x-should-retry"], "false");
    error_obj(&r.text().await.unwrap());
    let text = c.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "llm_request_failures_total{reason=\"engine_error\"}"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "llm_request_failures_total{reason=\"client_disconnect\"}"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_loading_and_the_engine_heartbeat() {
    // Loading: health 503, generation 503, models 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let state = kiln_server::AppState::new(cfg());
    let srv = kiln_server::start(state.clone(), listener).unwrap();
    let base = format!("http://{}", srv.addr);
    let c = client();
    let r = c.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_obj(&r.text().await.unwrap())["code"], "model_loading");
    let r = post(&c, &format!("{base}/v1/completions"), &json!({"prompt": "x"})).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(c.get(format!("{base}/v1/models")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{base}/metrics")).send().await.unwrap().status(), 200);
    let fake = kiln_server::fake::FakeBackend::new(FakeConfig::default());
    state.set_ready(kiln_server::state::Loaded {
        backend: fake.clone(),
        codec: std::sync::Arc::new(kiln_server::fake::ByteCodec),
    });
    assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 200);
    fake.set_stalled(true);
    let r = c.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_obj(&r.text().await.unwrap())["code"], "engine_unhealthy");
    fake.set_stalled(false);
    fake.set_alive(false);
    assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 503);
    fake.set_alive(true);
    assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 200);
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_aborts_the_request() {
    let s = fake_server(cfg(), FakeConfig { step_delay: Duration::from_millis(20), ..FakeConfig::default() }).await;
    let c = client();
    let url = format!("{}/v1/completions", s.base);
    // Streaming: read two chunks, then drop the response.
    let mut r = post(&c, &url, &json!({"prompt": "x", "max_tokens": 10_00, "stream": true})).await;
    let mut got = 0;
    while got < 2 {
        if r.chunk().await.unwrap().is_some() {
            got += 1;
        }
    }
    assert_eq!(s.fake.live(), 1);
    drop(r);
    wait_until(|| s.fake.live() == 0, Duration::from_secs(3)).await;
    assert_eq!(s.fake.aborted(), 1);
    // Non-streaming: the client gives up after 200 ms.
    let short = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    assert!(short.post(&url).json(&json!({"prompt": "x", "max_tokens": 1000})).send().await.is_err());
    wait_until(|| s.fake.live() == 0, Duration::from_secs(3)).await;
    assert_eq!(s.fake.aborted(), 2);
    let text = c.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "llm_request_failures_total{reason=\"client_disconnect\"}"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "llm_http_requests_in_flight"), Some(0.0));
}

async fn wait_until(cond: impl Fn() -> bool, limit: Duration) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "condition not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_and_refuses_new_requests() {
    let s = fake_server(
        ServerConfig { shutdown_timeout: Duration::from_secs(20), ..cfg() },
        FakeConfig { step_delay: Duration::from_millis(20), ..FakeConfig::default() },
    )
    .await;
    let c = client();
    let url = format!("{}/v1/completions", s.base);
    let mut streams = Vec::new();
    for _ in 0..4 {
        let r = post(&c, &url, &json!({"prompt": "x", "max_tokens": 40, "stream": true})).await;
        streams.push(tokio::spawn(async move { r.text().await.unwrap() }));
    }
    let base = s.base.clone();
    let fake = s.fake.clone();
    let t = Instant::now();
    let shut = tokio::spawn(s.server.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = post(&c, &url, &json!({"prompt": "x", "max_tokens": 1})).await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_obj(&r.text().await.unwrap())["code"], "shutting_down");
    for h in streams {
        let datas = sse_data(&h.await.unwrap());
        assert_eq!(datas.last().unwrap(), "[DONE]");
        let (texts, fins) = stream_text(&datas);
        assert_eq!((texts[0].len(), fins[0].as_deref()), (40, Some("length")));
    }
    let report = shut.await.unwrap().unwrap();
    assert_eq!(report.aborted, 0);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(fake.is_shut_down());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_aborts_streams_with_done() {
    let s = fake_server(
        ServerConfig { shutdown_timeout: Duration::from_millis(300), ..cfg() },
        FakeConfig { step_delay: Duration::from_millis(20), ..FakeConfig::default() },
    )
    .await;
    let c = client();
    let url = format!("{}/v1/chat/completions", s.base);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let r = post(
            &c,
            &url,
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4000, "stream": true}),
        )
        .await;
        streams.push(tokio::spawn(async move { r.text().await.unwrap() }));
    }
    let t = Instant::now();
    let report = s.server.shutdown().await.unwrap();
    assert_eq!((report.aborted, report.stuck), (3, 0));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for h in streams {
        let datas = sse_data(&h.await.unwrap());
        assert_eq!(datas.last().unwrap(), "[DONE]");
        let (_, fins) = stream_text(&datas);
        assert_eq!(fins[0].as_deref(), Some("abort"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s =
        fake_server(ServerConfig { header_read_timeout: Duration::from_millis(500), ..cfg() }, FakeConfig::default())
            .await;
    let mut slow = tokio::net::TcpStream::connect(s.server.addr).await.unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = Instant::now();
    // Meanwhile everyone else is served.
    let r = post(&client(), &format!("{}/v1/completions", s.base), &json!({"prompt": "x", "max_tokens": 1})).await;
    assert_eq!(r.status(), 200);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow connection was not closed");
    assert!(t.elapsed() >= Duration::from_millis(400), "closed too early: {:?}", t.elapsed());
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}
