//! The SmolLM2 GGUF's own chat template renders with minijinja exactly as transformers'
//! `apply_chat_template` did (tests/fixtures/reference.json), and the rendered prompt
//! tokenizes to HF's ids.

mod tokenizer_support;

use kiln_models::tokenizer::{ChatMessage, ChatTemplate, CHATML_TEMPLATE};
use tokenizer_support::{ids_of, reference, smollm2};

fn messages(v: &serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).expect("messages are [{role, content}]")
}

#[test]
fn gguf_template_is_the_reference_template() {
    let tok = smollm2();
    assert_eq!(tok.chat_template(), reference()["chat_template"]["template"].as_str());
}

#[test]
fn renders_reference_examples() {
    let tok = smollm2();
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    let reference = reference();
    for key in ["example", "example_user_only"] {
        let case = &reference["chat_template"][key];
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let text = template.render_for(&tok, &messages(&case["messages"]), add).unwrap();
        assert_eq!(text, case["rendered"].as_str().unwrap(), "{key}");
        if !case["ids"].is_null() {
            assert_eq!(tok.encode(&text, false).unwrap(), ids_of(&case["ids"]), "{key}");
        }
    }
}

#[test]
fn renders_reference_chat_prompts() {
    let tok = smollm2();
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    let reference = reference();
    let chats: Vec<_> =
        reference["prompts"].as_array().expect("prompts").iter().filter(|p| p["chat"] == true).collect();
    assert!(!chats.is_empty());
    for p in chats {
        let text = template.render_for(&tok, &messages(&p["messages"]), true).unwrap();
        assert_eq!(text, p["text"].as_str().unwrap());
        assert_eq!(tok.encode(&text, false).unwrap(), ids_of(&p["ids"]));
    }
}

#[test]
fn chatml_fallback_agrees_with_smollm2_when_a_system_turn_is_given() {
    // SmolLM2's template is ChatML plus a default system turn; with an explicit system
    // message the two must render identically.
    let tok = smollm2();
    let own = ChatTemplate::for_tokenizer(&tok).unwrap();
    let fallback = ChatTemplate::new(CHATML_TEMPLATE).unwrap();
    let msgs = vec![
        ChatMessage::new("system", "Be terse."),
        ChatMessage::new("user", "2+2?"),
        ChatMessage::new("assistant", "4"),
        ChatMessage::new("user", "And 3+3?"),
    ];
    for add in [false, true] {
        assert_eq!(own.render_for(&tok, &msgs, add).unwrap(), fallback.render_for(&tok, &msgs, add).unwrap());
    }
}
