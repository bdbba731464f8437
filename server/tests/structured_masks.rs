//! The grammar engine on the default model's real tokenizer, without running the model: for
//! each spec, the tokens of a conforming text are all allowed by the masks in turn and end
//! where EOS is allowed, while a non-conforming text is cut off by a mask; bad specs are
//! refused with a reason; compiled grammars are cached; and per-token mask times (p99) are
//! printed for docs/perf.md.

use kiln_models::gguf::GgufFile;
use kiln_models::tokenizer::Tokenizer;
use kiln_runtime::sample::constraint::{allows, mask_words};
use kiln_server::structured::{closed_objects, Spec, Structured, StructuredError};
use serde_json::json;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

struct Env {
    tok: Tokenizer,
    st: Structured,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = kiln_models::fetch::default_model_path().expect("the default model (scripts/test.sh fetches it)");
        let file = GgufFile::open(&path).expect("open the GGUF");
        let spec = kiln_models::gguf_tokenizer::tokenizer_spec(&file).expect("tokenizer metadata");
        let tok = Tokenizer::from_gguf_spec(&spec).expect("tokenizer");
        let st = Structured::new(&tok).expect("llguidance environment");
        Env { tok, st }
    })
}

/// How far `text` gets under `spec`: `Ok(times)` when every token is allowed and EOS is
/// allowed after the last, else `Err(index of the first refused token, or len at a missing EOS)`.
fn walk(spec: &Spec, text: &str) -> Result<Vec<Duration>, usize> {
    let e = env();
    let src = e.st.compile(spec).unwrap_or_else(|err| panic!("{spec:?}: {err}"));
    let mut c = src.start(&e.tok.eos_ids()).unwrap();
    let ids = e.tok.encode(text, false).unwrap();
    let eos = e.tok.eos_ids()[0];
    let mut mask = vec![0u32; mask_words(e.tok.vocab_size())];
    let mut times = Vec::new();
    for (i, &t) in ids.iter().chain(std::iter::once(&eos)).enumerate() {
        mask.iter_mut().for_each(|w| *w = 0);
        let t0 = Instant::now();
        c.fill_mask(&mut mask).unwrap();
        times.push(t0.elapsed());
        if !allows(&mask, t) {
            return Err(i);
        }
        if i < ids.len() {
            c.accept(t).unwrap();
        }
    }
    Ok(times)
}

fn cases() -> Vec<(Spec, &'static str, &'static str)> {
    let schema = |v: serde_json::Value| Spec::JsonSchema(v);
    vec![
        (Spec::JsonObject, r#"{"a": [1, 2], "b": {"c": null}}"#, r#"[1, 2]"#),
        (
            schema(json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150}}, "required": ["name", "age"]})),
            r#"{"name": "Ada", "age": 36}"#,
            r#"{"name": "Ada", "age": 200}"#,
        ),
        (
            schema(json!({"type": "object", "properties": {"color": {"enum": ["red", "green"]}}, "required": ["color"], "additionalProperties": false})),
            r#"{"color": "green"}"#,
            r#"{"color": "blue"}"#,
        ),
        // `strict: true`: the same kind of open schema, closed, refuses a key it does not declare
        // (the open form above would take one).
        (
            schema(closed_objects(&json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "object", "properties": {"c": {"type": "integer"}}}}, "required": ["a", "b"]}))),
            r#"{"a": 1, "b": {"c": 2}}"#,
            r#"{"a": 1, "b": {"c": 2, "d": 3}}"#,
        ),
        (
            schema(json!({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3})),
            r#"[1, 2, 3]"#,
            r#"[1, 2, 3, 4]"#,
        ),
        (
            schema(json!({"$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/p"}}, "required": ["a"]})),
            r#"{"a": {"x": 1.5}}"#,
            r#"{"a": {"y": 1.5}}"#,
        ),
        (
            schema(json!({"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["zip"]})),
            r#"{"zip": "12345"}"#,
            r#"{"zip": "1234a"}"#,
        ),
        (Spec::Regex(r"\d{3}-[a-z]+".into()), "123-abc", "12-abc"),
        (Spec::Choice(vec!["yes".into(), "no".into(), "maybe so".into()]), "maybe so", "perhaps"),
        (Spec::Lark("start: \"(\" num (\",\" num)* \")\"\nnum: /[0-9]+/\n".into()), "(1,22,3)", "(1,,2)"),
        (
            Spec::ToolCalls {
                tools: vec![
                    ("get_weather".into(), json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})),
                    ("add".into(), json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]})),
                ],
                parallel: true,
            },
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"sub\", \"arguments\": {}}\n</tool_call>",
        ),
    ]
}

