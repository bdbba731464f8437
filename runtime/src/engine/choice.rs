//! One sampled choice of a request: its sampler, stop checker, token history and text stream,
//! and the one operation the engine needs — turn a logits row into the next token and its
//! event.
//!
//! Invariants: all per-choice state lives here and only changes in [`Choice::advance`], so a
//! preempted sequence (whose KV is recomputed) resumes with exactly the state it had and its
//! output is unchanged (its grammar constraint included); a finished choice takes no more
//! tokens. A constrained choice's mask is applied to the logits before the sampling pipeline,
//! on the host ([`Choice::advance`]) or inside the device sampler (its [`Choice::device_job`]
//! carries the mask); never by the argmax kernel, which sees no mask. The token it takes
//! advances the constraint unless it ends the choice.
//!
//! Seeds: choice `i` of a request with `seed: Some(s)` samples with seed `s + i` (wrapping), so
//! `n` choices differ from one another and each is reproducible; without a seed every choice
//! draws its own from the OS.

use super::api::{EngineEvent, TextStream, TokenLogprob};
use super::constrained::Constrained;
use crate::sample::device::SampleJob;
use crate::sample::{FinishReason, Sampled, Sampler, SamplingParams, StopChecker, TokenHistory};
use crate::sched::SeqId;

pub(crate) struct Choice {
    pub index: usize,
    /// The scheduler sequence computing it (`None` until forked from choice 0).
    pub seq: Option<SeqId>,
    sampler: Sampler,
    stop: StopChecker,
    history: TokenHistory,
    text: Box<dyn TextStream>,
    logprobs: bool,
    constraint: Option<Constrained>,
    /// A device job with this choice's current mask is out (set by `device_job`, cleared when
    /// a token is taken): a device-sampled token of a constrained choice is taken only then.
    mask_sent: bool,
    pub finished: Option<FinishReason>,
}

/// What one token did to a choice.
pub(crate) struct Advance {
    pub token: u32,
    pub event: EngineEvent,
    pub finished: Option<FinishReason>,
}

impl Choice {
    pub fn new(
        index: usize,
        params: &SamplingParams,
        eos: &[u32],
        prompt: &[u32],
        text: Box<dyn TextStream>,
        constraint: Option<Constrained>,
    ) -> Result<Self, String> {
        let mut p = params.clone();
        p.seed = params.seed.map(|s| s.wrapping_add(index as u64));
        Ok(Choice {
            index,
            seq: None,
            sampler: Sampler::new(&p).map_err(|e| e.to_string())?,
            stop: StopChecker::new(&p, eos).map_err(|e| e.to_string())?,
            history: TokenHistory::new(prompt),
            text,
            logprobs: p.logprobs.is_some(),
            constraint,
            mask_sent: false,
            finished: None,
        })
    }

    pub fn output(&self) -> &[u32] {
        self.history.output()
    }

    /// Whether the next token is the logits' argmax and nothing more (so the device may pick it).
    pub fn plain_greedy(&self) -> bool {
        self.sampler.is_plain_greedy() && self.constraint.is_none()
    }

    /// Samples the next token from `logits` (masked by the constraint, if any), detokenizes it
    /// and checks the stop conditions.
    pub fn advance(&mut self, logits: &[f32]) -> Result<Advance, String> {
        let logits = match &mut self.constraint {
            Some(c) => c.mask(logits)?,
            None => logits,
        };
        let s = self.sampler.sample(logits, &self.history).map_err(|e| e.to_string())?;
        self.take(s.token, s.logprob, s.top_logprobs)
    }

    /// The device-sampler job for this choice's next token from logits row `row`, with the
    /// constraint's mask (computed and timed now) when the choice is constrained.
    pub fn device_job(&mut self, vocab: usize, row: usize) -> Result<SampleJob, String> {
        let mut job = self.sampler.device_job(&self.history, vocab, row).map_err(|e| e.to_string())?;
        if let Some(c) = &mut self.constraint {
            job.mask = Some(c.allowed(vocab)?);
            self.mask_sent = true;
        }
        Ok(job)
    }

    /// Takes what the device sampler made of [`Choice::device_job`].
    pub fn advance_sampled(&mut self, s: Result<Sampled, String>) -> Result<Advance, String> {
        let s = s?;
        if self.constraint.is_some() && !self.mask_sent {
            return Err("internal error: a constrained choice was sampled on the device without its mask".into());
        }
        self.sampler.accept_external();
        self.take(s.token, s.logprob, s.top_logprobs)
    }

    /// Takes `token`, the argmax the device picked for a [`Choice::plain_greedy`] choice.
    pub fn advance_with(&mut self, token: u32) -> Result<Advance, String> {
        // The argmax kernel never sees a mask: refuse its token rather than break the grammar.
        if self.constraint.is_some() {
            return Err("internal error: a constrained choice took the argmax kernel's token".into());
        }
        self.sampler.accept_external();
        self.take(token, 0.0, Vec::new())
    }

    fn take(&mut self, token: u32, logprob: f32, top: Vec<(u32, f32)>) -> Result<Advance, String> {
        self.mask_sent = false;
        self.history.push_output(token);
        let delta = self.text.step(token)?;
        let mut out = self.stop.step(token, &delta).map_err(|e| e.to_string())?;
        if out.finish == Some(FinishReason::Length) {
            // Bytes the detokenizer still holds (an incomplete character at the very end).
            out.text.push_str(&self.text.finish()?);
        }
        self.finished = out.finish;
        if let (None, Some(c)) = (out.finish, &mut self.constraint) {
            c.accept(token)?;
        }
        let logprob = self.logprobs.then_some(TokenLogprob { logprob, top });
        Ok(Advance {
            token,
            event: EngineEvent::Token { index: self.index, token, text: out.text, logprob },
            finished: out.finish,
        })
    }

    /// Ends the choice for an outside reason; returns the held-back text to release.
    pub fn end(&mut self, reason: FinishReason) -> String {
        self.finished = Some(reason);
        self.stop.finish(reason).map(|o| o.text).unwrap_or_default()
    }

    pub fn finished_event(&self, text: String) -> EngineEvent {
        EngineEvent::Finished {
            index: self.index,
            reason: self.finished.unwrap_or(FinishReason::Abort),
            text,
            token_ids: self.output().to_vec(),
        }
    }
}
