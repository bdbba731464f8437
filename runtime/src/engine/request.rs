//! One accepted request inside the engine thread: its ticket (event channel and counters), its
//! prompt, and either its sampled choices or its beam search.
//!
//! Invariant: a request is complete when every choice has finished (sampling) or the search is
//! done (beam); it is then removed, after its last events are sent, and none of its sequences is
//! live in the scheduler any more.

use super::api::Detokenizer;
use super::api::{EngineEvent, Usage};
use super::beam_group::BeamGroup;
use super::choice::Choice;
use super::shared::Ticket;
use crate::sample::FinishReason;
use crate::sched::SeqId;

pub(crate) struct SampleGroup {
    pub choices: Vec<Choice>,
    /// Choices 1.. were forked from choice 0 (at its first logits).
    pub forked: bool,
}

impl SampleGroup {
    /// Indices of the choices that sample from sequence `seq`'s logits this step: every choice
    /// before the fork (they all start from the prompt's logits), else the live one on `seq`.
    pub fn row_choices(&self, seq: SeqId) -> std::ops::Range<usize> {
        if !self.forked {
            return 0..self.choices.len();
        }
        match self.choices.iter().position(|c| c.seq == Some(seq) && c.finished.is_none()) {
            Some(i) => i..i + 1,
            None => 0..0,
        }
    }
}

pub(crate) enum Kind {
    Sample(SampleGroup),
    Beam(Box<BeamGroup>),
}

pub(crate) struct RequestState {
    pub ticket: Ticket,
    pub prompt: Vec<u32>,
    /// Prompt tokens whose KV came from the prefix cache at first admission.
    pub cached_prompt_tokens: usize,
    pub started: bool,
    pub kind: Kind,
}

impl RequestState {
    /// Scheduler sequences this request may still hold.
    pub fn live_seqs(&self) -> Vec<SeqId> {
        match &self.kind {
            Kind::Sample(g) => g.choices.iter().filter(|c| c.finished.is_none()).filter_map(|c| c.seq).collect(),
            Kind::Beam(b) => b.attached().into_iter().map(SeqId).collect(),
        }
    }

    pub fn is_complete(&self) -> bool {
        match &self.kind {
            Kind::Sample(g) => g.choices.iter().all(|c| c.finished.is_some()),
            Kind::Beam(b) => b.search.is_done(),
        }
    }

    fn usage(&self, completion_tokens: usize) -> Usage {
        Usage { prompt_tokens: self.prompt.len(), completion_tokens, cached_prompt_tokens: self.cached_prompt_tokens }
    }

    /// The closing events of a complete (or aborted) request: beam results if any, then `Done`.
    /// Unfinished sampled choices end with `reason`.
    pub fn close(&mut self, reason: FinishReason, detok: &dyn Detokenizer) {
        let mut completion = 0;
        let mut events = Vec::new();
        match &mut self.kind {
            Kind::Sample(g) => {
                for c in g.choices.iter_mut().filter(|c| c.finished.is_none()) {
                    let held = c.end(reason);
                    events.push(c.finished_event(held));
                }
                completion = g.choices.iter().map(|c| c.output().len()).sum();
            }
            Kind::Beam(b) => {
                for (index, h) in b.results().into_iter().enumerate() {
                    let mut stream = detok.stream(&self.prompt);
                    let mut text = String::new();
                    for &t in &h.tokens {
                        text.push_str(&stream.step(t).unwrap_or_default());
                    }
                    text.push_str(&stream.finish().unwrap_or_default());
                    completion += h.tokens.len();
                    let r = if !b.search.is_done() {
                        reason
                    } else if h.ended_by_token {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    };
                    events.push(EngineEvent::Finished { index, reason: r, text, token_ids: h.tokens });
                }
            }
        }
        for ev in events {
            self.ticket.send(ev);
        }
        let usage = self.usage(completion);
        self.ticket.end(EngineEvent::Done { usage });
    }

    pub fn fail(&mut self, message: String) {
        self.ticket.end(EngineEvent::Error { message });
    }
}
