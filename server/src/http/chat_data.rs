//! Message contents stay data: the prompt ids of a rendered conversation in which only the
//! template's own markup may produce special tokens.
//!
//! When no message content spells a special token, the rendered text is tokenized at once,
//! exactly as before (so ordinary prompts keep their tokenization and its equality with HF
//! transformers). Otherwise each such content is replaced by a placeholder, the template is
//! rendered, the text is cut at the placeholders, the template's markup between them is
//! tokenized with special-token matching on and each content with it off.
//!
//! Invariant: a content that spells a special token is never tokenized as markup: if its
//! placeholder does not come back from the template exactly once (the template rewrote it),
//! the conversation is refused.

use crate::codec::CodecError;
use kiln_models::tokenizer::{ChatMessage, Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ChatDataError {
    #[error("message {index}'s content spells a special token and the chat template does not insert it verbatim, so it cannot be kept as plain text")]
    Rewritten { index: usize },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Render(CodecError),
}

fn placeholder(index: usize) -> String {
    format!("\u{F8FF}kiln-content-{index}\u{F8FF}")
}

pub fn encode(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    render: impl Fn(&[ChatMessage]) -> Result<String, CodecError>,
) -> Result<Vec<u32>, ChatDataError> {
    let specials = tok.special_texts();
    let spells = |s: &str| specials.iter().any(|sp| !sp.is_empty() && s.contains(sp.as_str()));
    let data: Vec<usize> = (0..messages.len()).filter(|&i| spells(&messages[i].content)).collect();
    if data.is_empty() {
        let text = render(messages).map_err(ChatDataError::Render)?;
        return Ok(tok.encode(&text, false)?);
    }
    let mut masked = messages.to_vec();
    for &i in &data {
        masked[i].content = placeholder(i);
    }
    let text = render(&masked).map_err(ChatDataError::Render)?;
    let mut ids = Vec::new();
    let mut at = 0;
    for &i in &data {
        let p = placeholder(i);
        let start = match text[at..].find(&p) {
            Some(off) if text.matches(&p).count() == 1 => at + off,
            _ => return Err(ChatDataError::Rewritten { index: i }),
        };
        ids.extend(tok.encode(&text[at..start], false)?);
        ids.extend(tok.encode_plain(&messages[i].content)?);
        at = start + p.len();
    }
    ids.extend(tok.encode(&text[at..], false)?);
    Ok(ids)
}
