//! Per-request sampling parameters and their validation.
//!
//! Invariant: a [`super::Sampler`] or [`super::StopChecker`] is only ever built from parameters
//! that passed [`SamplingParams::validate`], so the sampling code can rely on the ranges below
//! (for example `top_p > 0`, `repetition_penalty > 0`) without re-checking them per token.
//!
//! Ranges (all floats must also be finite; NaN is always rejected):
//!
//! | field | allowed | off value |
//! |---|---|---|
//! | `temperature` | `[0, 100]` | `0` means greedy |
//! | `top_k` | any | `None` or `Some(0)` (or `>= vocab`) |
//! | `top_p` | `(0, 1]` | `1` |
//! | `min_p` | `[0, 1]` | `0` |
//! | `repetition_penalty` | `[0.001, 10]` | `1` |
//! | `presence_penalty`, `frequency_penalty` | `[-2, 2]` (the OpenAI range) | `0` |
//! | `max_tokens` | `>= 1` | — |
//! | `stop` | non-empty strings | empty list |
//! | `logprobs` | `None` or `Some(n)`, `n <= 20` | `None` |

use serde::{Deserialize, Serialize};

use super::error::SamplingError;

/// Most top log-probabilities a request may ask for (the OpenAI API limit).
pub const MAX_LOGPROBS: usize = 20;
/// Upper bound of `temperature`; beyond it the distribution is uniform to f32 precision anyway.
pub const MAX_TEMPERATURE: f32 = 100.0;
/// Upper bound of `repetition_penalty`; values past ~2 already wreck text, 10 is generous.
pub const MAX_REPETITION_PENALTY: f32 = 10.0;
/// Lower bound of `repetition_penalty`: a repeated token's positive logit is divided by it, and
/// a tinier one (a fuzzer sent 1.4e-45) turns an ordinary logit into +inf, failing the request
/// in the engine. Already far below any useful value (below 1 rewards repetition).
pub const MIN_REPETITION_PENALTY: f32 = 1e-3;
/// Bound on `|presence_penalty|` and `|frequency_penalty|` (the OpenAI API range).
pub const MAX_ADDITIVE_PENALTY: f32 = 2.0;

