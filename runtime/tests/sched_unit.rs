//! Unit tests of the scheduler's documented behaviours: admission errors and their messages,
//! chunked prefill, prefix-cache hits, aborts at each phase, forks with copy-on-write, preemption
//! of a fork for an older prefill, and the validation of step results. The fake engine
//! (`sched_sim`) checks every plan's slots and KV content.

mod sched_sim;

use kiln_runtime::sample::FinishReason;
use kiln_runtime::sched::{AdmissionError, Request, SchedError, Scheduler, SchedulerConfig, SeqId, StepResult};
use sched_sim::{config, prompt, reference, Sim};

fn req(id: u64, len: usize, max_tokens: usize) -> Request {
    Request { id: SeqId(id), prompt_ids: vec![1; len], max_tokens }
}

#[test]
fn admission_errors_carry_the_numbers() {
    let cfg = SchedulerConfig { max_model_len: 100, ..config(16, 4, 16, 4, true) };
    let mut s = Scheduler::new(cfg).unwrap();
    let e = s.add(req(1, 90, 20)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "request 1: prompt (90 tokens) + max_tokens (20) = 110 tokens exceeds the model's context length of 100 tokens"
    );
    assert!(!e.is_overload());
    // 60 + 20 - 1 = 79 tokens of KV need 5 blocks of 16; the pool has 4 (64 tokens).
    let e = s.add(req(2, 60, 20)).unwrap_err();
    assert_eq!(
        e,
        AdmissionError::ExceedsKvPool { id: SeqId(2), tokens: 79, needed_blocks: 5, total_blocks: 4, block_size: 16 }
    );
    assert_eq!(
        e.to_string(),
        "request 2: 79 tokens of KV need 5 blocks of 16, but the whole KV cache has 4 blocks (64 tokens)"
    );
    // Exactly the whole pool is fine: 60 + 5 - 1 = 64.
    s.add(req(3, 60, 5)).unwrap();
    assert_eq!(s.add(req(3, 2, 2)), Err(AdmissionError::DuplicateId { id: SeqId(3) }));
    assert_eq!(s.add(req(4, 0, 2)), Err(AdmissionError::EmptyPrompt { id: SeqId(4) }));
    assert_eq!(s.add(req(5, 2, 0)), Err(AdmissionError::ZeroMaxTokens { id: SeqId(5) }));
    assert_eq!(s.stats().waiting, 1);
    assert_eq!(s.stats().prompt_tokens, 60);
}

#[test]
fn full_queue_is_overload_and_clears() {
    let cfg = SchedulerConfig { max_queue: 2, ..config(4, 1, 4, 8, false) };
    let mut s = Scheduler::new(cfg).unwrap();
    s.add(req(1, 3, 1)).unwrap();
    s.add(req(2, 3, 1)).unwrap();
    let e = s.add(req(3, 3, 1)).unwrap_err();
    assert_eq!(e, AdmissionError::QueueFull { waiting: 2, max_queue: 2 });
    assert!(e.is_overload());
    assert!(e.to_string().contains("2 requests are waiting (limit 2)"));
    s.schedule(); // admits request 1: one slot frees up in the queue
    s.add(req(3, 3, 1)).unwrap();
}

#[test]
fn bad_configs_are_refused() {
    let e = Scheduler::new(config(2, 4, 16, 8, true)).unwrap_err();
    assert!(e.to_string().contains("`max_batched_tokens` (2) is below `max_num_seqs` (4)"), "{e}");
    let e = Scheduler::new(SchedulerConfig { max_queue: 0, ..config(8, 4, 16, 8, true) }).unwrap_err();
    assert!(e.to_string().contains("`max_queue` is 0"), "{e}");
    let e = Scheduler::new(config(8, 4, 0, 8, true)).unwrap_err();
    assert!(matches!(e, SchedError::InvalidConfig(m) if m.contains("block_size")));
}

#[test]
fn long_prompt_is_chunked_while_a_stream_keeps_decoding() {
    let mut sim = Sim::new(config(8, 2, 4, 64, false), 64, None);
    sim.add(1, prompt(1, 3, 0, 64), 40).unwrap();
    sim.step(); // request 1's prefill
    sim.add(2, prompt(2, 30, 0, 64), 2).unwrap();
    let mut chunks = Vec::new();
    loop {
        let plan = sim.step();
        // The stream decodes every step, first in the plan.
        assert_eq!(plan.seqs[0].id, SeqId(1));
        assert_eq!(plan.seqs[0].tokens.len(), 1);
        assert!(plan.seqs[0].needs_logits);
        let Some(p) = plan.seqs.iter().find(|s| s.id == SeqId(2)) else {
            break;
        };
        chunks.push((p.context_len, p.tokens.len(), p.needs_logits));
        if p.needs_logits {
            break;
        }
    }
    // 30 prompt tokens in chunks of 7 (8 minus the stream's decode token).
    assert_eq!(chunks, vec![(0, 7, false), (7, 7, false), (14, 7, false), (21, 7, false), (28, 2, true)]);
    sim.run_to_end(100);
    sim.check_outputs_match_reference();
    sim.check_pool_returned();
}

