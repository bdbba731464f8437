//! Beam search as pure logic: log-probability vectors in, beam moves (advance / fork / drop) out.
//! The engine maps beams to scheduler sequences (`beam_group.rs`); nothing here touches a device
//! or the scheduler, so the semantics are unit-tested on hand-made numbers.
//!
//! Semantics are those of Hugging Face transformers' vectorised `_beam_search` (v4.50+, the
//! version the fixtures were made with), for one prompt, `do_sample=False`:
//! - a beam's score is the sum of the raw `log_softmax` log-probabilities of its tokens, in f32;
//! - each step takes the best `2W` (beam, token) candidates (`max(2, 1 + #eos) * W`) over all
//!   live beams, ties broken by lower (beam rank, token id);
//! - a candidate *hits* when its token ends the sequence (EOS / stop id) or when it is the
//!   `max_new_tokens`-th token; among the first `W` candidates (by rank), hits become finished
//!   hypotheses scored `sum_logprobs / generated_len ^ length_penalty`, where `generated_len`
//!   counts the new tokens *including* the final one (HF: `cur_len + 1 - decoder_prompt_len`);
//!   the best `W` hypotheses are kept. No hypothesis is added once `W` are kept and
//!   `early_stopping` is on, nor once the "can still improve" heuristic has failed;
//! - the next live beams are the best `W` candidates that did not hit;
//! - the search ends when the heuristic says no live beam can beat the worst kept hypothesis
//!   (`best_live_score / generated_len ^ length_penalty <= worst_kept`, only once `W` are kept),
//!   when `W` hypotheses are kept and `early_stopping` is on, or when every candidate hit (the
//!   length limit). Results are the kept hypotheses, best first.
//!
//! Invariants: live beams are ordered by score, best first, and all have `generated` tokens;
//! at most `W` live beams and at most `W` kept hypotheses; a beam key names one live beam.

use std::cmp::Ordering;

/// Beam search settings (see the module header).
#[derive(Clone, Debug, PartialEq)]
pub struct BeamConfig {
    pub width: usize,
    pub length_penalty: f32,
    pub early_stopping: bool,
    /// Most new tokens (HF `max_new_tokens`).
    pub max_new_tokens: usize,
    /// Tokens that end a hypothesis (EOS ids and stop token ids).
    pub end_tokens: Vec<u32>,
}

/// A finished hypothesis.
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    /// The generated tokens (the ending token included).
    pub tokens: Vec<u32>,
    /// `sum_logprobs / len ^ length_penalty`.
    pub score: f32,
    /// Ended by an end token (else by the length limit).
    pub ended_by_token: bool,
}

#[derive(Clone, Debug)]
struct LiveBeam {
    key: u64,
    tokens: Vec<u32>,
    score: f32,
}

/// What one step asks of the engine. Keys name beams; a beam's key is the id of the sequence
/// that computes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BeamMoves {
    /// Beams that continue as themselves with this token.
    pub advanced: Vec<(u64, u32)>,
    /// `(parent, child, token)`: a new beam copying the parent's tokens, then the token.
    pub forked: Vec<(u64, u64, u32)>,
    /// Beams no longer live.
    pub dropped: Vec<u64>,
    /// The search is over: every remaining live beam is dropped too (listed in `dropped`).
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BeamError {
    #[error("beam search: {0}")]
    Config(String),
    #[error("beam search step: {0}")]
    Step(String),
}

/// The state of one beam search.
#[derive(Clone, Debug)]
pub struct BeamSearch {
    cfg: BeamConfig,
    live: Vec<LiveBeam>,
    kept: Vec<Hypothesis>,
    generated: usize,
    /// HF's `is_early_stop_heuristic_unsatisfied`: a live beam may still beat the kept ones.
    improvable: bool,
    done: bool,
}

/// One candidate continuation.
#[derive(Clone, Copy, Debug)]
struct Cand {
    score: f32,
    beam: usize,
    token: u32,
}

/// Best first: higher score, then lower beam rank, then lower token id.
fn better(a: &Cand, b: &Cand) -> Ordering {
    b.score.total_cmp(&a.score).then(a.beam.cmp(&b.beam)).then(a.token.cmp(&b.token))
}

