//! Unit tests of `Tokenizer` on a tiny synthetic byte-level BPE spec (every byte a token, a
//! few merges, ChatML-style control tokens), so they need no model file.

use super::*;

/// GPT-2's byte -> printable char table (the alphabet byte-level BPE vocabularies use).
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or('?')
            }
        })
        .collect()
}

pub(super) const EOT: u32 = 0;
pub(super) const IM_START: u32 = 1;
pub(super) const IM_END: u32 = 2;
pub(super) const TOOL: u32 = 3;

/// Ids 0..=3 are `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (control) and `<tool>`
/// (user-defined); then the 256 byte tokens; then merged tokens `he`, `Ġt`, `12`.
pub(super) fn tiny_spec(pre: &str) -> GgufTokenizerSpec {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"].map(String::from).to_vec();
    let mut token_types = vec![3, 3, 3, 4];
    tokens.extend(byte_chars().into_iter().map(String::from));
    token_types.extend(std::iter::repeat_n(1, 256));
    for merged in ["he", "Ġt", "12"] {
        tokens.push(merged.into());
        token_types.push(1);
    }
    GgufTokenizerSpec {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types,
        merges: vec!["h e".into(), "Ġ t".into(), "1 2".into()],
        bos_id: Some(IM_START),
        eos_id: Some(IM_END),
        unk_id: Some(EOT),
        pad_id: Some(IM_END),
        add_bos: Some(false),
        chat_template: Some(CHATML_TEMPLATE.into()),
        ..GgufTokenizerSpec::default()
    }
}

pub(super) fn tiny() -> Tokenizer {
    Tokenizer::from_gguf_spec(&tiny_spec("smollm")).expect("tiny spec builds")
}

fn id(t: &Tokenizer, token: &str) -> u32 {
    t.token_to_id(token).unwrap_or_else(|| panic!("{token} in vocab"))
}