#[test]
fn shared_prefix_hits_the_cache_and_is_counted() {
    let mut sim = Sim::new(config(64, 4, 4, 64, true), 64, None);
    let a = prompt(1, 40, 32, 64);
    sim.add(1, a.clone(), 3).unwrap();
    sim.run_to_end(20);
    assert_eq!(sim.sched.stats().kv.prefix_hit_tokens, 0);
    // Same first 32 tokens: 8 blocks reused, only the tail runs.
    sim.add(2, prompt(2, 37, 32, 64), 3).unwrap();
    let plan = sim.step();
    assert_eq!((plan.seqs[0].context_len, plan.seqs[0].tokens.len()), (32, 5));
    assert_eq!(sim.sched.stats().kv.prefix_hit_tokens, 32);
    sim.run_to_end(20);
    // The identical prompt (a multiple of the block size) reuses all but its last block: the
    // model must still run one token for the logits.
    sim.add(3, a, 3).unwrap();
    let plan = sim.step();
    assert_eq!((plan.seqs[0].context_len, plan.seqs[0].tokens.len()), (36, 4));
    assert_eq!(sim.sched.stats().kv.prefix_hit_tokens, 32 + 36);
    sim.run_to_end(20);
    sim.check_outputs_match_reference();
    sim.check_pool_returned();
}

#[test]
fn abort_mid_prefill_and_mid_decode_frees_everything() {
    for caching in [false, true] {
        let mut sim = Sim::new(config(8, 2, 4, 32, caching), 64, None);
        sim.add(2, prompt(2, 3, 0, 64), 20).unwrap();
        sim.add(1, prompt(1, 30, 0, 64), 20).unwrap();
        sim.step();
        sim.step();
        let kv = sim.sched.kv_stats();
        assert!(kv.used_blocks > 0);
        // Request 1 is mid-prefill (5 + 7 of 30 tokens), request 2 is decoding.
        assert_eq!(sim.sched.output_tokens(SeqId(1)), Some(&[][..]));
        assert_eq!(sim.sched.output_tokens(SeqId(2)).map(|o| o.len()), Some(2));
        sim.abort(1);
        sim.abort(2);
        assert_eq!(sim.sched.abort(SeqId(2)), Err(SchedError::UnknownSequence(SeqId(2))));
        let kv = sim.sched.kv_stats();
        assert_eq!(kv.used_blocks, 0);
        assert_eq!(kv.free_blocks + kv.cached_blocks, kv.total_blocks);
        if !caching {
            assert_eq!(kv.free_blocks, kv.total_blocks);
        }
        let plan = sim.step();
        assert!(plan.is_empty());
        let mut fin = plan.finished.clone();
        fin.sort_by_key(|f| f.0);
        assert_eq!(fin, vec![(SeqId(1), FinishReason::Abort), (SeqId(2), FinishReason::Abort)]);
        assert!(sim.sched.is_idle());
        sim.check_outputs_match_reference();
        sim.check_pool_returned();
    }
}

#[test]
fn abort_between_schedule_and_update_ignores_the_late_sample() {
    let mut sim = Sim::new(config(8, 2, 4, 32, true), 64, None);
    sim.add(1, prompt(1, 5, 0, 64), 10).unwrap();
    let (_, result) = sim.begin();
    assert_eq!(result.sampled.len(), 1);
    sim.sched.abort(SeqId(1)).unwrap();
    sim.engine.history.remove(&SeqId(1));
    sim.commit(&result);
    assert_eq!(sim.sched.kv_stats().used_blocks, 0);
    sim.run_to_end(5);
    assert_eq!(sim.reqs[&SeqId(1)].finish, Some(FinishReason::Abort));
}

