//! Builds a Hugging Face `tokenizers::Tokenizer` from GGUF tokenizer metadata, equal to the
//! one the model's original `tokenizer.json` describes, without any file.
//!
//! Invariants: token id = index in `spec.tokens` (the BPE vocab and the added tokens agree on
//! it); control/unknown tokens become *special* added tokens (recognised whole in prompt text,
//! dropped by `decode(.., skip_special = true)`); user-defined tokens become plain added
//! tokens (recognised whole, never dropped), mirroring how HF marks them.

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PostProcessorWrapper};

use super::config::SpecialTokens;
use super::error::TokenizerError;
use super::pretok::byte_level_pre_tokenizer;
use super::spec::{GgufTokenType, GgufTokenizerSpec};

/// The HF tokenizer and its special-token configuration for `spec`.
pub(crate) fn build(spec: &GgufTokenizerSpec) -> Result<(tokenizers::Tokenizer, SpecialTokens), TokenizerError> {
    if spec.model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel(spec.model.clone()));
    }
    if !spec.token_types.is_empty() && spec.token_types.len() != spec.tokens.len() {
        return Err(TokenizerError::TokenTypesLength { tokens: spec.tokens.len(), types: spec.token_types.len() });
    }
    let specials = special_tokens(spec)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab(&spec.tokens)?, merges(&spec.merges)?)
        .build()
        .map_err(TokenizerError::Build)?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(spec.pre.as_deref())?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.with_post_processor(Some(post_processor(&specials, spec)?));

    let (special, plain) = added_tokens(spec);
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    Ok((tokenizer, specials))
}

fn vocab(tokens: &[String]) -> Result<Vocab, TokenizerError> {
    let mut seen: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let id = id_u32(id);
        if let Some(first) = seen.insert(token, id) {
            // Two ids for one string cannot both round-trip through a token->id map.
            return Err(TokenizerError::DuplicateToken { token: token.clone(), first, second: id });
        }
    }
    Ok(seen.into_iter().map(|(t, id)| (t.to_string(), id)).collect())
}

fn merges(merges: &[String]) -> Result<Merges, TokenizerError> {
    merges
        .iter()
        .enumerate()
        .map(|(index, merge)| {
            // Byte-level tokens never contain a literal space (it is mapped to `Ġ`), so the
            // single space is an unambiguous separator.
            match merge.split_once(' ') {
                Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.contains(' ') => {
                    Ok((l.to_string(), r.to_string()))
                }
                _ => Err(TokenizerError::BadMerge { index, merge: merge.clone() }),
            }
        })
        .collect()
}

fn added_tokens(spec: &GgufTokenizerSpec) -> (Vec<AddedToken>, Vec<AddedToken>) {
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for (token, &code) in spec.tokens.iter().zip(&spec.token_types) {
        match GgufTokenType::from_code(code) {
            GgufTokenType::Control | GgufTokenType::Unknown => {
                special.push(AddedToken::from(token.clone(), true).normalized(false))
            }
            GgufTokenType::UserDefined => plain.push(AddedToken::from(token.clone(), false).normalized(false)),
            _ => {}
        }
    }
    (special, plain)
}

fn special_tokens(spec: &GgufTokenizerSpec) -> Result<SpecialTokens, TokenizerError> {
    let name = |what: &'static str, id: Option<u32>| -> Result<Option<String>, TokenizerError> {
        id.map(|id| {
            spec.tokens.get(id as usize).cloned().ok_or(TokenizerError::TokenIdOutOfRange {
                what,
                id,
                vocab_size: spec.tokens.len(),
            })
        })
        .transpose()
    };
    Ok(SpecialTokens {
        bos: name("BOS", spec.bos_id)?,
        eos: name("EOS", spec.eos_id)?,
        unk: name("unknown", spec.unk_id)?,
        pad: name("padding", spec.pad_id)?,
        add_bos: spec.add_bos.unwrap_or(false),
        chat_template: spec.chat_template.clone(),
    })
}

/// What HF's tokenizer.json would carry: a BOS template when the model wants BOS (so a saved
/// tokenizer.json adds it under `add_special_tokens=True`), else the no-op ByteLevel one.
fn post_processor(specials: &SpecialTokens, spec: &GgufTokenizerSpec) -> Result<PostProcessorWrapper, TokenizerError> {
    match (&specials.bos, spec.bos_id) {
        (Some(bos), Some(bos_id)) if specials.add_bos => {
            let build_err = |e: String| TokenizerError::Build(e.into());
            let template = TemplateProcessing::builder()
                .try_single(vec![bos.clone(), "$A".to_string()])
                .map_err(build_err)?
                .try_pair(vec![bos.clone(), "$A".into(), format!("{bos}:1"), "$B:1".into()])
                .map_err(build_err)?
                .special_tokens(vec![(bos.clone(), bos_id)])
                .build()
                .map_err(|e| build_err(e.to_string()))?;
            Ok(template.into())
        }
        _ => Ok(ByteLevelProcessor::new(true, false, true).into()),
    }
}

/// Vocabulary indices fit in u32 for any real model; saturate rather than wrap if not.
fn id_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}
