//! The engine thread's state and its step: commands in, one scheduled model step, events out.
//!
//! One step: drop requests whose caller went away → `schedule` → copy-on-write block copies →
//! build the batch → `forward` → per sequence with logits: sample / detokenize / stop-check (or
//! feed its beam search) → `update` → close finished requests. Then [`Core::publish`] writes the
//! stats and [`Core::flush`] sends the closing events, in that order, so a caller who sees a
//! request end (or `wait_idle` return) also sees its blocks freed in `stats()`.
//!
//! Invariants:
//! - `owners` maps exactly the scheduler sequences the engine considers live to their request;
//!   every abort or finish of a sequence removes its entry at the time it happens;
//! - every sequence given logits in a step gets its sampled token in that step's `update`, or is
//!   aborted (a failed request, a detached beam), so no sequence is left awaiting a token;
//! - a failure while serving some requests (a sampling or detokenizer error, a failed model step)
//!   ends those requests with `Error` and aborts their sequences; the loop goes on.

use super::api::{Detokenizer, EngineEvent, EngineStats, SamplingPlacement};
use super::batch::BatchBuf;
use super::beam::BeamConfig;
use super::beam_group::BeamGroup;
use super::choice::Choice;
use super::constrained::Constrained;
use super::handle::{Command, Submission};
use super::kv_copy::copy_blocks;
use super::request::{Kind, RequestState, SampleGroup};
use super::shared::{lock, Shared};
use crate::model::{CausalLm, KvCache};
use crate::sample::device::SampleJob;
use crate::sample::{FinishReason, Sampled};
use crate::sched::{Request, Scheduler, SeqId, StepPlan, StepResult};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What a model step gives each sequence with logits: the row itself (sampled on the host),
/// the argmax the device picked (every row of the step plain greedy, on a GPU), or what the
/// device sampler made of each of the row's sampling jobs.
enum StepOut {
    Logits(Vec<f32>),
    Tokens(Vec<i32>),
    /// Logits row `i`'s results are `results[starts[i]..starts[i + 1]]`, one per choice that
    /// samples from it ([`super::request::SampleGroup::row_choices`] order); an error is the
    /// message that fails that choice's request (its sampling or its grammar failed).
    Sampled {
        results: Vec<Result<Sampled, String>>,
        starts: Vec<usize>,
    },
}

/// One sequence's share of a [`StepOut`].
#[derive(Clone, Copy)]
enum Row<'a> {
    Logits(&'a [f32]),
    Token(u32),
    Sampled(&'a [Result<Sampled, String>]),
}

/// One choice's share of a [`Row`].
enum Pick<'a> {
    Logits(&'a [f32]),
    Token(u32),
    Sampled(Result<Sampled, String>),
}

/// The engine's sampling policy: what was asked for, and whether the device sampler may be
/// used (asked for, or passed its start-up check on a GPU).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sampling {
    pub placement: SamplingPlacement,
    pub device_ok: bool,
}

/// How a step's tokens are chosen.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// Logits to the host, the CPU sampler (and beam search).
    Host,
    /// The device's argmax kernel: every row plain greedy, on a GPU.
    Argmax,
    /// The device sampler, one job per sampling choice (a constrained choice's job carries
    /// its grammar mask).
    Device,
}

/// How a removed request ends once the stats are published.
enum Close {
    Done(FinishReason),
    Error(String),
}

#[derive(Default)]
struct Counters {
    prompt_tokens: u64,
    finished: u64,
    failed: u64,
    steps: u64,
    model_seconds: f64,
    step_seconds: f64,
    host_sampling_steps: u64,
}

pub(crate) struct Core {
    model: Arc<dyn CausalLm>,
    detok: Arc<dyn Detokenizer>,
    pub shared: Arc<Shared>,
    kv: KvCache,
    sched: Scheduler,
    plan: StepPlan,
    batch: BatchBuf,
    requests: HashMap<u64, RequestState>,
    owners: HashMap<SeqId, u64>,
    closing: Vec<(RequestState, Close)>,
    counters: Counters,
    /// Sample KV waste every this many steps (it costs a pass over the pool).
    waste_every: u64,
    sampling: Sampling,
}

