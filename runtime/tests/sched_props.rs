//! Property tests of the scheduler against the fake engine (see `sched_sim`): random arrivals,
//! lengths, shared prefixes and aborts, with tiny KV pools. Every step: the token budget and
//! `max_num_seqs` hold, every invariant holds, and the engine finds every sequence's KV exactly
//! where its history says. At the end: every accepted request finished (or was aborted) within a
//! bound on steps, its output equals what it generates alone (batching invariance, through
//! chunking, prefix hits and preemption), requests were refused at admission exactly when they
//! can never fit, and all blocks are back.

mod sched_sim;

use kiln_runtime::sample::FinishReason;
use kiln_runtime::sched::{AdmissionError, SeqId};
use proptest::prelude::*;
use sched_sim::{config, prompt, Sim};

#[derive(Debug, Clone)]
struct Arrival {
    step: usize,
    len: usize,
    shared: usize,
    max_tokens: usize,
    abort_after: Option<usize>,
    /// Sequences sampled from the prompt (`n`): `n - 1` forks at the first sample.
    n: usize,
}

fn arrival(max_n: usize) -> impl Strategy<Value = Arrival> {
    (0..30usize, 1..60usize, 0..48usize, 1..30usize, prop::option::weighted(0.2, 0..40usize), 1..=max_n).prop_map(
        |(step, len, shared, max_tokens, abort_after, n)| Arrival { step, len, shared, max_tokens, abort_after, n },
    )
}

/// Child `j` of request `i`.
fn child_id(i: usize, j: usize) -> u64 {
    ((j as u64) << 32) | i as u64
}

struct Outcome {
    preemptions: u64,
    hits: u64,
    rejected: usize,
}

#[allow(clippy::too_many_arguments)]
fn drive(
    bs: usize,
    num_blocks: usize,
    max_seqs: usize,
    extra_budget: usize,
    caching: bool,
    arrivals: &[Arrival],
) -> Outcome {
    let cfg = config(max_seqs + extra_budget, max_seqs, bs, num_blocks, caching);
    let mut sim = Sim::new(cfg, 64, Some(0));
    let last_arrival = arrivals.iter().map(|a| a.step).max().unwrap_or(0);
    let work: usize = arrivals.iter().map(|a| (a.len + a.max_tokens) * a.n).sum();
    // Liveness bound: the oldest running request advances every step (step.rs), so all work is
    // done within its total token count after the last arrival, plus steps to report finishes.
    let bound = last_arrival + work + 3;
    let mut rejected = 0;
    let mut aborts: Vec<(usize, u64)> = Vec::new();
    let mut step = 0;
    loop {
        for (i, a) in arrivals.iter().enumerate().filter(|(_, a)| a.step == step) {
            let p = prompt(i as u64, a.len, a.shared, 64);
            let never_fits = (a.len + a.max_tokens - 1).div_ceil(bs) > num_blocks;
            match sim.add(i as u64, p, a.max_tokens) {
                Ok(()) => {
                    assert!(!never_fits, "request {i} accepted but can never fit");
                    if let Some(k) = a.abort_after {
                        aborts.push((step + k, i as u64));
                    }
                }
                Err(AdmissionError::ExceedsKvPool { needed_blocks, total_blocks, .. }) => {
                    assert!(never_fits && needed_blocks > total_blocks);
                    rejected += 1;
                }
                Err(e) => panic!("unexpected refusal: {e}"),
            }
        }
        for &(_, id) in aborts.iter().filter(|(s, _)| *s == step) {
            sim.abort(id);
        }
        let pending_finish = sim.reqs.values().any(|t| t.finish.is_none());
        if step > last_arrival && sim.sched.is_idle() && !pending_finish {
            break;
        }
        assert!(step <= bound, "no completion within {bound} steps: {:?}", sim.sched.stats());
        let (plan, mut result) = sim.begin();
        for s in plan.seqs.iter().filter(|s| s.needs_logits) {
            let i = s.id.0 as usize;
            let Some(a) = arrivals.get(i).filter(|_| s.id.0 >> 32 == 0) else {
                continue;
            };
            if sim.reqs[&s.id].output.is_empty() && !sim.reqs.contains_key(&SeqId(child_id(i, 1))) {
                let Some(&(_, tok)) = result.sampled.iter().find(|(id, _)| *id == s.id) else {
                    continue;
                };
                for j in 1..a.n {
                    sim.fork_at_first_sample(&mut result, s.id.0, child_id(i, j), (tok + j as u32) % 64);
                }
            }
        }
        sim.commit(&result);
        step += 1;
    }
    eprintln!("CASE steps {} preempt {}", sim.steps, sim.sched.stats().preemptions);
    sim.check_outputs_match_reference();
    sim.check_pool_returned();
    for (id, t) in &sim.reqs {
        if t.finish == Some(FinishReason::Length) {
            assert_eq!(t.output.len(), t.max_tokens, "seq {id}");
        }
    }
    let st = sim.sched.stats();
    assert!(sim.max_step_tokens <= cfg.max_batched_tokens && sim.max_running <= max_seqs);
    Outcome { preemptions: st.preemptions, hits: st.kv.prefix_hit_tokens, rejected }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_request_finishes_with_its_solo_output(
        bs in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        num_blocks in 4..40usize,
        max_seqs in 1..8usize,
        extra_budget in 0..64usize,
        caching in any::<bool>(),
        arrivals in proptest::collection::vec(arrival(1), 1..20),
    ) {
        drive(bs, num_blocks, max_seqs, extra_budget, caching, &arrivals);
    }

    /// The same with `n > 1`: forks share the prompt's blocks copy-on-write.
    #[test]
    fn forked_sequences_match_their_solo_outputs(
        bs in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        num_blocks in 8..40usize,
        max_seqs in 1..8usize,
        extra_budget in 0..16usize,
        caching in any::<bool>(),
        arrivals in proptest::collection::vec(arrival(4), 1..10),
    ) {
        drive(bs, num_blocks, max_seqs, extra_budget, caching, &arrivals);
    }
}

