//! Request fields → the engine's [`SamplingParams`], [`BeamParams`] and `n`, with every check
//! that can be made before the prompt is known; then [`for_prompt`] fixes `max_tokens`
//! against the context length once it is.
//!
//! Invariant: a [`GenPlan`] holds only parameters that passed [`SamplingParams::validate`]
//! and the server's caps ([`ServerConfig`]); every refusal is a 400 naming the field as the
//! client spelled it (`max_completion_tokens`, `top_logprobs`, ...).

use crate::config::ServerConfig;
use crate::engine_api::BeamParams;
use crate::error::ApiError;
use crate::protocol::common::SamplingFields;
use kiln_runtime::sample::{SamplingError, SamplingParams};

/// Most `stop_token_ids` entries.
pub const MAX_STOP_TOKEN_IDS: usize = 64;

/// What every prompt of a request shares.
#[derive(Clone, Debug)]
pub struct GenPlan {
    /// `max_tokens` is a placeholder until [`for_prompt`].
    pub params: SamplingParams,
    pub max_tokens: Option<u64>,
    pub max_tokens_param: &'static str,
    /// `max_tokens` when the request gives none: `Some(16)` for completions (the OpenAI
    /// default), `None` for chat (whatever the context leaves).
    pub default_max_tokens: Option<usize>,
    pub n: usize,
    pub beam: Option<BeamParams>,
    pub logprobs: bool,
}

pub fn plan(f: &SamplingFields, cfg: &ServerConfig, vocab: usize) -> Result<GenPlan, ApiError> {
    if f.logit_bias_entries > 0 {
        return Err(ApiError::bad_value("logit_bias", "logit_bias is not supported by this server"));
    }
    let n = match f.n {
        None => 1,
        Some(n) if n >= 1 && n <= cfg.max_n as u64 => n as usize,
        Some(n) => return Err(ApiError::bad_value("n", format!("n = {n} is not in [1, {}]", cfg.max_n))),
    };
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        Some(k) => {
            return Err(ApiError::bad_value(
                "top_k",
                format!("top_k = {k}: use a positive count, or -1 or 0 for no limit"),
            ))
        }
    };
    let stop = f.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > cfg.max_stop {
        return Err(ApiError::bad_value(
            "stop",
            format!("{} stop strings given, at most {} allowed", stop.len(), cfg.max_stop),
        ));
    }
    if let Some(s) = stop.iter().find(|s| s.len() > cfg.max_stop_bytes) {
        return Err(ApiError::bad_value(
            "stop",
            format!("a stop string of {} bytes is longer than the limit of {}", s.len(), cfg.max_stop_bytes),
        ));
    }
    let stop_token_ids = f.stop_token_ids.clone().unwrap_or_default();
    if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::bad_value(
            "stop_token_ids",
            format!("{} stop token ids given, at most {MAX_STOP_TOKEN_IDS} allowed", stop_token_ids.len()),
        ));
    }
    if let Some(t) = stop_token_ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_value(
            "stop_token_ids",
            format!("token id {t} is outside the vocabulary of {vocab}"),
        ));
    }
    let d = SamplingParams::default();
    let params = SamplingParams {
        temperature: f.temperature.unwrap_or(d.temperature),
        top_k,
        top_p: f.top_p.unwrap_or(d.top_p),
        min_p: f.min_p.unwrap_or(d.min_p),
        repetition_penalty: f.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: f.presence_penalty.unwrap_or(d.presence_penalty),
        frequency_penalty: f.frequency_penalty.unwrap_or(d.frequency_penalty),
        // Negative seeds are valid in the OpenAI API; reinterpreting the bits keeps each
        // distinct seed distinct.
        seed: f.seed.map(|s| s as u64),
        // Checked against the prompt in `for_prompt`; 1 passes `validate` meanwhile.
        max_tokens: 1,
        stop,
        stop_token_ids,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        logprobs: f.logprobs.map(|k| k as usize),
    };
    params.validate().map_err(|e| sampling_error(e, f))?;
    if f.max_tokens == Some(0) {
        return Err(ApiError::bad_value(f.max_tokens_param, format!("{} must be at least 1", f.max_tokens_param)));
    }
    let beam = beam_params(f, n, cfg)?;
    Ok(GenPlan {
        params,
        max_tokens: f.max_tokens,
        max_tokens_param: f.max_tokens_param,
        default_max_tokens: f.default_max_tokens,
        n,
        beam,
        logprobs: f.logprobs.is_some(),
    })
}