/// `log_softmax` of one logits row (torch's formula: `x - max - ln(sum(exp(x - max)))`, the sum
/// accumulated in f64). Non-finite inputs stay `-inf`.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().filter(|x| x.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![f32::NEG_INFINITY; logits.len()];
    }
    let sum: f64 = logits.iter().filter(|x| x.is_finite()).map(|&x| ((x - max) as f64).exp()).sum();
    let ln = sum.ln() as f32;
    logits.iter().map(|&x| if x.is_finite() { x - max - ln } else { f32::NEG_INFINITY }).collect()
}

fn penalised(sum: f32, len: usize, length_penalty: f32) -> f32 {
    // HF divides an f32 tensor by a Python float `len ** lp`: the divisor is rounded to f32.
    sum / (len as f64).powf(length_penalty as f64) as f32
}

impl BeamSearch {
    /// A search whose single live beam (`key`) is the prompt.
    pub fn new(cfg: BeamConfig, key: u64) -> Result<Self, BeamError> {
        if cfg.width == 0 {
            return Err(BeamError::Config("width must be at least 1".into()));
        }
        if cfg.max_new_tokens == 0 {
            return Err(BeamError::Config("max_new_tokens must be at least 1".into()));
        }
        if !cfg.length_penalty.is_finite() {
            return Err(BeamError::Config(format!("length_penalty {} is not finite", cfg.length_penalty)));
        }
        Ok(Self {
            cfg,
            live: vec![LiveBeam { key, tokens: Vec::new(), score: 0.0 }],
            kept: Vec::new(),
            generated: 0,
            improvable: true,
            done: false,
        })
    }

    pub fn config(&self) -> &BeamConfig {
        &self.cfg
    }

