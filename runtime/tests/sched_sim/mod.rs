//! Test support: a fake model engine over a fake paged KV memory, and a driver that runs the
//! scheduler against it.
//!
//! The fake model is deterministic and *cache-dependent* like a real one: the "KV" written at
//! position p is `kv(value at p-1 read from the cache, token p)`, and the next token is a
//! function of the last value. So a wrong slot, a missed copy-on-write copy, a stale prefix hit
//! or a bad recompute after preemption changes the output. On top of that, every step the engine
//! checks, for every scheduled sequence, that the plan's tokens and positions are the sequence's
//! own and that every cached position holds exactly the value its true token history implies;
//! and it refuses to read, within one step, a slot that another sequence wrote in that step (a
//! real engine gives no order between sequences of one batch).
#![allow(dead_code)]

use std::collections::HashMap;

use kiln_runtime::kv::TokenId;
use kiln_runtime::sample::FinishReason;
use kiln_runtime::sched::{Request, Scheduler, SchedulerConfig, SeqId, StepPlan, StepResult};

pub const SEED: u64 = 0x5EED;

pub fn kv(prev: u64, token: TokenId) -> u64 {
    let mut x = prev ^ (token as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

pub fn next_token(v: u64, vocab: u32) -> TokenId {
    ((v >> 17) % vocab as u64) as TokenId
}

/// What the model generates for `prompt` run alone (greedy), stopping at `max_tokens` or `eos`.
/// `first` overrides the first sampled token (a forked child's different sample).
pub fn reference(
    prompt: &[TokenId],
    max_tokens: usize,
    vocab: u32,
    eos: Option<TokenId>,
    first: Option<TokenId>,
) -> Vec<TokenId> {
    let mut v = SEED;
    for &t in prompt {
        v = kv(v, t);
    }
    let mut out = Vec::new();
    loop {
        let t = match (out.is_empty(), first) {
            (true, Some(f)) => f,
            _ => next_token(v, vocab),
        };
        out.push(t);
        if out.len() >= max_tokens || Some(t) == eos {
            return out;
        }
        v = kv(v, t);
    }
}

pub struct FakeEngine {
    pub block_size: usize,
    pub vocab: u32,
    pub eos: Option<TokenId>,
    mem: Vec<Option<u64>>,
    /// Per slot: (step, writer) of the last write.
    stamp: Vec<(u64, SeqId)>,
    step: u64,
    /// Each live sequence's true tokens (prompt + sampled).
    pub history: HashMap<SeqId, Vec<TokenId>>,
}

impl FakeEngine {
    pub fn new(cfg: &SchedulerConfig, vocab: u32, eos: Option<TokenId>) -> Self {
        let slots = cfg.num_blocks * cfg.block_size;
        Self {
            block_size: cfg.block_size,
            vocab,
            eos,
            mem: vec![None; slots],
            stamp: vec![(0, SeqId(u64::MAX)); slots],
            step: 0,
            history: HashMap::new(),
        }
    }

    fn read(&self, flat: usize, reader: SeqId) -> u64 {
        let (step, writer) = self.stamp[flat];
        assert!(
            step != self.step || writer == reader,
            "seq {reader} reads slot {flat} written in this same step by seq {writer}"
        );
        self.mem[flat].unwrap_or_else(|| panic!("seq {reader} reads never-written slot {flat}"))
    }

    /// Runs one plan: copies, then each sequence's tokens, then samples where asked.
    pub fn run(&mut self, plan: &StepPlan) -> StepResult {
        self.step += 1;
        let bs = self.block_size;
        for c in &plan.copies {
            for o in 0..bs {
                let (s, d) = (c.src.index() * bs + o, c.dst.index() * bs + o);
                self.mem[d] = self.mem[s];
                self.stamp[d] = self.stamp[s];
            }
        }
        let mut result = StepResult::default();
        for s in &plan.seqs {
            let hist = self.history.get(&s.id).unwrap_or_else(|| panic!("plan names unknown seq {}", s.id)).clone();
            let toks = plan.tokens_of(s);
            let pos = plan.positions_of(s);
            let slots = plan.slots_of(s);
            let table = plan.block_table_of(s);
            let n = toks.len();
            assert!(n > 0 && pos.len() == n && slots.len() == n);
            assert_eq!(toks, &hist[s.context_len..s.context_len + n], "seq {}: plan tokens are not its own", s.id);
            assert_eq!(table.len(), (s.context_len + n).div_ceil(bs), "seq {}: block table length", s.id);
            for k in 0..n {
                let p = pos[k] as usize;
                assert_eq!(p, s.context_len + k);
                assert_eq!(slots[k].block, table[p / bs]);
                assert_eq!(slots[k].offset as usize, p % bs);
                let prev = if p == 0 { SEED } else { self.read(table[(p - 1) / bs].index() * bs + (p - 1) % bs, s.id) };
                let flat = slots[k].flat(bs);
                self.mem[flat] = Some(kv(prev, toks[k]));
                self.stamp[flat] = (self.step, s.id);
            }
            // The whole context must hold exactly what the true history implies.
            let mut v = SEED;
            for p in 0..s.context_len + n {
                v = kv(v, hist[p]);
                let flat = table[p / bs].index() * bs + p % bs;
                assert_eq!(self.mem[flat], Some(v), "seq {}: wrong KV at position {p}", s.id);
            }
            if s.needs_logits {
                assert_eq!(s.context_len + n, hist.len(), "seq {}: logits asked before the last token", s.id);
                let t = next_token(v, self.vocab);
                result.sampled.push((s.id, t));
                if Some(t) == self.eos {
                    result.finished.push((s.id, FinishReason::Stop));
                }
            } else {
                assert!(s.context_len + n < hist.len());
            }
        }
        result
    }
}

/// One request of a workload and what became of it.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub prompt: Vec<TokenId>,
    pub max_tokens: usize,
    /// The sampled first token, when it was forced (forked children).
    pub first: Option<TokenId>,
    pub output: Vec<TokenId>,
    pub finish: Option<FinishReason>,
}

/// Drives a scheduler and a fake engine, checking the step-level guarantees every step.
pub struct Sim {
    pub sched: Scheduler,
    pub engine: FakeEngine,
    pub cfg: SchedulerConfig,
    pub reqs: HashMap<SeqId, Tracked>,
    pub steps: usize,
    pub max_step_tokens: usize,
    pub max_running: usize,
    pub peak_waste: f64,
}

impl Sim {
    pub fn new(cfg: SchedulerConfig, vocab: u32, eos: Option<TokenId>) -> Self {
        Self {
            sched: Scheduler::new(cfg).unwrap(),
            engine: FakeEngine::new(&cfg, vocab, eos),
            cfg,
            reqs: HashMap::new(),
            steps: 0,
            max_step_tokens: 0,
            max_running: 0,
            peak_waste: 0.0,
        }
    }

    pub fn add(
        &mut self,
        id: u64,
        prompt: Vec<TokenId>,
        max_tokens: usize,
    ) -> Result<(), kiln_runtime::sched::AdmissionError> {
        let id = SeqId(id);
        self.sched.add(Request { id, prompt_ids: prompt.clone(), max_tokens })?;
        self.engine.history.insert(id, prompt.clone());
        self.reqs.insert(id, Tracked { prompt, max_tokens, first: None, output: Vec::new(), finish: None });
        Ok(())
    }

    pub fn abort(&mut self, id: u64) {
        if self.sched.abort(SeqId(id)).is_ok() {
            self.engine.history.remove(&SeqId(id));
        }
    }

    /// Schedules and runs one plan, checking the step-level guarantees; returns the plan and the
    /// engine's result, not yet applied (see [`Self::commit`]).
    pub fn begin(&mut self) -> (StepPlan, StepResult) {
        let plan = self.sched.schedule();
        self.steps += 1;
        assert!(plan.num_tokens() <= self.cfg.max_batched_tokens, "token budget exceeded");
        self.max_step_tokens = self.max_step_tokens.max(plan.num_tokens());
        let st = self.sched.stats();
        assert!(st.running <= self.cfg.max_num_seqs, "max_num_seqs exceeded");
        self.max_running = self.max_running.max(st.running);
        self.peak_waste = self.peak_waste.max(self.sched.kv_waste());
        self.sched.check_invariants().unwrap();
        for &(id, reason) in &plan.finished {
            if let Some(t) = self.reqs.get_mut(&id) {
                assert!(t.finish.is_none(), "seq {id} finished twice");
                t.finish = Some(reason);
            }
            self.engine.history.remove(&id);
        }
        let result = self.engine.run(&plan);
        (plan, result)
    }

    /// Forks `child` off `parent` between a step's run and its update (n > 1 sampling): the
    /// child's first token is `token` instead of the parent's.
    pub fn fork_at_first_sample(&mut self, result: &mut StepResult, parent: u64, child: u64, token: TokenId) {
        let (p, c) = (SeqId(parent), SeqId(child));
        self.sched.fork(p, c).unwrap();
        let h = self.engine.history[&p].clone();
        self.engine.history.insert(c, h);
        let t = self.reqs[&p].clone();
        assert!(t.output.is_empty(), "only forks at the first sample are modelled");
        self.reqs.insert(c, Tracked { first: Some(token), finish: None, ..t });
        result.sampled.push((c, token));
        if Some(token) == self.engine.eos {
            result.finished.push((c, FinishReason::Stop));
        }
    }

    /// Applies the engine's result.
    pub fn commit(&mut self, result: &StepResult) {
        for &(id, tok) in &result.sampled {
            if let Some(h) = self.engine.history.get_mut(&id) {
                h.push(tok);
                self.reqs.get_mut(&id).unwrap().output.push(tok);
            }
        }
        self.sched.update(result).unwrap();
        self.sched.check_invariants().unwrap();
    }

    pub fn step(&mut self) -> StepPlan {
        let (plan, result) = self.begin();
        self.commit(&result);
        plan
    }

    /// Steps until the scheduler is idle and every finish is reported; panics past `max_steps`.
    pub fn run_to_end(&mut self, max_steps: usize) {
        let start = self.steps;
        while !self.sched.is_idle() || self.reqs.values().any(|t| t.finish.is_none()) {
            assert!(self.steps - start < max_steps, "no progress after {max_steps} steps: {:?}", self.sched.stats());
            self.step();
        }
    }

    /// The output every finished, non-aborted request must have: what it generates alone.
    pub fn check_outputs_match_reference(&self) {
        for (id, t) in &self.reqs {
            let want = reference(&t.prompt, t.max_tokens, self.engine.vocab, self.engine.eos, t.first);
            match t.finish {
                Some(FinishReason::Abort) => {
                    assert_eq!(t.output[..], want[..t.output.len()], "seq {id} (aborted)")
                }
                Some(_) => assert_eq!(t.output, want, "seq {id}"),
                None => panic!("seq {id} never finished"),
            }
        }
    }

    /// All blocks back: nothing referenced, free + cached == total.
    pub fn check_pool_returned(&self) {
        let kv = self.sched.kv_stats();
        assert_eq!(kv.used_blocks, 0, "blocks still referenced");
        assert_eq!(kv.free_blocks + kv.cached_blocks, kv.total_blocks);
        self.sched.check_invariants().unwrap();
    }
}

pub fn config(
    max_batched_tokens: usize,
    max_num_seqs: usize,
    block_size: usize,
    num_blocks: usize,
    caching: bool,
) -> SchedulerConfig {
    SchedulerConfig {
        max_batched_tokens,
        max_num_seqs,
        max_model_len: 4096,
        block_size,
        num_blocks,
        enable_prefix_caching: caching,
        max_queue: 1024,
    }
}

/// A prompt of `len` tokens, the first `shared` from a common template (prefix-cache hits).
pub fn prompt(seed: u64, len: usize, shared: usize, vocab: u32) -> Vec<TokenId> {
    (0..len)
        .map(|p| {
            let s = if p < shared { 0xC0FFEE } else { seed };
            (kv(s, p as u32) % vocab as u64) as TokenId
        })
        .collect()
}