#[test]
fn round_trips_multibyte_text() {
    let t = tiny();
    for text in ["the hello", "héllo wörld", "emoji 😀👍🏽 and 世界", "tabs\tand\n\nnewlines   end ", ""] {
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn merges_apply() {
    let t = tiny();
    assert_eq!(t.encode("he the", false).unwrap(), vec![id(&t, "he"), id(&t, "Ġt"), id(&t, "he")]);
}

#[test]
fn special_tokens_are_single_ids_and_skippable() {
    let t = tiny();
    let ids = t.encode("<|im_start|>he<|im_end|><tool>", false).unwrap();
    assert_eq!(ids, vec![IM_START, id(&t, "he"), IM_END, TOOL]);
    assert!(t.is_special(IM_START) && t.is_special(EOT));
    assert!(!t.is_special(TOOL), "user-defined tokens are plain added tokens");
    assert_eq!(t.decode(&ids, true).unwrap(), "he<tool>");
    assert_eq!(t.decode(&ids, false).unwrap(), "<|im_start|>he<|im_end|><tool>");
}

#[test]
fn encode_plain_keeps_special_spellings_as_text() {
    let t = tiny();
    let text = "<|im_start|>he<|im_end|>";
    let plain = t.encode_plain(text).unwrap();
    assert!(!plain.contains(&IM_START) && !plain.contains(&IM_END), "{plain:?}");
    assert_eq!(t.decode(&plain, false).unwrap(), text, "the characters survive as text");
    assert_eq!(t.encode(text, false).unwrap(), vec![IM_START, id(&t, "he"), IM_END], "encode still matches them");
    let mut specials = t.special_texts().to_vec();
    specials.sort();
    assert_eq!(specials, ["<|endoftext|>", "<|im_end|>", "<|im_start|>"], "user-defined <tool> is not special");
}

#[test]
fn bos_only_when_asked() {
    let t = tiny();
    assert_eq!(t.encode("he", true).unwrap(), vec![IM_START, id(&t, "he")]);
    assert_eq!(t.encode("he", false).unwrap(), vec![id(&t, "he")]);
    assert!(!t.add_bos_by_default());
}

#[test]
fn special_ids_and_eos_list() {
    let t = tiny();
    assert_eq!((t.bos_id(), t.pad_id(), t.unk_id()), (Some(IM_START), Some(IM_END), Some(EOT)));
    // Declared EOS first, then other end-of-turn control tokens; no duplicates.
    assert_eq!(t.eos_ids(), vec![IM_END, EOT]);
    assert_eq!(t.vocab_size(), 4 + 256 + 3);
}

#[test]
fn smollm_pre_splits_every_digit_but_gpt2_does_not() {
    let smol = tiny();
    assert_eq!(smol.encode("12", false).unwrap(), vec![id(&smol, "1"), id(&smol, "2")]);
    let gpt2 = Tokenizer::from_gguf_spec(&tiny_spec("gpt-2")).unwrap();
    assert_eq!(gpt2.encode("12", false).unwrap(), vec![id(&gpt2, "12")]);
    // The difference that matters on real vocabularies: whitespace before digits.
    let (a, b) = (smol.encode("  1", false).unwrap(), gpt2.encode("  1", false).unwrap());
    assert_eq!(a, vec![id(&smol, "Ġ"), id(&smol, "Ġ"), id(&smol, "1")]);
    assert_eq!(a.len(), b.len());
}

#[test]
fn bad_specs_are_typed_errors() {
    let mut s = tiny_spec("smollm");
    s.model = "bert".into();
    assert!(matches!(Tokenizer::from_gguf_spec(&s), Err(TokenizerError::UnsupportedModel(m)) if m == "bert"));
    // A SentencePiece model needs a score per token.
    s.model = "llama".into();
    assert!(matches!(Tokenizer::from_gguf_spec(&s), Err(TokenizerError::ScoresLength { scores: 0, .. })));

    let s = tiny_spec("no-such-pre");
    let err = Tokenizer::from_gguf_spec(&s).unwrap_err();
    assert!(matches!(err, TokenizerError::UnsupportedPreTokenizer(_)));
    assert!(err.to_string().contains("smollm"), "lists supported names: {err}");

    let mut s = tiny_spec("smollm");
    s.token_types.pop();
    assert!(matches!(Tokenizer::from_gguf_spec(&s), Err(TokenizerError::TokenTypesLength { .. })));

    let mut s = tiny_spec("smollm");
    s.tokens.push("he".into());
    s.token_types.push(1);
    assert!(matches!(Tokenizer::from_gguf_spec(&s), Err(TokenizerError::DuplicateToken { .. })));

    let mut s = tiny_spec("smollm");
    s.merges.push("nospace".into());
    assert!(matches!(Tokenizer::from_gguf_spec(&s), Err(TokenizerError::BadMerge { index: 3, .. })));

    let mut s = tiny_spec("smollm");
    s.merges.push("he zz".into());
    assert!(matches!(Tokenizer::from_gguf_spec(&s), Err(TokenizerError::Build(_))));

    let mut s = tiny_spec("smollm");
    s.eos_id = Some(100_000);
    assert!(matches!(
        Tokenizer::from_gguf_spec(&s),
        Err(TokenizerError::TokenIdOutOfRange { what: "EOS", id: 100_000, .. })
    ));
}

#[test]
fn missing_files_are_typed_errors() {
    let err = Tokenizer::from_file("/nonexistent/dir/tokenizer.json").unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }), "{err}");
}

/// A fresh empty directory under the system temp dir for one test.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-tok-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