    /// Keys of the live beams, best first.
    pub fn live_keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.live.iter().map(|b| b.key)
    }

    pub fn num_live(&self) -> usize {
        self.live.len()
    }

    pub fn is_live(&self, key: u64) -> bool {
        self.live.iter().any(|b| b.key == key)
    }

    /// The generated tokens of a live beam.
    pub fn tokens_of(&self, key: u64) -> Option<&[u32]> {
        self.live.iter().find(|b| b.key == key).map(|b| b.tokens.as_slice())
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Tokens generated by every live beam.
    pub fn generated(&self) -> usize {
        self.generated
    }

    fn candidates_to_keep(&self) -> usize {
        2.max(1 + self.cfg.end_tokens.len()) * self.cfg.width
    }

    /// One step: `logprobs(key)` gives each live beam's log-probabilities over the vocabulary.
    /// `new_key` names forked beams. Errors (a missing row, no finite candidate) change nothing.
    pub fn step<'a>(
        &mut self,
        mut logprobs: impl FnMut(u64) -> Option<&'a [f32]>,
        mut new_key: impl FnMut() -> u64,
    ) -> Result<BeamMoves, BeamError> {
        if self.done {
            return Err(BeamError::Step("the search is already done".into()));
        }
        let k = self.candidates_to_keep();
        let mut rows = Vec::with_capacity(self.live.len());
        for b in &self.live {
            rows.push(
                logprobs(b.key).ok_or_else(|| BeamError::Step(format!("no log-probabilities for beam {}", b.key)))?,
            );
        }
        let cands = self.top_candidates(&rows, k);
        if cands.is_empty() {
            return Err(BeamError::Step("no live beam has a finite candidate".into()));
        }
        let w = self.cfg.width;
        let cur_gen = self.generated + 1;
        let at_limit = cur_gen >= self.cfg.max_new_tokens;
        let hits = |c: &Cand| at_limit || self.cfg.end_tokens.contains(&c.token);

        // Finished hypotheses: hits among the first W candidates, unless adding is closed.
        let full_before = self.kept.len() >= w;
        let may_add = self.improvable && !(full_before && self.cfg.early_stopping);
        let mut kept = self.kept.clone();
        if may_add {
            for c in cands.iter().take(w).filter(|c| hits(c)) {
                let mut tokens = self.live[c.beam].tokens.clone();
                tokens.push(c.token);
                let h = Hypothesis {
                    tokens,
                    score: penalised(c.score, cur_gen, self.cfg.length_penalty),
                    ended_by_token: self.cfg.end_tokens.contains(&c.token),
                };
                insert_kept(&mut kept, h, w);
            }
        }

        // Next live beams: the best W candidates that did not hit.
        let next: Vec<Cand> = cands.iter().filter(|c| !hits(c)).take(w).copied().collect();
        let all_hit = cands.iter().all(hits);

        // Early-stop heuristic, on the new state (HF checks it after `cur_len += 1`).
        let mut improvable = self.improvable;
        if improvable && kept.len() >= w {
            let worst = kept.iter().map(|h| h.score).fold(f32::INFINITY, f32::min);
            improvable = match next.first() {
                Some(best) => penalised(best.score, cur_gen, self.cfg.length_penalty) > worst,
                None => false,
            };
        }
        let done = !improvable || (kept.len() >= w && self.cfg.early_stopping) || all_hit || next.is_empty();

        let mut moves = BeamMoves { done, ..BeamMoves::default() };
        let mut used = vec![false; self.live.len()];
        let mut new_live = Vec::with_capacity(next.len());
        if !done {
            for c in &next {
                let parent = &self.live[c.beam];
                let mut tokens = parent.tokens.clone();
                tokens.push(c.token);
                let key = if used[c.beam] {
                    let child = new_key();
                    moves.forked.push((parent.key, child, c.token));
                    child
                } else {
                    used[c.beam] = true;
                    moves.advanced.push((parent.key, c.token));
                    parent.key
                };
                new_live.push(LiveBeam { key, tokens, score: c.score });
            }
        }
        moves.dropped = self.live.iter().zip(&used).filter(|(_, &u)| !u).map(|(b, _)| b.key).collect();
        self.live = new_live;
        self.kept = kept;
        self.generated = cur_gen;
        self.improvable = improvable;
        self.done = done;
        Ok(moves)
    }

    /// The best `k` candidates over all live beams (finite scores only), best first.
    fn top_candidates(&self, rows: &[&[f32]], k: usize) -> Vec<Cand> {
        let mut top: Vec<Cand> = Vec::with_capacity(k + 1);
        for (beam, (b, row)) in self.live.iter().zip(rows).enumerate() {
            for (token, &lp) in row.iter().enumerate() {
                if !lp.is_finite() {
                    continue;
                }
                let c = Cand { score: lp + b.score, beam, token: token as u32 };
                if top.len() == k {
                    match top.last() {
                        Some(worst) if better(&c, worst) == Ordering::Less => {}
                        _ => continue,
                    }
                }
                let at = top.partition_point(|x| better(x, &c) == Ordering::Less);
                top.insert(at, c);
                top.truncate(k);
            }
        }
        top
    }

    /// The best `n` results, best first: kept hypotheses, topped up with live beams (scored as
    /// if they ended now) should fewer than `n` be kept.
    pub fn results(&self, n: usize) -> Vec<Hypothesis> {
        let mut out = self.kept.clone();
        if out.len() < n {
            let mut extra: Vec<Hypothesis> = self
                .live
                .iter()
                .filter(|b| !b.tokens.is_empty())
                .map(|b| Hypothesis {
                    tokens: b.tokens.clone(),
                    score: penalised(b.score, b.tokens.len(), self.cfg.length_penalty),
                    ended_by_token: false,
                })
                .collect();
            extra.sort_by(|a, b| b.score.total_cmp(&a.score));
            out.extend(extra);
        }
        out.truncate(n);
        out
    }
}