/// How to pick tokens and when to stop, for one sequence. Semantics: see [`super`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; `0` selects greedy decoding (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the `k` highest-ranked tokens; `None` or `Some(0)` disables it.
    pub top_k: Option<usize>,
    /// Nucleus sampling mass; `1` disables it.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top probability; `0` disables.
    pub min_p: f32,
    /// Hugging Face repetition penalty over prompt and output tokens; `1` disables.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty over output tokens; `0` disables.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty over output tokens; `0` disables.
    pub frequency_penalty: f32,
    /// Seed of this sequence's generator; `None` draws one from the OS at sampler creation.
    pub seed: Option<u64>,
    /// Most tokens to generate; reaching it finishes with `length`.
    pub max_tokens: usize,
    /// Strings that end generation; the matched string is not part of the output.
    pub stop: Vec<String>,
    /// Token ids that end generation (in addition to EOS); their text is not emitted.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past EOS (stop token ids still stop).
    pub ignore_eos: bool,
    /// Return this many top log-probabilities per token (`<= 20`).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    /// Plain sampling at temperature 1, every filter and penalty off, 256 tokens at most (the
    /// server normally overrides `max_tokens` from the request and the context length).
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: temperature 0, everything else default.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// True when the token is the argmax (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// `top_k` as a plain count, `0` meaning off.
    pub fn top_k_or_zero(&self) -> usize {
        self.top_k.unwrap_or(0)
    }

    /// Checks every field against the table in the module header; the error names the first
    /// offending field (in declaration order) and says why.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let t = self.temperature;
        if !(0.0..=MAX_TEMPERATURE).contains(&t) {
            return Err(SamplingError::param(
                "temperature",
                format!("{t} is not in [0, {MAX_TEMPERATURE}] (0 means greedy)"),
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(SamplingError::param("top_p", format!("{p} is not in (0, 1] (1 means off)")));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(SamplingError::param("min_p", format!("{m} is not in [0, 1] (0 means off)")));
        }
        let r = self.repetition_penalty;
        if !(MIN_REPETITION_PENALTY..=MAX_REPETITION_PENALTY).contains(&r) {
            return Err(SamplingError::param(
                "repetition_penalty",
                format!("{r} is not in [{MIN_REPETITION_PENALTY}, {MAX_REPETITION_PENALTY}] (1 means off)"),
            ));
        }
        for (field, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-MAX_ADDITIVE_PENALTY..=MAX_ADDITIVE_PENALTY).contains(&v) {
                return Err(SamplingError::param(
                    field,
                    format!("{v} is not in [-{MAX_ADDITIVE_PENALTY}, {MAX_ADDITIVE_PENALTY}] (0 means off)"),
                ));
            }
        }
        if self.max_tokens == 0 {
            return Err(SamplingError::param("max_tokens", "must be at least 1"));
        }
        if let Some(i) = self.stop.iter().position(|s| s.is_empty()) {
            return Err(SamplingError::param(
                "stop",
                format!("entry {i} is empty; an empty stop string would match before any text"),
            ));
        }
        if let Some(n) = self.logprobs {
            if n > MAX_LOGPROBS {
                return Err(SamplingError::param(
                    "logprobs",
                    format!("{n} top log-probabilities requested, at most {MAX_LOGPROBS} allowed"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(p: &SamplingParams) -> &'static str {
        match p.validate() {
            Err(SamplingError::InvalidParam { field, .. }) => field,
            other => panic!("expected InvalidParam, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_greedy_are_valid() {
        assert_eq!(SamplingParams::default().validate(), Ok(()));
        assert_eq!(SamplingParams::greedy().validate(), Ok(()));
        assert!(SamplingParams::greedy().is_greedy());
    }

    #[test]
    fn boundary_values_are_accepted() {
        let p = SamplingParams {
            temperature: MAX_TEMPERATURE,
            top_k: Some(0),
            top_p: 1.0,
            min_p: 1.0,
            repetition_penalty: MAX_REPETITION_PENALTY,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            max_tokens: 1,
            logprobs: Some(20),
            ..SamplingParams::default()
        };
        assert_eq!(p.validate(), Ok(()));
        let tiny = SamplingParams { top_p: f32::MIN_POSITIVE, repetition_penalty: 1e-3, ..p };
        assert_eq!(tiny.validate(), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        let d = SamplingParams::default;
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: -0.1, ..d() }, "temperature"),
            (SamplingParams { temperature: 100.5, ..d() }, "temperature"),
            (SamplingParams { temperature: f32::NAN, ..d() }, "temperature"),
            (SamplingParams { temperature: f32::INFINITY, ..d() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..d() }, "top_p"),
            (SamplingParams { top_p: 1.0001, ..d() }, "top_p"),
            (SamplingParams { top_p: f32::NAN, ..d() }, "top_p"),
            (SamplingParams { min_p: -0.01, ..d() }, "min_p"),
            (SamplingParams { min_p: 1.5, ..d() }, "min_p"),
            (SamplingParams { min_p: f32::NAN, ..d() }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..d() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: -1.0, ..d() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: 1.4e-45, ..d() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: 9e-4, ..d() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: f32::INFINITY, ..d() }, "repetition_penalty"),
            (SamplingParams { presence_penalty: 2.5, ..d() }, "presence_penalty"),
            (SamplingParams { presence_penalty: f32::NAN, ..d() }, "presence_penalty"),
            (SamplingParams { frequency_penalty: -3.0, ..d() }, "frequency_penalty"),
            (SamplingParams { frequency_penalty: f32::NEG_INFINITY, ..d() }, "frequency_penalty"),
            (SamplingParams { max_tokens: 0, ..d() }, "max_tokens"),
            (SamplingParams { stop: vec!["ok".into(), String::new()], ..d() }, "stop"),
            (SamplingParams { logprobs: Some(21), ..d() }, "logprobs"),
        ];
        for (p, want) in cases {
            assert_eq!(field_of(&p), want, "{p:?}");
        }
    }

    #[test]
    fn error_message_says_field_and_reason() {
        let err = SamplingParams { top_p: 1.5, ..SamplingParams::default() }.validate().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("top_p") && msg.contains("1.5") && msg.contains("(0, 1]"), "{msg}");
    }

    #[test]
    fn serde_fills_missing_fields_with_defaults() {
        let p: SamplingParams = serde_json::from_str(r#"{"temperature":0.7,"stop":["\n"]}"#).unwrap();
        assert_eq!(p.temperature, 0.7);
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!(p.top_p, 1.0);
        assert_eq!(p.max_tokens, SamplingParams::default().max_tokens);
    }
}
