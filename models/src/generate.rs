//! Single-sequence generation: prefill the prompt in one step, then decode token by token,
//! streaming UTF-8-safe text through the stop checker. `kiln generate` runs the engine (one
//! generation loop for every mode); this plain loop stays as the reference the tests compare
//! the engine against (batching invariance, HF fixtures).
//!
//! The sequence gets a private block table (blocks `0..n`) in a KV cache sized for
//! `prompt + max_tokens`.

use crate::model::{CausalLm, ForwardBatch, KvCache, ModelError};
use crate::tokenizer::{DetokStream, Tokenizer, TokenizerError};
use kiln_runtime::attention::SeqAttn;
use kiln_runtime::sample::{FinishReason, Sampler, SamplingError, SamplingParams, StopChecker, TokenHistory};
use std::time::Instant;

pub const BLOCK_SIZE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's context length {context}")]
    TooLong { prompt: usize, max_tokens: usize, context: usize },
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Tensor(#[from] kiln_runtime::TensorError),
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

#[derive(Clone, Debug)]
pub struct GenerateOutput {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Per generated token: `(logprob, top logprobs)` when asked for.
    pub logprobs: Vec<(f32, Vec<(u32, f32)>)>,
    pub timings: Timings,
}

/// Logits of the last row, on the host.
fn last_logits(model: &dyn CausalLm, batch: &ForwardBatch<'_>, kv: &mut KvCache) -> Result<Vec<f32>, GenerateError> {
    Ok(model.forward(batch, kv)?.to_host_f32()?)
}

/// Generate from `prompt_ids`, calling `on_text` with each safe-to-show text delta.
pub fn generate(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    params: &SamplingParams,
    mut on_text: impl FnMut(&str),
) -> Result<GenerateOutput, GenerateError> {
    params.validate()?;
    if prompt_ids.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let cfg = model.info();
    let total = prompt_ids.len() + params.max_tokens;
    if total > cfg.max_model_len {
        return Err(GenerateError::TooLong {
            prompt: prompt_ids.len(),
            max_tokens: params.max_tokens,
            context: cfg.max_model_len,
        });
    }
    let mut sampler = Sampler::new(params)?;
    let mut stop = StopChecker::new(params, &cfg.eos_token_ids)?;
    let mut history = TokenHistory::new(prompt_ids);
    let mut detok = DetokStream::with_context(tokenizer, true, prompt_ids);
    let blocks = total.div_ceil(BLOCK_SIZE);
    let mut kv = model.new_kv_cache(blocks, BLOCK_SIZE)?;
    let table: Vec<u32> = (0..blocks as u32).collect();

    let n = prompt_ids.len();
    let t0 = Instant::now();
    let positions: Vec<i32> = (0..n as i32).collect();
    let slots: Vec<u32> = (0..n as u32).collect();
    let seqs = [SeqAttn { q_start: 0, q_len: n, ctx_len: n, block_table: &table }];
    let mut logits = last_logits(
        model,
        &ForwardBatch { tokens: prompt_ids, positions: &positions, slots: &slots, seqs: &seqs, logits_rows: &[n - 1] },
        &mut kv,
    )?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();

    let mut out = GenerateOutput {
        token_ids: vec![],
        text: String::new(),
        finish_reason: FinishReason::Length,
        logprobs: vec![],
        timings: Timings::default(),
    };
    loop {
        let s = sampler.sample(&logits, &history)?;
        history.push_output(s.token);
        out.token_ids.push(s.token);
        if params.logprobs.is_some() {
            out.logprobs.push((s.logprob, s.top_logprobs.clone()));
        }
        let delta = detok.step(s.token)?;
        let mut step = stop.step(s.token, &delta)?;
        if step.finish == Some(FinishReason::Length) {
            // Release bytes the detokenizer still holds (an incomplete character at the end).
            let tail = detok.finish()?;
            step.text.push_str(&tail);
        }
        on_text(&step.text);
        out.text.push_str(&step.text);
        if let Some(reason) = step.finish {
            out.finish_reason = reason;
            break;
        }
        let pos = (n + out.token_ids.len() - 1) as i32;
        let seqs = [SeqAttn { q_start: 0, q_len: 1, ctx_len: pos as usize + 1, block_table: &table }];
        logits = last_logits(
            model,
            &ForwardBatch {
                tokens: &[s.token],
                positions: &[pos],
                slots: &[pos as u32],
                seqs: &seqs,
                logits_rows: &[0],
            },
            &mut kv,
        )?;
    }
    let decode = t1.elapsed();
    let g = out.token_ids.len();
    out.timings = Timings {
        prompt_tokens: n,
        generated_tokens: g,
        prefill_ms: prefill.as_secs_f64() * 1e3,
        decode_ms: decode.as_secs_f64() * 1e3,
        prefill_tokens_per_s: n as f64 / prefill.as_secs_f64().max(1e-9),
        // The first token comes from the prefill logits: decode steps = g - 1.
        decode_tokens_per_s: g.saturating_sub(1) as f64 / decode.as_secs_f64().max(1e-9),
    };
    Ok(out)
}
