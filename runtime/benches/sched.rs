//! Scheduler + allocator overhead per engine step: `schedule_into` + `update` with 256 running
//! sequences decoding (context 512 tokens and growing, block size 16, prefix caching on and
//! off). Target: <= 50 us per step. The engine's own work (the model) is not included; the plan
//! buffers are reused across steps, as the engine does.
//!
//! Each measured batch of steps runs on a scheduler prepared outside the timing (prefill done),
//! renewed every `STEPS_PER_SETUP` steps so the sequences stay near their starting length.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_runtime::sched::{Request, Scheduler, SchedulerConfig, SeqId, StepPlan, StepResult};

const SEQS: usize = 256;
const PROMPT: usize = 512;
const STEPS_PER_SETUP: u64 = 512;

fn config(caching: bool) -> SchedulerConfig {
    SchedulerConfig {
        max_batched_tokens: 8192,
        max_num_seqs: SEQS,
        max_model_len: 1 << 20,
        block_size: 16,
        // Room for every sequence to grow by STEPS_PER_SETUP tokens without preemption.
        num_blocks: SEQS * (PROMPT + STEPS_PER_SETUP as usize + 80) / 16,
        enable_prefix_caching: caching,
        max_queue: 1024,
    }
}

/// One decode step's engine result: a token for every sequence that asked for logits.
fn fake_result(plan: &StepPlan, result: &mut StepResult) {
    result.sampled.clear();
    result.sampled.extend(plan.seqs.iter().filter(|s| s.needs_logits).map(|s| (s.id, 7)));
}

/// A scheduler whose `SEQS` sequences have finished prefill, with `plan` holding the first step
/// in which all of them decode (scheduled, not yet updated).
fn prepared(caching: bool, plan: &mut StepPlan, result: &mut StepResult) -> Scheduler {
    let mut s = Scheduler::new(config(caching)).expect("valid config");
    for i in 0..SEQS {
        // Distinct prompts: no prefix hits, every block is a sequence's own.
        let prompt_ids =
            (0..PROMPT as u32).map(|p| p.wrapping_mul(31).wrapping_add(i as u32 * 7919) % 50_000).collect();
        s.add(Request { id: SeqId(i as u64), prompt_ids, max_tokens: STEPS_PER_SETUP as usize + 64 }).expect("fits");
    }
    loop {
        s.schedule_into(plan);
        if plan.seqs.len() == SEQS && plan.seqs.iter().all(|q| q.tokens.len() == 1) {
            return s;
        }
        fake_result(plan, result);
        s.update(result).expect("consistent result");
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_step");
    for caching in [true, false] {
        let name = format!("decode_{SEQS}_seqs_ctx{PROMPT}_prefix_cache_{}", if caching { "on" } else { "off" });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut plan = StepPlan::default();
                let mut result = StepResult::default();
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let mut s = prepared(caching, &mut plan, &mut result);
                    fake_result(&plan, &mut result);
                    let n = STEPS_PER_SETUP.min(iters - done);
                    for _ in 0..n {
                        let t = Instant::now();
                        s.update(&result).expect("consistent result");
                        s.schedule_into(&mut plan);
                        total += t.elapsed();
                        assert_eq!(plan.seqs.len(), SEQS);
                        fake_result(&plan, &mut result);
                    }
                    black_box(&plan);
                    done += n;
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