/// Small pools must actually preempt (and still give every request its solo output), and shared
/// prefixes must actually hit. Fixed workloads keep these assertions deterministic.
#[test]
fn small_pools_preempt_and_prefixes_hit() {
    let arrivals: Vec<Arrival> = (0..16)
        .map(|i| Arrival {
            step: i % 4,
            len: 8 + (i * 37) % 50,
            shared: 24,
            max_tokens: 4 + (i * 13) % 40,
            abort_after: None,
            n: 1,
        })
        .collect();
    for (bs, blocks, caching) in [(4, 24, false), (4, 24, true), (2, 50, true), (8, 12, false), (1, 100, true)] {
        let o = drive(bs, blocks, 8, 24, caching, &arrivals);
        println!("block {bs} x {blocks}, caching {caching}: {} preemptions, {} hit tokens", o.preemptions, o.hits);
        assert!(o.preemptions > 0, "no preemption with {blocks} blocks of {bs}");
        assert_eq!(o.rejected, 0);
        if caching {
            assert!(o.hits > 0);
        }
    }
}

#[test]
fn aborts_at_every_phase_leave_nothing_behind() {
    let arrivals: Vec<Arrival> = (0..12)
        .map(|i| Arrival { step: 0, len: 10 + i * 7, shared: 16, max_tokens: 20, abort_after: Some(i), n: 1 + i % 3 })
        .collect();
    for caching in [false, true] {
        drive(4, 30, 4, 8, caching, &arrivals);
    }
}

#[test]
fn an_id_can_be_reused_after_it_finished() {
    let mut sim = Sim::new(config(16, 4, 4, 16, true), 64, None);
    sim.add(1, prompt(1, 5, 0, 64), 3).unwrap();
    sim.run_to_end(50);
    sim.reqs.clear();
    sim.add(1, prompt(2, 9, 0, 64), 2).unwrap();
    sim.run_to_end(50);
    sim.check_outputs_match_reference();
    assert!(sim.sched.output_tokens(SeqId(1)).is_none());
}
