//! Repetition, presence and frequency penalties, applied in place to a logits vector.
//!
//! Semantics (step 1 of the pipeline in [`super`]), per distinct token `t` of the history, in
//! `f32`, in this order:
//! - repetition (Hugging Face), if `t` occurs in the prompt or the output:
//!   `l = if l > 0 { l / r } else { l * r }` — so `r > 1` always makes a seen token less likely;
//! - frequency and presence (OpenAI), if `t` occurs `c >= 1` times in the output only:
//!   `l = l - c as f32 * frequency - presence`.
//!
//! Cost is O(distinct tokens in the history), independent of the vocabulary size. Each token's
//! result depends only on its own logit and counts, so the unspecified iteration order of the
//! history cannot change the output.

use super::error::SamplingError;
use super::history::TokenHistory;
use super::params::SamplingParams;

/// True when `params` leaves the logits untouched, so callers can skip the history entirely.
pub fn penalties_off(params: &SamplingParams) -> bool {
    params.repetition_penalty == 1.0 && params.presence_penalty == 0.0 && params.frequency_penalty == 0.0
}

/// Applies the penalties of `params` over `history` to `logits`.
///
/// Fails with [`SamplingError::TokenOutOfRange`] when the history holds an id `>= logits.len()`
/// (only checked when some penalty is on, since only then is the history read).
pub fn apply_penalties(
    logits: &mut [f32],
    history: &TokenHistory,
    params: &SamplingParams,
) -> Result<(), SamplingError> {
    if penalties_off(params) {
        return Ok(());
    }
    if let Some(max) = history.max_token() {
        if max as usize >= logits.len() {
            return Err(SamplingError::TokenOutOfRange { token: max, vocab: logits.len() });
        }
    }
    let r = params.repetition_penalty;
    let (presence, frequency) = (params.presence_penalty, params.frequency_penalty);
    for (token, count) in history.distinct() {
        // In range: checked against max_token above.
        let l = &mut logits[token as usize];
        if r != 1.0 {
            *l = if *l > 0.0 { *l / r } else { *l * r };
        }
        if count.output > 0 {
            *l = *l - count.output as f32 * frequency - presence;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(r: f32, presence: f32, frequency: f32) -> SamplingParams {
        SamplingParams {
            repetition_penalty: r,
            presence_penalty: presence,
            frequency_penalty: frequency,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn repetition_divides_positive_and_multiplies_negative() {
        // prompt has 0 and 1, output has 2; token 3 never seen.
        let mut h = TokenHistory::new(&[0, 1]);
        h.push_output(2);
        let mut l = vec![2.0, -2.0, 0.0, 3.0];
        apply_penalties(&mut l, &h, &params(2.0, 0.0, 0.0)).unwrap();
        assert_eq!(l, vec![1.0, -4.0, 0.0, 3.0]);
    }

    #[test]
    fn repetition_counts_each_distinct_token_once() {
        let mut h = TokenHistory::new(&[1, 1, 1]);
        h.push_output(1);
        let mut l = vec![0.0, 8.0];
        apply_penalties(&mut l, &h, &params(2.0, 0.0, 0.0)).unwrap();
        assert_eq!(l, vec![0.0, 4.0]);
    }

    #[test]
    fn frequency_and_presence_use_output_counts_only() {
        // Token 0: prompt only -> untouched. Token 1: output x3. Token 2: output x1 (+ prompt).
        let mut h = TokenHistory::new(&[0, 2]);
        for t in [1, 1, 2, 1] {
            h.push_output(t);
        }
        let mut l = vec![1.0, 1.0, 1.0, 1.0];
        apply_penalties(&mut l, &h, &params(1.0, 0.5, 0.25)).unwrap();
        // 1 - 3*0.25 - 0.5 = -0.25 ; 1 - 1*0.25 - 0.5 = 0.25
        assert_eq!(l, vec![1.0, -0.25, 0.25, 1.0]);
    }

    #[test]
    fn repetition_then_additive_in_that_order() {
        let mut h = TokenHistory::new(&[]);
        h.push_output(0);
        h.push_output(0);
        let mut l = vec![3.0, 0.0];
        apply_penalties(&mut l, &h, &params(1.5, 1.0, 0.5)).unwrap();
        // 3 / 1.5 = 2 ; 2 - 2*0.5 - 1 = 0
        assert_eq!(l, vec![0.0, 0.0]);
        // Negative penalties (allowed by OpenAI) encourage repeats.
        let mut l = vec![-3.0, 0.0];
        apply_penalties(&mut l, &h, &params(1.5, -1.0, -0.5)).unwrap();
        // -3 * 1.5 = -4.5 ; -4.5 + 1 + 1 = -2.5
        assert_eq!(l, vec![-2.5, 0.0]);
    }

    #[test]
    fn masked_tokens_stay_masked() {
        let h = TokenHistory::new(&[0]);
        let mut l = vec![f32::NEG_INFINITY, 1.0];
        apply_penalties(&mut l, &h, &params(1.3, 0.0, 0.0)).unwrap();
        assert_eq!(l[0], f32::NEG_INFINITY);
    }

    #[test]
    fn out_of_range_history_is_an_error_only_when_penalties_are_on() {
        let h = TokenHistory::new(&[0, 9]);
        let mut l = vec![0.0; 4];
        assert_eq!(
            apply_penalties(&mut l, &h, &params(1.2, 0.0, 0.0)),
            Err(SamplingError::TokenOutOfRange { token: 9, vocab: 4 })
        );
        assert_eq!(apply_penalties(&mut l, &h, &SamplingParams::default()), Ok(()));
        assert_eq!(l, vec![0.0; 4]);
    }
}
