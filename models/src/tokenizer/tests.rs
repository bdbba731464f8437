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
    s.model = "llama".into();
    assert!(matches!(Tokenizer::from_gguf_spec(&s), Err(TokenizerError::UnsupportedModel(m)) if m == "llama"));

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