#[test]
fn inconsistent_results_are_refused_without_effect() {
    let mut s = Scheduler::new(config(8, 2, 4, 32, false)).unwrap();
    s.add(Request { id: SeqId(2), prompt_ids: vec![4; 2], max_tokens: 5 }).unwrap();
    s.add(Request { id: SeqId(1), prompt_ids: vec![3; 20], max_tokens: 5 }).unwrap();
    let plan = s.schedule();
    assert!(!plan.seqs.iter().find(|x| x.id == SeqId(1)).unwrap().needs_logits); // only a chunk
    let before = s.stats();
    let bad = StepResult { sampled: vec![(SeqId(1), 7)], finished: vec![] };
    assert_eq!(s.update(&bad), Err(SchedError::UnexpectedSample(SeqId(1))));
    let s2 = plan.seqs.iter().find(|x| x.id == SeqId(2)).unwrap();
    assert!(s2.needs_logits);
    let dup = StepResult { sampled: vec![(SeqId(2), 7), (SeqId(2), 8)], finished: vec![] };
    assert_eq!(s.update(&dup), Err(SchedError::DuplicateSample(SeqId(2))));
    assert_eq!(s.stats(), before);
    assert_eq!(s.output_tokens(SeqId(2)), Some(&[][..]));
    // Unknown ids are ignored (they may have been aborted while the step ran).
    let ok = StepResult { sampled: vec![(SeqId(9), 1), (SeqId(2), 7)], finished: vec![(SeqId(8), FinishReason::Stop)] };
    s.update(&ok).unwrap();
    assert_eq!(s.output_tokens(SeqId(2)), Some(&[7][..]));
    s.check_invariants().unwrap();
}

#[test]
fn engine_stop_and_length_finish_and_are_reported() {
    let mut sim = Sim::new(config(16, 4, 4, 32, false), 64, None);
    sim.add(1, prompt(1, 4, 0, 64), 3).unwrap();
    sim.add(2, prompt(2, 4, 0, 64), 50).unwrap();
    let (_, mut result) = sim.begin();
    result.finished.push((SeqId(2), FinishReason::Stop));
    sim.commit(&result);
    sim.run_to_end(10);
    assert_eq!(sim.reqs[&SeqId(1)].finish, Some(FinishReason::Length));
    assert_eq!(sim.reqs[&SeqId(1)].output.len(), 3);
    assert_eq!(sim.reqs[&SeqId(2)].finish, Some(FinishReason::Stop));
    assert_eq!(sim.reqs[&SeqId(2)].output.len(), 1);
    let st = sim.sched.stats();
    assert_eq!((st.prompt_tokens, st.generation_tokens), (8, 4));
    sim.check_pool_returned();
}

#[test]
fn n_greater_than_one_shares_the_prompt_copy_on_write() {
    let mut sim = Sim::new(config(16, 4, 4, 32, false), 64, None);
    sim.add(1, prompt(1, 10, 0, 64), 6).unwrap();
    let (_, mut result) = sim.begin();
    let tok = result.sampled[0].1;
    sim.fork_at_first_sample(&mut result, 1, 2, (tok + 1) % 64);
    sim.fork_at_first_sample(&mut result, 1, 3, (tok + 2) % 64);
    sim.commit(&result);
    // The prompt's 3 blocks are held by all three sequences.
    assert_eq!(sim.sched.kv_stats().used_blocks, 3);
    let plan = sim.step();
    // The shared last block (2 of 4 slots used) is copied for two of the three writers.
    assert_eq!(plan.copies.len(), 2);
    assert_eq!(sim.sched.kv_stats().used_blocks, 5);
    sim.run_to_end(20);
    sim.check_outputs_match_reference();
    let outs: Vec<_> = (1..=3).map(|i| sim.reqs[&SeqId(i)].output.clone()).collect();
    assert_eq!(outs[1], reference(&prompt(1, 10, 0, 64), 6, 64, None, Some((tok + 1) % 64)));
    assert!(outs[0] != outs[1] && outs[1] != outs[2]);
    sim.check_pool_returned();
}

#[test]
fn an_older_prefill_preempts_a_fork_already_scheduled_to_decode() {
    // Block size 2, 4 blocks, budget 5. Step 1: P (1 token) and S (4 of 6 tokens) run; P forks
    // C. Step 2: P's decode copies the shared block (the last free one), C decodes in place,
    // then S needs a block: C, the newest, is preempted and its decode is taken back.
    let mut sim = Sim::new(config(5, 3, 2, 4, true), 64, None);
    sim.add(1, vec![7], 4).unwrap();
    sim.add(2, prompt(9, 6, 0, 64), 1).unwrap();
    let (plan, mut result) = sim.begin();
    assert_eq!(plan.num_tokens(), 5);
    let tok = result.sampled[0].1;
    sim.fork_at_first_sample(&mut result, 1, 3, (tok + 1) % 64);
    sim.commit(&result);
    let plan = sim.step();
    assert_eq!(plan.preempted, vec![SeqId(3)]);
    assert!(plan.seqs.iter().all(|s| s.id != SeqId(3)), "the preempted fork's decode was taken back");
    assert_eq!(plan.copies.len(), 1, "only P's copy remains");
    assert!(plan.seqs.iter().any(|s| s.id == SeqId(2) && s.needs_logits));
    sim.run_to_end(50);
    sim.check_outputs_match_reference();
    assert_eq!(sim.sched.stats().preemptions, 1);
    sim.check_pool_returned();
}
