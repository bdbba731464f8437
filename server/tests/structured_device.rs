//! Constrained rows on the device sampler, end to end on the real default model (CPU): the
//! same constrained requests to a server whose engine samples on the host and to one whose
//! engine takes the device sampler (here its CPU twin, with each constrained row's llguidance
//! mask in its job) give the same replies — text, tool calls, finish reasons, usage, and
//! log-probabilities up to the last bit of `ln` — and the device server copies no step's
//! logits to the host.

mod common;

use common::*;
use kiln_runtime::engine::{EngineConfig, EngineStats, SamplingPlacement};
use kiln_server::ServerConfig;
use serde_json::{json, Value};

fn server(sampling: SamplingPlacement) -> RealServer {
    start_real(
        ServerConfig { served_model_name: REAL_MODEL_NAME.into(), ..ServerConfig::default() },
        EngineConfig { sampling, ..EngineConfig::default() },
    )
}

fn stats(s: &RealServer) -> EngineStats {
    s.state.loaded().expect("the model is loaded").backend.stats()
}

const WEATHER: &str = r#"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": false}}}"#;

/// Constrained requests over every setting the sampler has: greedy, seeded sampling with
/// `n > 1`, top-p, penalties, log-probabilities; JSON schema, regex, choice, a forced tool call.
fn requests() -> Vec<(&'static str, Value)> {
    let person = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["name", "age"], "additionalProperties": false});
    let schema = json!({"type": "json_schema", "json_schema": {"name": "p", "schema": person, "strict": true}});
    let chat = |extra: Value| {
        let mut b = json!({"model": REAL_MODEL_NAME, "messages": [{"role": "user", "content": "A person as JSON."}],
            "max_tokens": 32, "response_format": schema.clone()});
        extra.as_object().unwrap().iter().for_each(|(k, v)| b[k] = v.clone());
        ("/v1/chat/completions", b)
    };
    let completion = |extra: Value| {
        let mut b = json!({"model": REAL_MODEL_NAME, "prompt": "My favourite thing is", "max_tokens": 12});
        extra.as_object().unwrap().iter().for_each(|(k, v)| b[k] = v.clone());
        ("/v1/completions", b)
    };
    let weather: Value = serde_json::from_str(WEATHER).unwrap();
    vec![
        chat(json!({"temperature": 0, "logprobs": true, "top_logprobs": 3})),
        chat(json!({"temperature": 1.0, "seed": 11, "n": 3})),
        chat(json!({"temperature": 0.8, "top_p": 0.9, "seed": 4, "frequency_penalty": 0.6, "presence_penalty": 0.4})),
        completion(json!({"guided_regex": "[a-z]+ (of|and) [0-9]{2,4}", "temperature": 1.2, "seed": 5, "n": 2,
            "repetition_penalty": 1.3, "logprobs": 2})),
        completion(
            json!({"guided_choice": ["red", "green", "blue", "a very long answer"], "temperature": 1.5, "seed": 3}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": REAL_MODEL_NAME, "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                "tools": [weather], "tool_choice": "required", "max_tokens": 40, "temperature": 0.7, "seed": 9}),
        ),
    ]
}

/// `a` and `b` equal but for ids and timestamps (tool-call ids are drawn per reply), with
/// numbers within 1e-5 relative (log-probabilities: the twin's `ln` against the sampler's).
fn same_reply(a: &Value, b: &Value, at: &str) -> Result<(), String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys = |o: &serde_json::Map<String, Value>| {
                o.keys().filter(|k| *k != "id" && *k != "created").cloned().collect::<Vec<_>>()
            };
            if keys(x) != keys(y) {
                return Err(format!("{at}: keys {:?} against {:?}", keys(x), keys(y)));
            }
            keys(x).iter().try_for_each(|k| same_reply(&x[k], &y[k], &format!("{at}.{k}")))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().try_for_each(|(i, (p, q))| same_reply(p, q, &format!("{at}[{i}]")))
        }
        (Value::Number(x), Value::Number(y)) => {
            let (p, q) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if p == q || (p - q).abs() <= 1e-5 * q.abs().max(1.0) {
                Ok(())
            } else {
                Err(format!("{at}: {p} against {q}"))
            }
        }
        _ if a == b => Ok(()),
        _ => Err(format!("{at}: {a} against {b}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_rows_on_the_device_sampler_equal_the_host_path() {
    let (host, device) = (server(SamplingPlacement::Host), server(SamplingPlacement::Device));
    let c = client();
    let mut finishes = Vec::new();
    for (path, body) in requests() {
        let mut replies = Vec::new();
        for s in [&host, &device] {
            let r = post(&c, &format!("{}{path}", s.base), &body).await;
            assert_eq!(r.status(), 200, "{body}");
            replies.push(r.json::<Value>().await.unwrap());
        }
        if let Err(e) = same_reply(&replies[0], &replies[1], "reply") {
            panic!("{e}\nrequest {body}\nhost   {}\ndevice {}", replies[0], replies[1]);
        }
        for ch in replies[0]["choices"].as_array().unwrap() {
            finishes.push(ch["finish_reason"].as_str().unwrap_or_default().to_string());
        }
    }
    // The requests did finish inside their grammars, and the forced call was made.
    assert!(finishes.iter().filter(|f| *f == "stop").count() >= 3, "{finishes:?}");
    assert!(finishes.iter().any(|f| f == "tool_calls"), "{finishes:?}");
    let (h, d) = (stats(&host), stats(&device));
    assert!(h.host_sampling_steps > 0 && h.masks.count > 0, "{h:?}");
    assert_eq!(d.host_sampling_steps, 0, "the device server copied logits to the host: {d:?}");
    assert_eq!(d.masks.count, h.masks.count, "one mask per constrained row on either path");
}