#[test]
fn hf_dir_round_trip_keeps_ids_and_specials() {
    let t = tiny();
    let dir = scratch_dir("roundtrip");
    t.save_hf_dir(&dir).unwrap();
    let back = Tokenizer::from_hf_dir(&dir).unwrap();
    for text in ["<|im_start|>user\nthe 12 😀<|im_end|>", "he<tool>  he"] {
        assert_eq!(back.encode(text, false).unwrap(), t.encode(text, false).unwrap(), "{text:?}");
    }
    assert_eq!(back.special_tokens(), t.special_tokens());
    assert_eq!(back.eos_ids(), t.eos_ids());
    let config = t.tokenizer_config_json();
    assert_eq!(config["added_tokens_decoder"]["1"]["content"], "<|im_start|>");
    assert_eq!(config["added_tokens_decoder"]["3"]["special"], false);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn add_bos_models_get_a_bos_template_in_tokenizer_json() {
    let mut s = tiny_spec("smollm");
    s.add_bos = Some(true);
    let t = Tokenizer::from_gguf_spec(&s).unwrap();
    assert!(t.add_bos_by_default());
    let dir = scratch_dir("bos");
    t.save_tokenizer_json(dir.join("tokenizer.json")).unwrap();
    let raw = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let with_specials = raw.encode("he", true).unwrap();
    assert_eq!(with_specials.get_ids(), &[IM_START, id(&t, "he")]);
    // Loaded alone, the BOS convention is still detected from the post-processor.
    assert!(Tokenizer::from_file(dir.join("tokenizer.json")).unwrap().add_bos_by_default());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tiny SentencePiece (`llama`) spec, Gemma-like: control tokens, a user-defined `\n`, the 256
/// byte tokens, then normal tokens whose scores decide the merge order.
fn tiny_spm_spec(add_space_prefix: bool) -> GgufTokenizerSpec {
    let mut tokens: Vec<String> =
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "\n"].map(String::from).to_vec();
    let mut token_types = vec![3, 3, 3, 2, 3, 4];
    let mut scores = vec![-1000.0; 6];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        token_types.push(6);
        scores.push(0.0);
    }
    // "bc" outscores "ab", so "abc" is a + bc although "ab" comes first in the text.
    let normal = [("▁", -1.0), ("a", -2.0), ("b", -3.0), ("c", -4.0), ("bc", -5.0), ("ab", -6.0), ("▁a", -7.0)];
    for (t, score) in normal {
        tokens.push(t.into());
        token_types.push(1);
        scores.push(score);
    }
    GgufTokenizerSpec {
        model: "llama".into(),
        tokens,
        token_types,
        scores,
        bos_id: Some(2),
        eos_id: Some(1),
        unk_id: Some(3),
        pad_id: Some(0),
        add_bos: Some(true),
        add_space_prefix: Some(add_space_prefix),
        ..GgufTokenizerSpec::default()
    }
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() {
    let t = Tokenizer::from_gguf_spec(&tiny_spm_spec(false)).unwrap();
    let ids = |s: &[&str]| s.iter().map(|x| id(&t, x)).collect::<Vec<_>>();
    assert_eq!(t.encode("abc", false).unwrap(), ids(&["a", "bc"]));
    assert_eq!(t.encode("ab a", true).unwrap(), ids(&["<bos>", "ab", "▁a"]));
    // Characters outside the vocabulary become their UTF-8 bytes; user-defined and control
    // tokens are matched whole.
    assert_eq!(t.encode("é\n", false).unwrap(), ids(&["<0xC3>", "<0xA9>", "\n"]));
    assert_eq!(t.encode("<start_of_turn>a", false).unwrap(), ids(&["<start_of_turn>", "a"]));
    for text in ["abc ab", "é ab\nc", " a  b"] {
        assert_eq!(t.decode(&t.encode(text, false).unwrap(), false).unwrap(), text);
    }
    assert!(t.is_special(id(&t, "<start_of_turn>")) && !t.is_special(id(&t, "\n")));

    // With a space prefix (Llama 2 style) the text starts with ▁, and decoding drops it again.
    let p = Tokenizer::from_gguf_spec(&tiny_spm_spec(true)).unwrap();
    assert_eq!(p.encode("a", false).unwrap(), vec![id(&p, "▁a")]);
    assert_eq!(p.decode(&p.encode("ab c", false).unwrap(), false).unwrap(), "ab c");
}

#[test]
fn gemma_vocabularies_get_gemma_template_when_none_is_shipped() {
    let mut spec = tiny_spm_spec(false);
    spec.tokens.push("<end_of_turn>".into());
    spec.token_types.push(3);
    spec.scores.push(-1000.0);
    let t = Tokenizer::from_gguf_spec(&spec).unwrap();
    let template = ChatTemplate::for_tokenizer(&t).unwrap();
    assert_eq!(template.source(), GEMMA_TEMPLATE);
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", " Hi "),
        ChatMessage::new("assistant", "Hello"),
    ];
    let text = template.render_for(&t, &msgs, true).unwrap();
    assert_eq!(
        text,
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>model\n"
    );
    let bad = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    assert!(matches!(template.render_for(&t, &bad, true), Err(ChatTemplateError::Raised { .. })));
    // Without Gemma's turn markers: ChatML.
    let plain = Tokenizer::from_gguf_spec(&tiny_spm_spec(false)).unwrap();
    assert_eq!(ChatTemplate::for_tokenizer(&plain).unwrap().source(), CHATML_TEMPLATE);
}

#[test]
fn qwen2_pre_splits_digits_and_keeps_a_leading_symbol_with_letters() {
    let t = Tokenizer::from_gguf_spec(&tiny_spec("qwen2")).unwrap();
    assert_eq!(t.encode("12", false).unwrap(), vec![id(&t, "1"), id(&t, "2")]);
    assert_eq!(t.decode(&t.encode("x  (he) 12\n\n", false).unwrap(), false).unwrap(), "x  (he) 12\n\n");
}
