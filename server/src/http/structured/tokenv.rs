//! The token environment llguidance needs (every token's bytes, in a trie), built once per
//! tokenizer from its HF `tokenizer.json` form.
//!
//! Invariants: special added tokens carry llguidance's special marker byte, so grammars can
//! never produce them from plain text; the trie's end-of-sequence id is the model's first EOS
//! (the other end-of-turn ids are added to masks by [`super::matcher`]); building never
//! panics on an unusual tokenizer, it fails with a reason.

use kiln_models::tokenizer::Tokenizer;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use std::sync::Arc;

pub fn build(tokenizer: &Tokenizer) -> Result<TokEnv, String> {
    let json = tokenizer.to_tokenizer_json(false).map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    // llguidance asserts on tokenizers it does not expect; a refusal is enough here.
    let bytes = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&value))
        .map_err(|_| "the tokenizer's vocabulary could not be read as bytes".to_string())?
        .map_err(|e| e.to_string())?;
    let vocab = tokenizer.vocab_size().max(bytes.len());
    let mut words = bytes;
    words.resize(vocab, Vec::new());
    let eos = *tokenizer.eos_ids().first().ok_or("the tokenizer has no end-of-sequence token")?;
    let mut info = TokRxInfo::new(vocab as u32, eos);
    info.tok_bos = tokenizer.bos_id();
    info.tok_pad = tokenizer.pad_id();
    info.tok_unk = tokenizer.unk_id();
    let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &words))
        .map_err(|_| "the tokenizer's vocabulary could not be put in a token trie".to_string())?;
    Ok(Arc::new(ApproximateTokEnv::new(trie)))
}
