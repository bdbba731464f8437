//! A fake causal LM for engine tests: its "KV" is the token ids themselves (slot `s` of the K
//! pool holds `token + 1`), and its logits are a fixed pseudo-random function of the whole
//! context read back through the block table. So a wrong slot, a missed copy-on-write copy or a
//! bad recompute after preemption changes the output, and the output of a sequence does not
//! depend on what else is in the batch. Token `PANIC` makes `forward` panic, token `FAIL` makes
//! it return an error, token `SLOW` in a sequence's context makes the step 2 ms slower.

#![allow(dead_code)]

use kiln_runtime::engine::{
    Detokenizer, EngineConfig, EngineEvent, EngineHandle, GenerateRequest, RequestHandle, TextStream, TokenLogprob,
    Usage,
};
use kiln_runtime::model::{CausalLm, ForwardBatch, KvCache, ModelError, ModelInfo};
use kiln_runtime::sample::FinishReason;
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use std::sync::Arc;

pub const VOCAB: usize = 64;
pub const EOS: u32 = 1;
pub const PANIC: u32 = 63;
pub const FAIL: u32 = 62;
/// A step with a sequence whose context holds this token takes 2 ms more (a request that stays
/// running, or in prefill, while a test looks at it).
pub const SLOW: u32 = 61;

pub struct FakeLm {
    info: ModelInfo,
    dev: Device,
}

/// The fake model with context length `max_model_len`.
pub fn fake_model(max_model_len: usize) -> Arc<dyn CausalLm> {
    Arc::new(FakeLm {
        info: ModelInfo {
            architecture: "fake".into(),
            vocab_size: VOCAB,
            max_model_len,
            eos_token_ids: vec![EOS],
            layers: kiln_runtime::model::LayerKv::uniform(1, 1, 1),
            kv_dtype: DType::F32,
            kv_fp8: None,
        },
        dev: Device::Cpu,
    })
}