impl Core {
    pub fn new(
        model: Arc<dyn CausalLm>,
        detok: Arc<dyn Detokenizer>,
        shared: Arc<Shared>,
        kv: KvCache,
        sched: Scheduler,
        sampling: Sampling,
    ) -> Self {
        let waste_every = (sched.config().num_blocks as u64 / 4096).max(1);
        Core {
            model,
            detok,
            shared,
            kv,
            sched,
            plan: StepPlan::default(),
            batch: BatchBuf::default(),
            requests: HashMap::new(),
            owners: HashMap::new(),
            closing: Vec::new(),
            counters: Counters::default(),
            waste_every,
            sampling,
        }
    }

    pub fn has_work(&self) -> bool {
        !self.requests.is_empty() || !self.closing.is_empty()
    }

    pub fn shutting_down(&self) -> bool {
        !self.shared.accepting.load(Ordering::SeqCst)
    }

    pub fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(s) => self.admit(*s),
            Command::Abort(id) => self.abort_request(id),
            Command::AbortAll => {
                let ids: Vec<u64> = self.requests.keys().copied().collect();
                for id in ids {
                    self.abort_request(id);
                }
            }
            // `accepting` is already cleared; the loop exits once idle.
            Command::Shutdown => {}
        }
    }

    fn admit(&mut self, s: Submission) {
        let Submission { id, req, constraint, mut ticket } = s;
        if ticket.is_closed() {
            return; // the caller is gone already; dropping the ticket settles the counters
        }
        let eos = &self.shared.info.eos_token_ids;
        let p = &req.params;
        let times = &self.shared.mask_times;
        // The tokens that end a sequence of this request: where the grammar may end, only these.
        let mut ends: Vec<u32> = if p.ignore_eos { Vec::new() } else { eos.clone() };
        for &t in &p.stop_token_ids {
            if !ends.contains(&t) {
                ends.push(t);
            }
        }
        // One constraint per sequence that starts from the prompt (each choice, or the first beam).
        let start = || -> Result<Option<Constrained>, String> {
            match &constraint {
                None => Ok(None),
                Some(src) => {
                    let c = src.start(&ends).map_err(|e| e.to_string())?;
                    let mut c = Constrained::new(c, Arc::clone(times), Arc::clone(&self.shared.mask_waits));
                    c.prefetch(self.shared.info.vocab_size);
                    Ok(Some(c))
                }
            }
        };
        let kind = match &req.beam {
            None => {
                let mut choices = Vec::with_capacity(req.n);
                for i in 0..req.n {
                    let made = start()
                        .and_then(|c| Choice::new(i, p, eos, &req.prompt_ids, self.detok.stream(&req.prompt_ids), c));
                    match made {
                        Ok(c) => choices.push(c),
                        Err(message) => {
                            self.counters.failed += 1;
                            ticket.end(EngineEvent::Error { message });
                            return;
                        }
                    }
                }
                choices[0].seq = Some(SeqId(id));
                Kind::Sample(SampleGroup { choices, forked: false })
            }
            Some(b) => {
                let mut end_tokens = if p.ignore_eos { Vec::new() } else { eos.clone() };
                end_tokens.extend(p.stop_token_ids.iter().copied().filter(|t| !eos.contains(t) || p.ignore_eos));
                let cfg = BeamConfig {
                    width: b.width,
                    length_penalty: b.length_penalty,
                    early_stopping: b.early_stopping,
                    max_new_tokens: p.max_tokens,
                    end_tokens,
                };
                match start().and_then(|c| BeamGroup::new(cfg, req.n, id, c).map_err(|e| e.to_string())) {
                    Ok(g) => Kind::Beam(Box::new(g)),
                    Err(message) => {
                        self.counters.failed += 1;
                        ticket.end(EngineEvent::Error { message });
                        return;
                    }
                }
            }
        };
        let added =
            self.sched.add(Request { id: SeqId(id), prompt_ids: req.prompt_ids.clone(), max_tokens: p.max_tokens });
        if let Err(e) = added {
            self.counters.failed += 1;
            ticket.end(EngineEvent::Error { message: e.to_string() });
            return;
        }
        self.counters.prompt_tokens += req.prompt_ids.len() as u64;
        self.owners.insert(SeqId(id), id);
        self.requests
            .insert(id, RequestState { ticket, prompt: req.prompt_ids, cached_prompt_tokens: 0, started: false, kind });
    }

    /// Removes a request and frees its sequences now; it ends with `Finished(abort)` + `Done`.
    fn abort_request(&mut self, id: u64) {
        if let Some(st) = self.remove(id) {
            self.counters.finished += 1;
            self.closing.push((st, Close::Done(FinishReason::Abort)));
        }
    }

    fn fail_request(&mut self, id: u64, message: String) {
        if let Some(st) = self.remove(id) {
            self.counters.failed += 1;
            self.closing.push((st, Close::Error(message)));
        }
    }

    fn remove(&mut self, id: u64) -> Option<RequestState> {
        let st = self.requests.remove(&id)?;
        for seq in st.live_seqs() {
            let _ = self.sched.abort(seq);
        }
        self.owners.retain(|_, r| *r != id);
        Some(st)
    }

    /// Fails every request with a sequence in the current plan.
    fn fail_plan(&mut self, message: &str) {
        let mut ids: Vec<u64> = self.plan.seqs.iter().filter_map(|s| self.owners.get(&s.id).copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.fail_request(id, message.to_string());
        }
    }

    /// One engine step. Returns false when there was nothing to run.
    pub fn step(&mut self) -> bool {
        let t = std::time::Instant::now();
        let ran = self.step_inner();
        if ran {
            self.counters.step_seconds += t.elapsed().as_secs_f64();
        }
        ran
    }

    fn step_inner(&mut self) -> bool {
        let gone: Vec<u64> = self.requests.iter().filter(|(_, r)| r.ticket.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.abort_request(id);
        }
        if self.requests.is_empty() {
            return false;
        }
        self.sched.schedule_into(&mut self.plan);
        let ended: Vec<(SeqId, FinishReason)> = self.plan.finished.clone();
        for (seq, reason) in ended {
            if let Some(req) = self.owners.remove(&seq) {
                self.fail_request(req, format!("sequence {seq} ended unexpectedly ({reason})"));
            }
        }
        if self.plan.is_empty() {
            return false;
        }
        self.mark_started();
        if let Err(e) = copy_blocks(&mut self.kv, &self.plan.copies) {
            self.fail_plan(&e.to_string());
            return true;
        }
        let t_model = std::time::Instant::now();
        let logits = self.forward();
        self.counters.model_seconds += t_model.elapsed().as_secs_f64();
        self.counters.steps += 1;
        let logits = match logits {
            Ok(v) => v,
            Err(m) => {
                self.fail_plan(&format!("model step failed: {m}"));
                return true;
            }
        };
        let mut result = StepResult::default();
        let vocab = self.shared.info.vocab_size;
        let targets: Vec<(usize, SeqId)> =
            self.batch.logits_seqs.iter().enumerate().map(|(row, &i)| (row, self.plan.seqs[i].id)).collect();
        for (i, seq) in targets {
            let Some(&req) = self.owners.get(&seq) else { continue };
            let row = match &logits {
                StepOut::Logits(l) => l.get(i * vocab..(i + 1) * vocab).map(Row::Logits),
                StepOut::Tokens(t) => match t.get(i) {
                    Some(&t) if t >= 0 => Some(Row::Token(t as u32)),
                    Some(_) => {
                        self.fail_request(req, "the logits row holds a NaN or +inf, or nothing above -inf".into());
                        continue;
                    }
                    None => None,
                },
                StepOut::Sampled { results, starts } => match (starts.get(i), starts.get(i + 1)) {
                    (Some(&a), Some(&b)) => results.get(a..b).map(Row::Sampled),
                    _ => None,
                },
            };
            let Some(row) = row else {
                self.fail_request(req, "the model returned too few logits rows".into());
                continue;
            };
            if let Err(m) = self.on_logits(req, seq, row, &mut result) {
                self.fail_request(req, m);
            }
        }
        self.detach_waiting_beams();
        if let Err(e) = self.sched.update(&result) {
            self.fail_plan(&format!("internal error applying the step: {e}"));
            let mut ids: Vec<u64> = result.sampled.iter().filter_map(|(s, _)| self.owners.get(s).copied()).collect();
            ids.dedup();
            for id in ids {
                self.fail_request(id, format!("internal error applying the step: {e}"));
            }
        }
        let done: Vec<u64> = self.requests.iter().filter(|(_, r)| r.is_complete()).map(|(&id, _)| id).collect();
        for id in done {
            if let Some(st) = self.remove(id) {
                self.counters.finished += 1;
                self.closing.push((st, Close::Done(FinishReason::Stop)));
            }
        }
        #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than rust-version
        if self.counters.steps % self.waste_every == 0 {
            self.sample_waste();
        }
        true
    }

    fn mark_started(&mut self) {
        for s in &self.plan.seqs {
            let Some(r) = self.owners.get(&s.id) else { continue };
            if let Some(st) = self.requests.get_mut(r) {
                if !st.started {
                    st.started = true;
                    // A fresh sequence starts where the prefix cache left it.
                    st.cached_prompt_tokens = s.context_len;
                    st.ticket.started();
                }
            }
        }
    }

    /// Runs the model on the plan and chooses the step's tokens where [`Core::route`] says:
    /// on a GPU only token ids (and requested log-probabilities) come back, never the logits.
    fn forward(&mut self) -> Result<StepOut, String> {
        self.batch.fill(&self.plan, self.kv.block_size);
        let route = self.route();
        let seqs = self.batch.seq_attn(&self.plan);
        let batch = self.batch.batch(&self.plan, &seqs);
        let out = self.model.forward(&batch, &mut self.kv).map_err(|e| e.to_string())?;
        match route {
            Route::Host => {
                self.counters.host_sampling_steps += 1;
                out.to_host_f32().map(StepOut::Logits).map_err(|e| e.to_string())
            }
            Route::Argmax => {
                let mut ids =
                    crate::Tensor::uninit(out.device(), crate::DType::I32, 1, out.rows()).map_err(|e| e.to_string())?;
                crate::device::device_kernels::argmax_rows(&out, &mut ids).map_err(|e| e.to_string())?;
                ids.to_host::<i32>().map(StepOut::Tokens).map_err(|e| e.to_string())
            }
            Route::Device => {
                let (jobs, starts) = self.device_jobs(out.cols());
                // A job refused before sampling (a history token outside the vocabulary, a
                // grammar that failed to give its mask) keeps its error in its place; the others
                // run in one launch.
                let mut runnable: Vec<SampleJob> = Vec::with_capacity(jobs.len());
                let refused: Vec<Option<String>> =
                    jobs.into_iter().map(|j| j.map(|j| runnable.push(j)).err()).collect();
                let sampled = match crate::sample::device::sample(&out, &runnable) {
                    Ok(s) => s,
                    Err(e) => {
                        // The sampler itself failed (not a row): this step and the rest sample
                        // on the host, which reads the same logits, so no request notices.
                        self.sampling.device_ok = false;
                        *lock(&self.shared.sampling_note) =
                            format!("sampling: sampled rows on the host since the device sampler failed: {e}");
                        self.counters.host_sampling_steps += 1;
                        return out.to_host_f32().map(StepOut::Logits).map_err(|e| e.to_string());
                    }
                };
                let mut sampled = sampled.into_iter();
                let mut results = Vec::with_capacity(refused.len());
                for r in refused {
                    results.push(match r {
                        None => sampled
                            .next()
                            .ok_or("the device sampler returned too few results")?
                            .map_err(|e| e.to_string()),
                        Some(e) => Err(e),
                    });
                }
                Ok(StepOut::Sampled { results, starts })
            }
        }
    }

    /// Where this step's tokens are chosen: beam search and [`SamplingPlacement::Host`] read
    /// logits on the host; on a GPU, a step of plain greedy rows takes the argmax kernel and any
    /// other mix (constrained rows included: their masks go up with their jobs) the device
    /// sampler, when it may be used; on the CPU the host samples unless the device path was
    /// asked for.
    fn route(&self) -> Route {
        let groups = || {
            self.batch.logits_seqs.iter().filter_map(|&i| {
                let seq = self.plan.seqs[i].id;
                self.owners.get(&seq).and_then(|r| self.requests.get(r)).map(|st| &st.kind)
            })
        };
        if self.sampling.placement == SamplingPlacement::Host || groups().any(|k| matches!(k, Kind::Beam(_))) {
            return Route::Host;
        }
        let plain = |k: &Kind| matches!(k, Kind::Sample(g) if g.choices.iter().all(|c| c.plain_greedy()));
        if !self.model.device().is_cpu() && groups().all(plain) {
            return Route::Argmax;
        }
        if self.sampling.device_ok {
            Route::Device
        } else {
            Route::Host
        }
    }

    /// One device-sampler job per choice that samples this step, in logits-row order, and
    /// where each row's jobs start (`starts` has one more entry than there are rows). A
    /// constrained choice's mask is computed here, for its job.
    fn device_jobs(&mut self, vocab: usize) -> (Vec<Result<SampleJob, String>>, Vec<usize>) {
        let Core { batch, plan, owners, requests, .. } = self;
        let mut jobs = Vec::new();
        let mut starts = Vec::with_capacity(batch.logits_seqs.len() + 1);
        starts.push(0);
        for (row, &i) in batch.logits_seqs.iter().enumerate() {
            let seq = plan.seqs[i].id;
            if let Some(Kind::Sample(g)) = owners.get(&seq).and_then(|r| requests.get_mut(r)).map(|st| &mut st.kind) {
                for c in g.row_choices(seq) {
                    jobs.push(g.choices[c].device_job(vocab, row));
                }
            }
            starts.push(jobs.len());
        }
        (jobs, starts)
    }

    /// Feeds one sequence's logits (or device-picked token) to its request.
    fn on_logits(&mut self, req: u64, seq: SeqId, logits: Row<'_>, result: &mut StepResult) -> Result<(), String> {
        let Core { requests, sched, owners, shared, .. } = self;
        let st = requests.get_mut(&req).ok_or_else(|| format!("no request {req}"))?;
        let RequestState { ticket, prompt, kind, .. } = st;
        match kind {
            Kind::Sample(g) => {
                let picks = g.row_choices(seq);
                if picks.is_empty() {
                    return Err(format!("no live choice for sequence {seq}"));
                }
                if !g.forked {
                    // First logits of the prompt: the other choices fork from it (copy-on-write,
                    // so the prompt's KV is stored once) and all sample from these logits.
                    g.forked = true;
                    for c in g.choices.iter_mut().skip(1) {
                        let child = SeqId(shared.new_seq_id());
                        sched.fork(seq, child).map_err(|e| format!("forking choice {}: {e}", c.index))?;
                        c.seq = Some(child);
                        owners.insert(child, req);
                    }
                }
                for (j, c) in picks.enumerate() {
                    let pick = match logits {
                        Row::Logits(l) => Pick::Logits(l),
                        Row::Token(t) => Pick::Token(t),
                        Row::Sampled(rs) => {
                            Pick::Sampled(rs.get(j).cloned().ok_or("the device sampler returned too few results")?)
                        }
                    };
                    advance(&mut g.choices[c], pick, ticket, owners, result)?;
                }
            }
            Kind::Beam(b) => {
                let Row::Logits(logits) = logits else { return Err("beam search needs the logits on the host".into()) };
                b.on_logits(seq.0, logits)?;
                if b.ready() {
                    let remap = b.step(prompt, sched, result, || shared.new_seq_id())?;
                    for k in remap.removed {
                        owners.remove(&SeqId(k));
                    }
                    for k in remap.added {
                        owners.insert(SeqId(k), req);
                    }
                }
            }
        }
        Ok(())
    }

    fn detach_waiting_beams(&mut self) {
        let Core { requests, sched, owners, .. } = self;
        for st in requests.values_mut() {
            if let Kind::Beam(b) = &mut st.kind {
                for k in b.detach_waiting(sched) {
                    owners.remove(&SeqId(k));
                }
            }
        }
    }

    fn sample_waste(&mut self) {
        let of_pool = self.sched.kv_waste();
        let kv = self.sched.kv_stats();
        let of_used = if kv.used_blocks > 0 { of_pool * kv.total_blocks as f64 / kv.used_blocks as f64 } else { 0.0 };
        if kv.used_blocks > 0 {
            lock(&self.shared.waste).add(of_pool, of_used);
        }
    }

    /// Writes the counters callers read with `stats()`.
    pub fn publish(&self) {
        let s = self.sched.stats();
        let stats = EngineStats {
            running: s.running,
            waiting: s.waiting,
            kv_blocks_used: s.kv.used_blocks,
            kv_blocks_total: s.kv.total_blocks,
            preemptions: s.preemptions,
            prefix_cache_hit_tokens: s.kv.prefix_hit_tokens,
            prompt_tokens_total: self.counters.prompt_tokens,
            generation_tokens_total: s.generation_tokens,
            requests_finished_total: self.counters.finished,
            requests_failed_total: self.counters.failed,
            steps: self.counters.steps,
            model_seconds: self.counters.model_seconds,
            step_seconds: self.counters.step_seconds,
            masks: lock(&self.shared.mask_times).summary(),
            mask_waits: lock(&self.shared.mask_waits).summary(),
            host_sampling_steps: self.counters.host_sampling_steps,
        };
        *lock(&self.shared.stats) = stats;
    }

    /// Sends the closing events of the requests removed since the last flush.
    pub fn flush(&mut self) {
        for (mut st, close) in self.closing.drain(..) {
            match close {
                Close::Done(reason) => st.close(reason, self.detok.as_ref()),
                Close::Error(m) => st.fail(m),
            }
        }
    }

    /// After a panic the state may be inconsistent: end every request with `Error` without
    /// touching the scheduler.
    pub fn fail_all(&mut self, message: &str) {
        self.counters.failed += self.requests.len() as u64;
        for (_, mut st) in self.requests.drain() {
            st.fail(message.to_string());
        }
        for (mut st, _) in self.closing.drain(..) {
            st.fail(message.to_string());
        }
    }
}

/// Samples choice `c`'s next token, streams its event and records it for `update`.
fn advance(
    c: &mut Choice,
    pick: Pick<'_>,
    ticket: &super::shared::Ticket,
    owners: &mut HashMap<SeqId, u64>,
    result: &mut StepResult,
) -> Result<(), String> {
    let seq = c.seq.ok_or_else(|| format!("choice {} has no sequence", c.index))?;
    let a = match pick {
        Pick::Logits(l) => c.advance(l)?,
        Pick::Token(t) => c.advance_with(t)?,
        Pick::Sampled(s) => c.advance_sampled(s)?,
    };
    ticket.send(a.event);
    result.sampled.push((seq, a.token));
    if let Some(reason) = a.finished {
        result.finished.push((seq, reason));
        ticket.send(c.finished_event(String::new()));
        owners.remove(&seq);
    }
    Ok(())
}
