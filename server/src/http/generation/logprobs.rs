//! Engine logprobs → the two OpenAI shapes (chat `content[]` entries, legacy completions
//! parallel arrays).

use crate::codec::Codec;
use crate::engine_api::TokenLogprob;
use crate::protocol::chat::{TokenLogprobOut, TopLogprob};
use crate::protocol::completion::CompletionLogprobs;

pub fn chat_entry(codec: &dyn Codec, token: u32, lp: &TokenLogprob) -> TokenLogprobOut {
    let text = codec.token_text(token);
    TokenLogprobOut {
        bytes: text.as_bytes().to_vec(),
        token: text,
        logprob: lp.logprob,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, l)| {
                let t = codec.token_text(id);
                TopLogprob { bytes: t.as_bytes().to_vec(), token: t, logprob: l }
            })
            .collect(),
    }
}

/// Appends one token's entry; `offset` is where the token's text starts in the choice text.
pub fn completion_push(codec: &dyn Codec, out: &mut CompletionLogprobs, token: u32, lp: &TokenLogprob, offset: usize) {
    out.tokens.push(codec.token_text(token));
    out.token_logprobs.push(lp.logprob);
    out.top_logprobs.push(lp.top.iter().map(|&(id, l)| (codec.token_text(id), l)).collect());
    out.text_offset.push(offset);
}