/// Inserts `h` into `kept` (best first), keeping at most `w`; an equal score goes after the
/// existing ones (HF merges the kept hypotheses first).
fn insert_kept(kept: &mut Vec<Hypothesis>, h: Hypothesis, w: usize) {
    let at = kept.partition_point(|x| x.score >= h.score);
    if at < w {
        kept.insert(at, h);
        kept.truncate(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const EOS: u32 = 0;

    fn cfg(width: usize, max_new_tokens: usize, early_stopping: bool) -> BeamConfig {
        BeamConfig { width, length_penalty: 1.0, early_stopping, max_new_tokens, end_tokens: vec![EOS] }
    }

    /// A row over a 6-token vocabulary from probabilities (0 -> -inf).
    fn row(p: [f32; 6]) -> Vec<f32> {
        p.iter().map(|&x| if x > 0.0 { x.ln() } else { f32::NEG_INFINITY }).collect()
    }

    struct Keys(u64);
    impl Keys {
        fn next(&mut self) -> u64 {
            self.0 += 1;
            self.0
        }
    }

    fn step(s: &mut BeamSearch, rows: &HashMap<u64, Vec<f32>>, keys: &mut Keys) -> BeamMoves {
        s.step(|k| rows.get(&k).map(|v| v.as_slice()), || keys.next()).unwrap()
    }

    #[test]
    fn log_softmax_normalises_and_keeps_masks() {
        let lp = log_softmax(&[1.0, 2.0, f32::NEG_INFINITY, 3.0]);
        let total: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(lp[2], f32::NEG_INFINITY);
        assert!(lp[3] > lp[1] && lp[1] > lp[0]);
    }

    #[test]
    fn first_step_forks_the_prompt_into_width_beams() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(3, 10, true), 1).unwrap();
        let rows = HashMap::from([(1, row([0.05, 0.4, 0.3, 0.15, 0.1, 0.0]))]);
        let m = step(&mut s, &rows, &mut keys);
        assert_eq!(m.advanced, vec![(1, 1)]);
        assert_eq!(m.forked, vec![(1, 101, 2), (1, 102, 3)]);
        assert!(m.dropped.is_empty() && !m.done);
        assert_eq!(s.live_keys().collect::<Vec<_>>(), vec![1, 101, 102]);
        assert_eq!(s.tokens_of(102), Some(&[3u32][..]));
    }

    #[test]
    fn beams_are_reassigned_by_cumulative_score() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(2, 10, true), 1).unwrap();
        let m = step(&mut s, &HashMap::from([(1, row([0.0, 0.6, 0.4, 0.0, 0.0, 0.0]))]), &mut keys);
        assert_eq!((m.advanced, m.forked), (vec![(1, 1)], vec![(1, 101, 2)]));
        // Beam 1 (p .6) is unsure; beam 101 (p .4) is certain: .4 * .9 = .36 beats .6 * .5 = .3,
        // and .6 * .5 = .3 beats .6 * .4 = .24, so both survivors descend from different parents.
        let rows =
            HashMap::from([(1, row([0.0, 0.0, 0.0, 0.5, 0.4, 0.1])), (101, row([0.0, 0.0, 0.0, 0.05, 0.05, 0.9]))]);
        let m = step(&mut s, &rows, &mut keys);
        assert_eq!(m.advanced, vec![(101, 5), (1, 3)]);
        assert!(m.forked.is_empty() && m.dropped.is_empty());
        assert_eq!(s.tokens_of(101), Some(&[2u32, 5][..]));
        assert_eq!(s.tokens_of(1), Some(&[1u32, 3][..]));
    }

    #[test]
    fn a_beam_that_no_candidate_continues_is_dropped_and_the_winner_forks() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(2, 10, true), 1).unwrap();
        step(&mut s, &HashMap::from([(1, row([0.0, 0.5, 0.5, 0.0, 0.0, 0.0]))]), &mut keys);
        let rows =
            HashMap::from([(1, row([0.0, 0.0, 0.0, 0.5, 0.5, 0.0])), (101, row([0.0, 0.0, 0.0, 0.45, 0.45, 0.1]))]);
        let m = step(&mut s, &rows, &mut keys);
        assert_eq!(m.advanced, vec![(1, 3)]);
        assert_eq!(m.forked, vec![(1, 102, 4)]);
        assert_eq!(m.dropped, vec![101]);
        assert_eq!(s.live_keys().collect::<Vec<_>>(), vec![1, 102]);
    }

    #[test]
    fn eos_in_the_top_width_is_kept_with_its_length_and_early_stopping_ends_the_search() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(2, 10, true), 1).unwrap();
        // EOS is the best candidate: it becomes a hypothesis; the two best non-EOS go on.
        let m = step(&mut s, &HashMap::from([(1, row([0.5, 0.3, 0.2, 0.0, 0.0, 0.0]))]), &mut keys);
        assert_eq!((m.advanced.clone(), m.forked.clone()), (vec![(1, 1)], vec![(1, 101, 2)]));
        assert!(!m.done);
        let r = s.results(2);
        assert_eq!(r[0].tokens, vec![EOS]);
        assert!((r[0].score - 0.5f32.ln()).abs() < 1e-6);
        assert!(r[0].ended_by_token);
        // Both beams now end: the second hypothesis fills the kept set; early stopping ends it.
        let rows =
            HashMap::from([(1, row([0.9, 0.1, 0.0, 0.0, 0.0, 0.0])), (101, row([0.9, 0.0, 0.1, 0.0, 0.0, 0.0]))]);
        let m = step(&mut s, &rows, &mut keys);
        assert!(m.done);
        assert_eq!(m.dropped, vec![1, 101]);
        let r = s.results(2);
        // .3 * .9 over 2 tokens (the EOS counts): ln(.27) / 2 = -0.65 beats ln(.5) = -0.69;
        // [2, EOS] (ln(.18) / 2 = -0.86) does not fit.
        assert_eq!(r[0].tokens, vec![1, EOS]);
        assert!((r[0].score - (0.3f32.ln() + 0.9f32.ln()) / 2.0).abs() < 1e-6);
        assert_eq!(r[1].tokens, vec![EOS]);
    }

    #[test]
    fn eos_outside_the_top_width_is_not_kept() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(2, 10, true), 1).unwrap();
        // Rank 0, 1: tokens 1, 2; EOS is rank 2 (of 2W = 4): ignored.
        step(&mut s, &HashMap::from([(1, row([0.2, 0.5, 0.3, 0.0, 0.0, 0.0]))]), &mut keys);
        assert!(s.results(2).iter().all(|h| !h.tokens.contains(&EOS)));
    }

    #[test]
    fn length_limit_finishes_the_best_width_candidates() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(2, 2, true), 1).unwrap();
        step(&mut s, &HashMap::from([(1, row([0.0, 0.6, 0.4, 0.0, 0.0, 0.0]))]), &mut keys);
        let rows =
            HashMap::from([(1, row([0.0, 0.0, 0.0, 0.7, 0.3, 0.0])), (101, row([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))]);
        let m = step(&mut s, &rows, &mut keys);
        assert!(m.done);
        let r = s.results(2);
        assert_eq!(r[0].tokens, vec![1, 3]); // .42 > .4
        assert_eq!(r[1].tokens, vec![2, 5]);
        assert!(!r[0].ended_by_token);
        assert!((r[0].score - (0.6f32.ln() + 0.7f32.ln()) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn without_early_stopping_the_search_goes_on_while_a_live_beam_can_improve() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(1, 10, false), 1).unwrap();
        // W = 1: EOS (p .5) is kept; live beam token 1 (p .4).
        let m = step(&mut s, &HashMap::from([(1, row([0.5, 0.4, 0.1, 0.0, 0.0, 0.0]))]), &mut keys);
        // Full after one, but without early stopping only the heuristic decides:
        // best live ln(.4)/1 = -0.92 < kept ln(.5) = -0.69: it cannot improve, so it stops.
        assert!(m.done);
        let mut s = BeamSearch::new(cfg(1, 10, false), 1).unwrap();
        let m = step(&mut s, &HashMap::from([(1, row([0.3, 0.7, 0.0, 0.0, 0.0, 0.0]))]), &mut keys);
        // EOS is rank 1 (outside the top W = 1): nothing kept, the search goes on.
        assert!(!m.done);
        let mut s2 = BeamSearch::new(cfg(2, 10, false), 1).unwrap();
        let m = step(&mut s2, &HashMap::from([(1, row([0.45, 0.5, 0.05, 0.0, 0.0, 0.0]))]), &mut keys);
        assert!(!m.done, "one kept of two: not full, keep going");
    }

    #[test]
    fn errors_change_nothing() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(2, 10, true), 1).unwrap();
        assert!(s.step(|_| None, || keys.next()).is_err());
        assert_eq!(s.generated(), 0);
        let masked = vec![f32::NEG_INFINITY; 6];
        assert!(s.step(|_| Some(masked.as_slice()), || 7).is_err());
        assert_eq!(s.live_keys().collect::<Vec<_>>(), vec![1]);
        assert!(BeamSearch::new(cfg(0, 10, true), 1).is_err());
        assert!(BeamSearch::new(cfg(1, 0, true), 1).is_err());
    }

    #[test]
    fn results_top_up_with_live_beams_when_few_are_kept() {
        let mut keys = Keys(100);
        let mut s = BeamSearch::new(cfg(2, 10, true), 1).unwrap();
        step(&mut s, &HashMap::from([(1, row([0.0, 0.6, 0.4, 0.0, 0.0, 0.0]))]), &mut keys);
        let r = s.results(2);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].tokens, vec![1]);
    }
}
