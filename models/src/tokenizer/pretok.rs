//! Chooses the pre-tokenizer (how text is split before BPE) from `tokenizer.ggml.pre`.
//!
//! Invariant: each supported name yields exactly the pre-tokenizer of the model's original
//! Hugging Face `tokenizer.json`, so ids match HF; an unknown name is an error, never a guess,
//! because a wrong split silently changes ids (e.g. how spaces before digits group).

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::error::TokenizerError;

/// `tokenizer.ggml.pre` values this module maps.
pub const SUPPORTED_PRE: &[&str] = &["smollm", "starcoder", "refact", "gpt-2", "gpt2", "qwen2"];

/// Qwen2's split (HF tokenizer.json of Qwen2 / Qwen2.5, llama.cpp's `qwen2` pre): like GPT-2's
/// but case-insensitive contractions, single digits, and a letter run may take one leading
/// non-letter, non-digit character.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for a byte-level BPE model with the given `tokenizer.ggml.pre`.
///
/// A missing `pre` (older GGUF files) means the plain GPT-2 split, which is also what
/// llama.cpp's GPT-2 family used before the key existed.
pub fn byte_level_pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, TokenizerError> {
    // The GPT-2 regex runs inside ByteLevel (use_regex = true); no prefix space is added.
    let gpt2_split = || ByteLevel::new(false, true, true);
    match pre {
        // StarCoder-family vocabularies (SmolLM/SmolLM2 reuse StarCoder's) were trained with
        // every digit on its own: HF's tokenizer.json puts Digits(individual) before
        // ByteLevel, and llama.cpp runs `\p{N}` before the GPT-2 regex for these names.
        Some("smollm" | "starcoder" | "refact") => {
            Ok(Sequence::new(vec![Digits::new(true).into(), gpt2_split().into()]).into())
        }
        None | Some("gpt-2" | "gpt2") => Ok(gpt2_split().into()),
        // HF: Split(regex, Isolated) then ByteLevel without its own regex. (HF's Qwen2
        // tokenizer.json also has an NFC normalizer; llama.cpp has none, and neither is here.)
        Some("qwen2") => {
            let split = Split::new(SplitPattern::Regex(QWEN2_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(TokenizerError::Build)?;
            Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]).into())
        }
        Some(other) => Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
    }
}