fn mix(mut h: u64, x: u64) -> u64 {
    h ^= x.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
    h.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// The fake model's logits after `context`: values in [-4, 4), EOS pushed down so sequences
/// usually run a while, and the last three tokens mattering most (so beams differ).
pub fn logits_for(context: &[u32]) -> Vec<f32> {
    let mut h = 0u64;
    for &t in context {
        h = mix(h, t as u64);
    }
    (0..VOCAB as u64)
        .map(|v| {
            let r = mix(h, v + 1000);
            let x = (r >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0;
            match v as u32 {
                EOS => x - 2.0,
                PANIC | FAIL | SLOW => f32::NEG_INFINITY,
                _ => x,
            }
        })
        .collect()
}

impl CausalLm for FakeLm {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn device(&self) -> &Device {
        &self.dev
    }
    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache, ModelError> {
        let z = || Tensor::zeros(&self.dev, DType::F32, num_blocks * block_size, 1);
        Ok(KvCache { k: vec![z()?], v: vec![z()?], block_size, num_blocks, fp8: None })
    }
    fn forward(&self, batch: &ForwardBatch<'_>, kv: &mut KvCache) -> Result<Tensor, ModelError> {
        batch.validate(VOCAB)?;
        if batch.tokens.contains(&PANIC) {
            panic!("fake model: panic token");
        }
        if batch.tokens.contains(&FAIL) {
            return Err(ModelError::Batch("fake model: fail token".into()));
        }
        let vals: Vec<f32> = batch.tokens.iter().map(|&t| t as f32 + 1.0).collect();
        kv.k[0].with_host_mut::<f32, _>(|mut p| {
            for (&slot, &v) in batch.slots.iter().zip(&vals) {
                p.row_mut(slot as usize)[0] = v;
            }
        })?;
        let bs = kv.block_size;
        let slow = kv.k[0].with_host::<f32, _>(|p| {
            batch.seqs.iter().any(|s| {
                (0..s.ctx_len).any(|t| p.row(s.block_table[t / bs] as usize * bs + t % bs)[0] as u32 == SLOW + 1)
            })
        })?;
        if slow {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut out = Vec::with_capacity(batch.logits_rows.len() * VOCAB);
        for &row in batch.logits_rows {
            let s = batch
                .seqs
                .iter()
                .find(|s| row >= s.q_start && row < s.q_start + s.q_len)
                .ok_or_else(|| ModelError::Batch("row".into()))?;
            let upto = s.ctx_len - s.q_len + (row - s.q_start) + 1;
            let ctx: Vec<u32> = kv.k[0].with_host::<f32, _>(|p| {
                (0..upto).map(|t| p.row(s.block_table[t / bs] as usize * bs + t % bs)[0] as u32 - 1).collect()
            })?;
            out.extend(logits_for(&ctx));
        }
        Ok(Tensor::from_f32(&self.dev, &out, batch.logits_rows.len(), VOCAB)?)
    }
}

/// Text of token `t` is `<t>`; EOS has none.
pub struct FakeDetok;

struct FakeStream;

impl TextStream for FakeStream {
    fn step(&mut self, token: u32) -> Result<String, String> {
        Ok(if token == EOS { String::new() } else { format!("<{token}>") })
    }
    fn finish(&mut self) -> Result<String, String> {
        Ok(String::new())
    }
}

impl Detokenizer for FakeDetok {
    fn stream(&self, _prompt_ids: &[u32]) -> Box<dyn TextStream> {
        Box::new(FakeStream)
    }
}

pub fn start(cfg: EngineConfig) -> EngineHandle {
    kiln_runtime::engine::Engine::start(fake_model(512), Arc::new(FakeDetok), cfg).expect("start the engine")
}

/// One choice's collected output.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceOut {
    pub tokens: Vec<u32>,
    pub text: String,
    pub reason: Option<FinishReason>,
    /// Per streamed token, when the request asked for log-probabilities.
    pub logprobs: Vec<TokenLogprob>,
}

/// A request's collected events.
#[derive(Clone, Debug, PartialEq)]
pub struct Collected {
    pub choices: Vec<ChoiceOut>,
    pub usage: Option<Usage>,
    pub error: Option<String>,
}

pub fn collect(mut h: RequestHandle) -> Collected {
    let mut c = Collected { choices: Vec::new(), usage: None, error: None };
    let slot = |c: &mut Collected, i: usize| {
        while c.choices.len() <= i {
            c.choices.push(ChoiceOut { tokens: Vec::new(), text: String::new(), reason: None, logprobs: Vec::new() });
        }
    };
    while let Some(ev) = h.blocking_recv() {
        match ev {
            EngineEvent::Token { index, token, text, logprob } => {
                slot(&mut c, index);
                c.choices[index].tokens.push(token);
                c.choices[index].text.push_str(&text);
                c.choices[index].logprobs.extend(logprob);
            }
            EngineEvent::Finished { index, reason, text, token_ids } => {
                slot(&mut c, index);
                let ch = &mut c.choices[index];
                assert!(ch.reason.is_none(), "two Finished events for choice {index}");
                ch.text.push_str(&text);
                if ch.tokens.is_empty() {
                    ch.tokens = token_ids.clone(); // beam search: no Token events
                }
                assert_eq!(ch.tokens, token_ids, "Finished token_ids differ from the streamed tokens");
                ch.reason = Some(reason);
            }
            EngineEvent::Done { usage } => {
                c.usage = Some(usage);
                break;
            }
            EngineEvent::Error { message } => {
                c.error = Some(message);
                break;
            }
        }
    }
    assert!(h.try_recv().is_none(), "an event followed the terminal one");
    c
}

pub fn run(e: &EngineHandle, req: GenerateRequest) -> Collected {
    collect(e.submit(req).expect("submit"))
}

/// Beam search straight over the fake model, no engine: each live beam's row is `row(context,
/// beam tokens)` (the log-probabilities the engine should rank), the reference the engine's
/// beam search is checked against.
pub fn reference_beam_with(
    prompt: &[u32],
    width: usize,
    max_new: usize,
    n: usize,
    row: impl Fn(&[u32], &[u32]) -> Vec<f32>,
) -> Vec<Vec<u32>> {
    use kiln_runtime::engine::beam::{BeamConfig, BeamSearch};
    let cfg =
        BeamConfig { width, length_penalty: 1.0, early_stopping: true, max_new_tokens: max_new, end_tokens: vec![EOS] };
    let mut s = BeamSearch::new(cfg, 0).unwrap();
    let mut next = 0;
    while !s.is_done() {
        let rows: std::collections::HashMap<u64, Vec<f32>> = s
            .live_keys()
            .map(|k| {
                let toks = s.tokens_of(k).unwrap();
                let mut ctx = prompt.to_vec();
                ctx.extend_from_slice(toks);
                (k, row(&ctx, toks))
            })
            .collect();
        s.step(
            |k| rows.get(&k).map(|v| v.as_slice()),
            || {
                next += 1;
                next
            },
        )
        .unwrap();
    }
    s.results(n).into_iter().map(|h| h.tokens).collect()
}
