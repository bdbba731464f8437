//! Streamed tool calls on the real default model (CPU), as OpenAI streams them: a call's first
//! `delta.tool_calls` chunk has its `index`, `id`, `type` and `function.name` with empty
//! `arguments`, and later chunks carry successive pieces of the argument text as it is
//! generated. For the same seeded request the pieces joined equal the unstreamed reply's
//! `arguments` byte for byte, calls are numbered 0, 1, ... (parallel calls included), and no
//! tool-call markup ever reaches `delta.content`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn url(path: &str) -> String {
    format!("{}{}", real_server().base, path)
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
            "properties": {"tz": {"enum": ["UTC", "CET", "JST"]}, "precise": {"type": "boolean"}},
            "required": ["tz"], "additionalProperties": false}}}
    ])
}

/// One streamed call as its chunks told it.
#[derive(Debug, Default)]
struct Streamed {
    id: Option<String>,
    name: Option<String>,
    arguments: String,
    /// Non-empty argument pieces after the first chunk.
    pieces: usize,
}

/// One streamed choice: its content, finish reason and calls by index.
type Choice = (String, Option<String>, BTreeMap<usize, Streamed>);

/// Per choice index, what a chat SSE body said, with OpenAI's shape of each tool-call chunk
/// checked on the way.
fn read_stream(datas: &[String]) -> BTreeMap<usize, Choice> {
    let mut out: BTreeMap<usize, Choice> = BTreeMap::new();
    for d in datas.iter().filter(|d| *d != "[DONE]") {
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk is not JSON ({e}): {d}"));
        for c in v["choices"].as_array().unwrap() {
            let (content, finish, calls) = out.entry(c["index"].as_u64().unwrap() as usize).or_default();
            if let Some(t) = c["delta"]["content"].as_str() {
                assert!(!t.contains("tool_call>") && !t.contains("<tool_c"), "markup as content: {d}");
                content.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                *finish = Some(f.to_string());
            }
            for tc in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let index = tc["index"].as_u64().unwrap() as usize;
                let args = tc["function"]["arguments"].as_str().unwrap_or_else(|| panic!("no arguments: {d}"));
                let latest = index + 1 == calls.len();
                match calls.get_mut(&index) {
                    None => {
                        assert_eq!(index, calls.len(), "calls are numbered 0, 1, ... in order: {d}");
                        assert_eq!(tc["type"], "function", "{d}");
                        assert_eq!(args, "", "the first chunk's arguments are empty: {d}");
                        let id = tc["id"].as_str().map(str::to_string);
                        let name = tc["function"]["name"].as_str().map(str::to_string);
                        assert!(id.is_some() && name.is_some(), "the first chunk names the call: {d}");
                        calls.insert(index, Streamed { id, name, ..Streamed::default() });
                    }
                    Some(call) => {
                        assert!(latest, "arguments of the call being written: {d}");
                        assert!(tc.get("id").is_none() && tc.get("type").is_none(), "{d}");
                        assert!(tc["function"].get("name").is_none() && !args.is_empty(), "{d}");
                        call.arguments.push_str(args);
                        call.pieces += 1;
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn streamed_argument_pieces_join_to_the_unstreamed_arguments() {
    let c = client();
    let (mut calls_seen, mut multi_piece, mut parallel) = (0, 0, 0);
    for (seed, choice) in [
        (1u64, json!("required")),
        (2, json!("required")),
        (7, json!("required")),
        (3, json!({"type": "function", "function": {"name": "get_time"}})),
    ] {
        let body = json!({"model": REAL_MODEL_NAME, "messages": [{"role": "user", "content": "What time is it in Tokyo, and the weather in Oslo and Lima?"}],
            "tools": tools(), "tool_choice": choice, "parallel_tool_calls": true, "max_tokens": 96,
            "temperature": 0.9, "seed": seed, "n": 2});
        let r = post(&c, &url("/v1/chat/completions"), &body).await;
        assert_eq!(r.status(), 200);
        let whole: Value = r.json().await.unwrap();
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let datas = sse_data(&post(&c, &url("/v1/chat/completions"), &sb).await.text().await.unwrap());
        assert_eq!(datas.last().map(String::as_str), Some("[DONE]"));
        let streamed = read_stream(&datas);
        let choices = whole["choices"].as_array().unwrap();
        assert_eq!(streamed.len(), choices.len());
        for ch in choices {
            let (content, finish, calls) = &streamed[&(ch["index"].as_u64().unwrap() as usize)];
            let msg = &ch["message"];
            assert_eq!(finish.as_deref(), ch["finish_reason"].as_str(), "{ch}");
            assert_eq!(content.as_str(), msg["content"].as_str().unwrap_or(""), "{ch}");
            let want = msg["tool_calls"].as_array().cloned().unwrap_or_default();
            assert_eq!(calls.len(), want.len(), "seed {seed}: {ch}\nstreamed {calls:?}");
            for (i, w) in want.iter().enumerate() {
                let got = &calls[&i];
                assert_eq!(got.name.as_deref(), w["function"]["name"].as_str(), "{ch}");
                // Byte for byte, and the model's own text (a JSON object).
                assert_eq!(got.arguments, w["function"]["arguments"].as_str().unwrap(), "seed {seed}: {ch}");
                assert!(
                    serde_json::from_str::<Value>(&got.arguments).is_ok_and(|a| a.is_object())
                        || finish.as_deref() == Some("length")
                );
                assert!(got.id.as_deref().is_some_and(|id| id.starts_with("call_")));
                multi_piece += usize::from(got.pieces > 1);
            }
            calls_seen += want.len();
            parallel += usize::from(want.len() > 1);
        }
    }
    eprintln!(
        "tool calls: {calls_seen}, streamed in several pieces: {multi_piece}, choices with parallel calls: {parallel}"
    );
    assert!(calls_seen >= 8, "every choice was made to call a tool");
    assert!(parallel > 0, "some choice made parallel calls (indices 0, 1, ...)");
    assert_eq!(multi_piece, calls_seen, "each call's arguments arrived as they were generated, not at the end");
}
