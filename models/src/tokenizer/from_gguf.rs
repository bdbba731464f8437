//! Builds a Hugging Face `tokenizers::Tokenizer` from GGUF tokenizer metadata, equal to the
//! one the model's original `tokenizer.json` describes, without any file.
//!
//! Two models: byte-level BPE (`gpt2`: vocab + merges + a pre-tokenizer) and SentencePiece BPE
//! (`llama`: vocab + scores, byte fallback). The GGUF of a SentencePiece model has no merges;
//! llama.cpp merges, again and again, the adjacent pair whose concatenation is the vocabulary
//! token of highest score (leftmost on ties). The same tokenizer as an HF BPE: one merge per
//! way of splitting a token into two vocabulary tokens, ranked by the token's score, which is
//! how transformers converts SentencePiece BPE models. (Where two splits of one token apply at
//! once, HF takes the lower rank and llama.cpp the leftmost: rank is the split point, so these
//! agree except in contrived strings.)
//!
//! Invariants: token id = index in `spec.tokens` (the BPE vocab and the added tokens agree on
//! it); control/unknown tokens become *special* added tokens (recognised whole in prompt text,
//! dropped by `decode(.., skip_special = true)`); user-defined tokens become plain added
//! tokens (recognised whole, never dropped), mirroring how HF marks them.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper};

use super::config::SpecialTokens;
use super::error::TokenizerError;
use super::pretok::byte_level_pre_tokenizer;
use super::spec::{GgufTokenType, GgufTokenizerSpec};

/// The HF tokenizer and its special-token configuration for `spec`.
pub(crate) fn build(spec: &GgufTokenizerSpec) -> Result<(tokenizers::Tokenizer, SpecialTokens), TokenizerError> {
    if !spec.token_types.is_empty() && spec.token_types.len() != spec.tokens.len() {
        return Err(TokenizerError::TokenTypesLength { tokens: spec.tokens.len(), types: spec.token_types.len() });
    }
    match spec.model.as_str() {
        "gpt2" => build_byte_level(spec),
        "llama" => build_sentencepiece(spec),
        other => Err(TokenizerError::UnsupportedModel(other.to_string())),
    }
}

fn build_byte_level(spec: &GgufTokenizerSpec) -> Result<(tokenizers::Tokenizer, SpecialTokens), TokenizerError> {
    let specials = special_tokens(spec)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab(&spec.tokens)?, merges(&spec.merges)?)
        .build()
        .map_err(TokenizerError::Build)?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(spec.pre.as_deref())?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.with_post_processor(Some(post_processor(&specials, spec)?.unwrap_or_else(|| {
        // HF's byte-level tokenizer.json carries this no-op processor.
        ByteLevelProcessor::new(true, false, true).into()
    })));

    let (special, plain) = added_tokens(spec);
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    Ok((tokenizer, specials))
}

/// SentencePiece BPE with byte fallback, as HF's tokenizer.json for Gemma / Llama 2: spaces
/// become `▁` (and a leading `▁` is added when `add_space_prefix`), no pre-tokenizer, unknown
/// characters become their `<0xXX>` byte tokens; decoding reverses it.
fn build_sentencepiece(spec: &GgufTokenizerSpec) -> Result<(tokenizers::Tokenizer, SpecialTokens), TokenizerError> {
    if spec.scores.len() != spec.tokens.len() {
        return Err(TokenizerError::ScoresLength { tokens: spec.tokens.len(), scores: spec.scores.len() });
    }
    let specials = special_tokens(spec)?;
    let vocab = vocab(&spec.tokens)?;
    let merges = sentencepiece_merges(spec, &vocab);
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = &specials.unk {
        bpe = bpe.unk_token(unk.clone());
    }
    let bpe = bpe.build().map_err(TokenizerError::Build)?;
    let add_prefix = spec.add_space_prefix.unwrap_or(true);

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let space = Replace::new(" ", "\u{2581}").map_err(TokenizerError::Build)?;
    let normalizer: NormalizerWrapper = if add_prefix {
        NormalizerSequence::new(vec![Prepend::new("\u{2581}".into()).into(), space.into()]).into()
    } else {
        space.into()
    };
    tokenizer.with_normalizer(Some(normalizer));
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ").map_err(TokenizerError::Build)?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if add_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    if let Some(processor) = post_processor(&specials, spec)? {
        tokenizer.with_post_processor(Some(processor));
    }

    let (special, plain) = added_tokens(spec);
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    Ok((tokenizer, specials))
}

/// HF BPE merges equivalent to SentencePiece's score-driven merging: every split of a normal
/// or user-defined token into two vocabulary tokens, the token of highest score first; among
/// one token's splits, the shorter left part first.
fn sentencepiece_merges(spec: &GgufTokenizerSpec, vocab: &Vocab) -> Merges {
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (id, token) in spec.tokens.iter().enumerate() {
        let kind = spec.token_types.get(id).map_or(GgufTokenType::Normal, |&c| GgufTokenType::from_code(c));
        if !matches!(kind, GgufTokenType::Normal | GgufTokenType::UserDefined) {
            continue;
        }
        for (at, _) in token.char_indices().skip(1) {
            if vocab.contains_key(&token[..at]) && vocab.contains_key(&token[at..]) {
                ranked.push((spec.scores[id], id, at));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, at)| {
            let token = &spec.tokens[id];
            (token[..at].to_string(), token[at..].to_string())
        })
        .collect()
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
/// tokenizer.json adds it under `add_special_tokens=True`), else none of its own.
fn post_processor(
    specials: &SpecialTokens,
    spec: &GgufTokenizerSpec,
) -> Result<Option<PostProcessorWrapper>, TokenizerError> {
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
            Ok(Some(template.into()))
        }
        _ => Ok(None),
    }
}

/// Vocabulary indices fit in u32 for any real model; saturate rather than wrap if not.
fn id_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}