fn beam_params(f: &SamplingFields, n: usize, cfg: &ServerConfig) -> Result<Option<BeamParams>, ApiError> {
    if f.use_beam_search != Some(true) {
        return match f.best_of {
            Some(b) if b != n as u64 => {
                Err(ApiError::bad_value("best_of", "best_of other than n needs use_beam_search: true"))
            }
            _ => Ok(None),
        };
    }
    let width = f.best_of.unwrap_or(n as u64);
    if width < 1 || width > cfg.max_n as u64 {
        return Err(ApiError::bad_value(
            "best_of",
            format!("beam width best_of = {width} is not in [1, {}]", cfg.max_n),
        ));
    }
    if (n as u64) > width {
        return Err(ApiError::bad_value("n", format!("n = {n} is more than the beam width best_of = {width}")));
    }
    let length_penalty = f.length_penalty.unwrap_or(1.0);
    if !length_penalty.is_finite() {
        return Err(ApiError::bad_value("length_penalty", "length_penalty must be a finite number"));
    }
    if f.logprobs.is_some() {
        return Err(ApiError::bad_value("use_beam_search", "beam search does not return logprobs"));
    }
    Ok(Some(BeamParams { width: width as usize, length_penalty, early_stopping: f.early_stopping.unwrap_or(true) }))
}

fn sampling_error(e: SamplingError, f: &SamplingFields) -> ApiError {
    match e {
        SamplingError::InvalidParam { field, reason } => {
            let param = match field {
                "max_tokens" => f.max_tokens_param,
                "logprobs" => f.logprobs_param,
                other => other,
            };
            ApiError::bad_value(param, format!("`{param}`: {reason}"))
        }
        other => ApiError::invalid(None, "invalid_value", other.to_string()),
    }
}

