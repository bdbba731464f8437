//! Incremental detokenization on the real SmolLM2 vocabulary: streamed deltas concatenate to
//! the full decode and never show U+FFFD that the full text lacks, for multilingual/emoji
//! text (where byte-level tokens split characters) and for the model's greedy outputs.

mod tokenizer_support;

use kiln_models::tokenizer::{DetokStream, Tokenizer};
use tokenizer_support::{ids_of, reference, reference_texts, smollm2};

const TEXTS: &[&str] = &[
    "Emoji: 😀 🚀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ end",
    "中文测试：你好，世界！日本語のテキスト、한국어 문장입니다.",
    "Café, señor, naïve, über, Ærøskøbing, façade — “quotes” …",
    "  indented\n\tcode() {\n\t\treturn 42;\n\t}\n",
    "<|im_start|>assistant\nSure! 🙂<|im_end|>",
];

/// Streams `ids`; returns every delta (the last one from `finish`).
fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut s = DetokStream::new(tok, skip_special);
    let mut deltas: Vec<String> = ids.iter().map(|&id| s.step(id).unwrap()).collect();
    deltas.push(s.finish().unwrap());
    deltas
}

fn check(tok: &Tokenizer, ids: &[u32], label: &str) {
    for skip in [false, true] {
        let full = tok.decode(ids, skip).unwrap();
        let deltas = stream(tok, ids, skip);
        assert_eq!(deltas.concat(), full, "{label} (skip_special={skip})");
        if !full.contains('\u{FFFD}') {
            let bad: Vec<_> = deltas.iter().filter(|d| d.contains('\u{FFFD}')).collect();
            assert!(bad.is_empty(), "{label}: deltas with U+FFFD: {bad:?}");
        }
    }
}

#[test]
fn streams_multilingual_and_emoji_text() {
    let tok = smollm2();
    let split_chars = TEXTS
        .iter()
        .map(|t| tok.encode(t, false).unwrap())
        .filter(|ids| ids.iter().any(|&id| tok.decode(&[id], false).unwrap().contains('\u{FFFD}')))
        .count();
    assert!(split_chars > 0, "the texts must exercise characters split across tokens");
    for text in TEXTS {
        check(&tok, &tok.encode(text, false).unwrap(), text);
    }
    for (text, ids, _) in reference_texts(&reference()) {
        check(&tok, &ids, &text);
    }
}

#[test]
fn streams_the_models_greedy_outputs() {
    let tok = smollm2();
    let reference = reference();
    for p in reference["prompts"].as_array().expect("prompts") {
        let prompt = ids_of(&p["ids"]);
        let generated = ids_of(&p["greedy_32"]);
        check(&tok, &generated, "greedy output");
        // Seeded with the prompt, only the reply is emitted, and it matches HF's text.
        let mut s = DetokStream::with_context(&tok, false, &prompt);
        let mut text: String = generated.iter().map(|&id| s.step(id).unwrap()).collect();
        text += &s.finish().unwrap();
        assert_eq!(text, p["greedy_text"].as_str().unwrap());
    }
}
