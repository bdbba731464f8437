//! The tokenizer built from the real SmolLM2-135M-Instruct GGUF metadata encodes exactly as
//! HF transformers does (ids in tests/fixtures/reference.json), round-trips text, treats
//! control tokens as single special ids, and survives saving as tokenizer.json.

mod tokenizer_support;

use kiln_models::tokenizer::Tokenizer;
use tokenizer_support::{ids_of, reference, reference_texts, smollm2, smollm2_spec};

/// Texts beyond the fixture's, for invariants that need no reference ids.
const EXTRA_TEXTS: &[&str] = &[
    "x = 12345 + 678;  y=0.5\n",
    "   1   22\t333\n\n4444",
    "Ελληνικά, русский, עברית, العربية",
    "multi\n\n\n\nline\r\n\r\nwindows",
    "<|im_start|><|im_end|><|endoftext|><repo_name>inline<file_sep>",
    "<|im_start|user (not special)",
];

fn all_texts() -> Vec<String> {
    let mut texts: Vec<String> = reference_texts(&reference()).into_iter().map(|c| c.0).collect();
    texts.extend(EXTRA_TEXTS.iter().map(|s| s.to_string()));
    texts
}

#[test]
fn spec_is_what_the_tests_assume() {
    let spec = smollm2_spec();
    assert_eq!(spec.model, "gpt2");
    assert_eq!(spec.pre.as_deref(), Some("smollm"));
    assert_eq!((spec.tokens.len(), spec.merges.len()), (49152, 48900));
    assert_eq!(spec.add_bos, Some(false));
}

#[test]
fn encodes_reference_texts_like_transformers() {
    let tok = smollm2();
    let mut mismatches = Vec::new();
    for (text, hf_ids, hf_decoded) in reference_texts(&reference()) {
        let ids = tok.encode(&text, false).expect("encode");
        if ids != hf_ids {
            mismatches.push(format!("{text:?}\n  kiln: {ids:?}\n  hf:   {hf_ids:?}"));
        }
        assert_eq!(tok.decode(&hf_ids, false).expect("decode"), hf_decoded, "{text:?}");
    }
    assert!(mismatches.is_empty(), "ids differ from HF:\n{}", mismatches.join("\n"));
}

#[test]
fn encodes_reference_prompts_like_transformers() {
    let tok = smollm2();
    let reference = reference();
    let prompts = reference["prompts"].as_array().expect("reference.json has `prompts`");
    for p in prompts {
        let text = p["text"].as_str().expect("prompt text");
        assert_eq!(tok.encode(text, false).unwrap(), ids_of(&p["ids"]), "{text:?}");
    }
}

#[test]
fn special_tokens_match_transformers() {
    let tok = smollm2();
    for (text, id) in [("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2)] {
        assert_eq!(tok.encode(text, false).unwrap(), vec![id], "{text}");
        assert!(tok.is_special(id));
    }
    let info = &reference()["tokenizer_info"];
    for (id, content) in info["special_tokens"].as_object().expect("special_tokens map") {
        let id: u32 = id.parse().expect("numeric id");
        let content = content.as_str().expect("token text");
        assert_eq!(tok.encode(content, false).unwrap(), vec![id], "{content}");
        assert!(tok.is_special(id), "{content} is special");
        assert_eq!(tok.decode(&[id], true).unwrap(), "", "{content} skipped");
    }
    assert_eq!(tok.bos_id(), info["bos_token_id"].as_u64().map(|v| v as u32));
    assert_eq!(tok.unk_id(), info["unk_token_id"].as_u64().map(|v| v as u32));
    assert_eq!(tok.pad_id(), info["pad_token_id"].as_u64().map(|v| v as u32));
    assert_eq!(tok.eos_ids(), vec![2, 0], "<|im_end|> first, then <|endoftext|>");
    assert_eq!(info["adds_bos_with_add_special_tokens"], false);
    assert!(!tok.add_bos_by_default());
    assert_eq!(tok.encode("hi", true).unwrap()[0], 1, "BOS when asked");
    assert_eq!(tok.vocab_size(), info["len"].as_u64().unwrap() as usize);
}

#[test]
fn decode_inverts_encode() {
    let tok = smollm2();
    for text in all_texts() {
        let ids = tok.encode(&text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn digits_are_always_single_tokens() {
    let tok = smollm2();
    let digits: Vec<u32> = (0..10).map(|d| tok.token_to_id(&d.to_string()).unwrap()).collect();
    let ids = tok.encode("9876543210", false).unwrap();
    assert_eq!(ids, digits.iter().rev().copied().collect::<Vec<_>>());
    // The Digits pre-tokenizer splits before the GPT-2 regex, so a run of spaces before a
    // number stays one whitespace piece instead of lending its last space to the number.
    let ids = tok.encode("a   1", false).unwrap();
    assert_eq!(tok.id_to_token(*ids.last().unwrap()).as_deref(), Some("1"));
    assert_eq!(ids.len(), 3, "{ids:?}: `a`, one 3-space token, `1`");
}

#[test]
fn saved_tokenizer_json_reloads_identically() {
    let tok = smollm2();
    let dir = std::env::temp_dir().join(format!("kiln-tokenizer-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tok.save_hf_dir(&dir).unwrap();
    let from_json = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let from_dir = Tokenizer::from_hf_dir(&dir).unwrap();
    for text in all_texts() {
        let ids = tok.encode(&text, false).unwrap();
        assert_eq!(from_json.encode(&text, false).unwrap(), ids, "{text:?}");
        assert_eq!(from_dir.encode(&text, false).unwrap(), ids, "{text:?}");
        assert_eq!(from_json.decode(&ids, true).unwrap(), tok.decode(&ids, true).unwrap());
    }
    assert_eq!(from_dir.special_tokens(), tok.special_tokens());
    assert_eq!(from_dir.eos_ids(), tok.eos_ids());
    let config = tok.tokenizer_config_json();
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["bos_token"], "<|im_start|>");
    assert_eq!(config["chat_template"].as_str(), tok.chat_template());
    let _ = std::fs::remove_dir_all(&dir);
}