/// The plan's parameters for a prompt of `prompt_len` tokens: `max_tokens` defaults to the
/// route's default, capped by what the context leaves (or to all of it when none); a prompt or request over the context is refused with both numbers.
pub fn for_prompt(
    plan: &GenPlan,
    prompt_len: usize,
    max_model_len: usize,
    prompt_param: &str,
) -> Result<SamplingParams, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::invalid(
            Some(prompt_param),
            "empty_prompt",
            format!("`{prompt_param}` is empty: give at least one token of input"),
        ));
    }
    if prompt_len >= max_model_len {
        return Err(ApiError::invalid(
            Some(prompt_param),
            "context_length_exceeded",
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, your prompt has {prompt_len} tokens, which leaves no room for a completion. Please reduce the length of the {prompt_param}."
            ),
        ));
    }
    let room = max_model_len - prompt_len;
    let max_tokens = match plan.max_tokens {
        None => plan.default_max_tokens.map_or(room, |d| d.min(room)),
        Some(m) if m <= room as u64 => m as usize,
        Some(m) => {
            return Err(ApiError::invalid(
                Some(plan.max_tokens_param),
                "context_length_exceeded",
                format!(
                    "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_len} in the {prompt_param}, {m} in the completion). Please reduce the length of the {prompt_param} or {}.",
                    prompt_len as u128 + m as u128,
                    plan.max_tokens_param
                ),
            ))
        }
    };
    Ok(SamplingParams { max_tokens, ..plan.params.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::common::StopSpec;

    fn fields() -> SamplingFields {
        SamplingFields { max_tokens_param: "max_tokens", logprobs_param: "logprobs", ..Default::default() }
    }

    fn param_of(f: SamplingFields) -> String {
        plan(&f, &ServerConfig::default(), 1000).expect_err("should be refused").param.unwrap_or_default()
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(param_of(SamplingFields { temperature: Some(-1.0), ..fields() }), "temperature");
        assert_eq!(param_of(SamplingFields { temperature: Some(f32::INFINITY), ..fields() }), "temperature");
        assert_eq!(param_of(SamplingFields { top_p: Some(0.0), ..fields() }), "top_p");
        assert_eq!(param_of(SamplingFields { top_p: Some(1.0001), ..fields() }), "top_p");
        assert_eq!(param_of(SamplingFields { top_k: Some(-2), ..fields() }), "top_k");
        assert_eq!(param_of(SamplingFields { n: Some(0), ..fields() }), "n");
        assert_eq!(param_of(SamplingFields { n: Some(1_000_000), ..fields() }), "n");
        assert_eq!(param_of(SamplingFields { max_tokens: Some(0), ..fields() }), "max_tokens");
        assert_eq!(
            param_of(SamplingFields { max_tokens: Some(0), max_tokens_param: "max_completion_tokens", ..fields() }),
            "max_completion_tokens"
        );
        assert_eq!(param_of(SamplingFields { stop: Some(StopSpec::One(String::new())), ..fields() }), "stop");
        assert_eq!(param_of(SamplingFields { stop: Some(StopSpec::One("x".repeat(10_000))), ..fields() }), "stop");
        assert_eq!(param_of(SamplingFields { stop: Some(StopSpec::Many(vec!["a".into(); 17])), ..fields() }), "stop");
        assert_eq!(param_of(SamplingFields { stop_token_ids: Some(vec![1000]), ..fields() }), "stop_token_ids");
        assert_eq!(
            param_of(SamplingFields { logprobs: Some(21), logprobs_param: "top_logprobs", ..fields() }),
            "top_logprobs"
        );
        assert_eq!(param_of(SamplingFields { presence_penalty: Some(2.5), ..fields() }), "presence_penalty");
        assert_eq!(param_of(SamplingFields { repetition_penalty: Some(0.0), ..fields() }), "repetition_penalty");
        assert_eq!(param_of(SamplingFields { min_p: Some(1.5), ..fields() }), "min_p");
        assert_eq!(param_of(SamplingFields { logit_bias_entries: 1, ..fields() }), "logit_bias");
        assert_eq!(param_of(SamplingFields { best_of: Some(3), ..fields() }), "best_of");
        assert_eq!(
            param_of(SamplingFields { use_beam_search: Some(true), n: Some(3), best_of: Some(2), ..fields() }),
            "n"
        );
    }

    #[test]
    fn context_length_rules() {
        let p = plan(&fields(), &ServerConfig::default(), 1000).unwrap();
        assert_eq!(for_prompt(&p, 10, 100, "prompt").unwrap().max_tokens, 90);
        let e = for_prompt(&p, 100, 100, "prompt").unwrap_err();
        assert_eq!((e.param.as_deref(), e.code), (Some("prompt"), Some("context_length_exceeded")));
        assert!(e.message.contains("100"), "{}", e.message);
        let p =
            plan(&SamplingFields { max_tokens: Some(1_000_000_000_000), ..fields() }, &ServerConfig::default(), 1000)
                .unwrap();
        let e = for_prompt(&p, 10, 100, "messages").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(
            e.message.contains("maximum context length is 100") && e.message.contains("1000000000010"),
            "{}",
            e.message
        );
        assert_eq!(for_prompt(&p, 0, 100, "prompt").unwrap_err().code, Some("empty_prompt"));
    }

    #[test]
    fn defaults_and_mappings() {
        let p = plan(
            &SamplingFields { top_k: Some(-1), seed: Some(-1), n: Some(2), ..fields() },
            &ServerConfig::default(),
            1000,
        )
        .unwrap();
        assert_eq!(p.params.top_k, None);
        assert_eq!(p.params.seed, Some(u64::MAX));
        assert_eq!(p.params.temperature, 1.0);
        assert_eq!(p.n, 2);
        let b = plan(
            &SamplingFields { use_beam_search: Some(true), best_of: Some(4), n: Some(2), ..fields() },
            &ServerConfig::default(),
            1000,
        )
        .unwrap();
        assert_eq!(b.beam.unwrap().width, 4);
    }
}
