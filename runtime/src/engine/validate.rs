//! What `submit` checks before accepting a request, so a bad request is refused at once
//! (HTTP 400) instead of failing later in the engine thread. Everything the scheduler would
//! refuse at admission is checked here with the same numbers, so `Scheduler::add` does not fail
//! for an accepted request.
//!
//! Beam search is deterministic (HF `do_sample=False`): temperature, top-k/p and min-p are
//! ignored; options that would change the scores or need per-token streams (penalties, stop
//! strings, log-probabilities) are refused rather than silently ignored.

use super::api::{GenerateRequest, SubmitError};
use super::shared::Limits;
use crate::sched::{AdmissionError, SeqId};

fn invalid(m: impl Into<String>) -> SubmitError {
    SubmitError::Invalid(m.into())
}

pub(crate) fn validate(id: u64, req: &GenerateRequest, vocab: usize, l: &Limits) -> Result<(), SubmitError> {
    let p = &req.params;
    let prompt = req.prompt_ids.len();
    let adm = |e: AdmissionError| invalid(e.to_string());
    if prompt == 0 {
        return Err(adm(AdmissionError::EmptyPrompt { id: SeqId(id) }));
    }
    if let Some(t) = req.prompt_ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(invalid(format!("prompt token id {t} is outside the vocabulary of {vocab} tokens")));
    }
    p.validate().map_err(|e| invalid(e.to_string()))?;
    if req.n == 0 {
        return Err(invalid("n must be at least 1"));
    }
    match &req.beam {
        None if req.n > l.max_num_seqs => {
            return Err(invalid(format!("n = {} exceeds the engine's {} concurrent sequences", req.n, l.max_num_seqs)));
        }
        None => {}
        Some(b) => {
            if b.width == 0 {
                return Err(invalid("beam width must be at least 1"));
            }
            if b.width > l.max_num_seqs {
                return Err(invalid(format!(
                    "beam width {} exceeds the engine's {} concurrent sequences",
                    b.width, l.max_num_seqs
                )));
            }
            if req.n > b.width {
                return Err(invalid(format!(
                    "n = {} exceeds the beam width {}: beam search returns at most `width` beams",
                    req.n, b.width
                )));
            }
            if !b.length_penalty.is_finite() {
                return Err(invalid(format!("length_penalty {} is not finite", b.length_penalty)));
            }
            if !p.stop.is_empty() {
                return Err(invalid("stop strings are not supported with beam search (stop token ids are)"));
            }
            if p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
                return Err(invalid("repetition, presence and frequency penalties are not supported with beam search"));
            }
            if p.logprobs.is_some() {
                return Err(invalid("logprobs are not supported with beam search"));
            }
        }
    }
    if prompt.saturating_add(p.max_tokens) > l.max_model_len {
        return Err(adm(AdmissionError::ExceedsContext {
            id: SeqId(id),
            prompt_tokens: prompt,
            max_tokens: p.max_tokens,
            max_model_len: l.max_model_len,
        }));
    }
    // The last sampled token is never run: prompt + max_tokens - 1 tokens of KV at most.
    let tokens = prompt + p.max_tokens - 1;
    let needed_blocks = tokens.div_ceil(l.block_size);
    if needed_blocks > l.num_blocks {
        return Err(adm(AdmissionError::ExceedsKvPool {
            id: SeqId(id),
            tokens,
            needed_blocks,
            total_blocks: l.num_blocks,
            block_size: l.block_size,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::api::BeamParams;
    use crate::sample::SamplingParams;

    fn limits() -> Limits {
        Limits { max_model_len: 100, num_blocks: 4, block_size: 16, max_num_seqs: 8, max_queue: 4 }
    }

    fn req(prompt: usize, max_tokens: usize) -> GenerateRequest {
        GenerateRequest {
            prompt_ids: vec![1; prompt],
            params: SamplingParams { max_tokens, ..SamplingParams::greedy() },
            n: 1,
            beam: None,
        }
    }

    fn msg(r: GenerateRequest) -> String {
        match validate(7, &r, 50, &limits()) {
            Err(SubmitError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_what_fits() {
        assert_eq!(validate(7, &req(10, 10), 50, &limits()), Ok(()));
        // 64 tokens of KV = exactly the 4 blocks.
        assert_eq!(validate(7, &req(60, 5), 50, &limits()), Ok(()));
    }

    #[test]
    fn refuses_with_the_reason() {
        assert!(msg(req(0, 5)).contains("empty"));
        assert!(msg(req(90, 20)).contains("context length of 100"));
        assert!(msg(req(60, 6)).contains("whole KV cache has 4 blocks"));
        let mut r = req(3, 5);
        r.prompt_ids[1] = 50;
        assert!(msg(r).contains("vocabulary"));
        let mut r = req(3, 5);
        r.params.top_p = 0.0;
        assert!(msg(r).contains("top_p"));
        let mut r = req(3, 5);
        r.n = 9;
        assert!(msg(r).contains("n = 9"));
        let beam =
            |width, n| GenerateRequest { n, beam: Some(BeamParams { width, ..BeamParams::default() }), ..req(3, 5) };
        assert!(msg(beam(9, 1)).contains("beam width 9"));
        assert!(msg(beam(2, 3)).contains("exceeds the beam width"));
        let mut r = beam(2, 1);
        r.params.stop = vec!["x".into()];
        assert!(msg(r).contains("stop strings"));
        assert_eq!(validate(7, &beam(4, 2), 50, &limits()), Ok(()));
    }
}