#[test]
fn conforming_texts_pass_and_others_are_cut_off() {
    let mut times = Vec::new();
    for (spec, good, bad) in cases() {
        match walk(&spec, good) {
            Ok(t) => times.extend(t),
            Err(i) => panic!("{spec:?}: the conforming {good:?} was refused at token {i}"),
        }
        assert!(walk(&spec, bad).is_err(), "{spec:?}: {bad:?} should be refused");
    }
    times.sort_unstable();
    let p = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    eprintln!("mask times over {} tokens: p50 {:?}, p99 {:?}, max {:?}", times.len(), p(0.5), p(0.99), p(1.0));
}

#[test]
fn the_given_end_ids_and_only_they_end_a_finished_grammar() {
    let e = env();
    let src = e.st.compile(&Spec::Choice(vec!["ok".into()])).unwrap();
    let ends = [e.tok.eos_ids()[1], 7];
    let mut c = src.start(&ends).unwrap();
    for t in e.tok.encode("ok", false).unwrap() {
        c.accept(t).unwrap();
    }
    let mut mask = vec![0u32; mask_words(e.tok.vocab_size())];
    c.fill_mask(&mut mask).unwrap();
    let allowed: Vec<u32> = (0..e.tok.vocab_size() as u32).filter(|&t| allows(&mask, t)).collect();
    let mut want = ends.to_vec();
    want.sort_unstable();
    assert_eq!(allowed, want, "only the sequence's end ids once the grammar is complete");
    // Forks are independent: one advances, the other is still at the start.
    let a = src.start(&ends).unwrap();
    let mut b = a.fork();
    b.accept(e.tok.encode("ok", false).unwrap()[0]).unwrap();
    let mut m2 = vec![0u32; mask.len()];
    a.fork().fill_mask(&mut m2).unwrap();
    assert!(!allows(&m2, ends[0]) && allows(&m2, e.tok.encode("ok", false).unwrap()[0]));
    b.fill_mask(&mut m2).unwrap();
    assert!(!allows(&m2, e.tok.eos_ids()[0]), "llguidance's own EOS is not passed on unless it is an end id");
}

#[test]
fn bad_specs_are_refused_with_the_reason_and_good_ones_cached() {
    let e = env();
    let bad = [
        (Spec::JsonSchema(json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})), "missing"),
        (Spec::JsonSchema(json!({"type": "no-such-type"})), "no-such-type"),
        (Spec::JsonSchema(json!(42)), "object"),
        (Spec::Regex("(unclosed".into()), ""),
        (Spec::Lark("start: undefined_rule\n".into()), "undefined_rule"),
        (Spec::Choice(vec![]), "choice"),
        // The vocabulary has no token with byte 0xF1: after the spellable prefix, generation
        // would find no token to continue with (once an engine error, a 500; found by
        // tests/python/openapi_fuzz.py).
        (Spec::Choice(vec!["ok \u{40000}".into()]), "U+40000"),
        (Spec::JsonSchema(json!({"const": "\u{90000}"})), "U+90000"),
    ];
    for (spec, needle) in bad {
        match e.st.compile(&spec) {
            Err(StructuredError::Invalid(m)) => assert!(m.contains(needle), "{spec:?}: {m}"),
            Ok(_) => panic!("{spec:?} should be refused"),
        }
    }
    let spec = Spec::JsonSchema(json!({"type": "object", "properties": {"k": {"type": "boolean"}}}));
    let t = Instant::now();
    let first = e.st.compile(&spec).unwrap();
    let cold = t.elapsed();
    let t = Instant::now();
    let again = e.st.compile(&spec).unwrap();
    let warm = t.elapsed();
    assert!(Arc::ptr_eq(&first, &again), "the same schema text is compiled once");
    eprintln!("schema compile: cold {cold:?}, cached {warm:?}");
}

#[test]
fn forced_parallel_calls_are_capped() {
    let spec = Spec::ToolCalls { tools: vec![("f".into(), json!({"type": "object"}))], parallel: true };
    let call = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
    let calls = |k: usize| vec![call; k].join("\n");
    assert!(walk(&spec, &calls(kiln_server::structured::spec::MAX_PARALLEL_CALLS)).is_ok());
    assert!(walk(&spec, &calls(kiln_server::structured::spec::MAX_PARALLEL_CALLS + 1)).is_err());
    let single = Spec::ToolCalls { tools: vec![("f".into(), json!({"type": "object"}))], parallel: false };
    assert!(walk(&single, &calls(1)).is_ok() && walk(&single, &calls(2)).is_err());
}
