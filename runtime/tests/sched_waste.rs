//! KV memory waste on a mixed-length workload: allocated-but-unfilled slots over the pool's
//! slots, sampled every step while the pool is under pressure. Blocks are taken only when a
//! sequence starts to fill them, so the waste is at most one partial block per running sequence.
//! Target: under 4% of the pool. Run with `--nocapture` to see the numbers.

use kiln_runtime::sched::{Request, Scheduler, SchedulerConfig, SeqId, StepResult};

/// Deterministic lengths in [lo, hi).
fn spread(i: u64, lo: usize, hi: usize) -> usize {
    let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as usize;
    lo + x % (hi - lo)
}

#[test]
fn kv_waste_on_mixed_lengths_is_under_four_percent() {
    let cfg = SchedulerConfig {
        max_batched_tokens: 2048,
        max_num_seqs: 64,
        max_model_len: 4096,
        block_size: 16,
        num_blocks: 2048, // 32k token slots: the workload below keeps it full
        enable_prefix_caching: true,
        max_queue: 1024,
    };
    let mut s = Scheduler::new(cfg).unwrap();
    for i in 0..200u64 {
        let len = spread(i, 16, 2048);
        let max_tokens = spread(i + 1000, 8, 1024);
        let prompt_ids = (0..len as u32).map(|p| (p * 131 + i as u32 * 7) % 50_000).collect();
        s.add(Request { id: SeqId(i), prompt_ids, max_tokens }).unwrap();
    }
    let (mut peak, mut sum, mut samples, mut peak_of_used) = (0f64, 0f64, 0u32, 0f64);
    let mut result = StepResult::default();
    let mut steps = 0;
    while !s.is_idle() {
        let plan = s.schedule();
        let st = s.kv_stats();
        let waste = s.kv_waste();
        if st.used_blocks * 2 >= st.total_blocks {
            peak = peak.max(waste);
            sum += waste;
            samples += 1;
            peak_of_used = peak_of_used.max(waste * st.total_blocks as f64 / st.used_blocks as f64);
        }
        result.sampled.clear();
        result.sampled.extend(plan.seqs.iter().filter(|q| q.needs_logits).map(|q| (q.id, 3)));
        s.update(&result).unwrap();
        steps += 1;
        assert!(steps < 100_000, "workload did not finish");
    }
    let st = s.stats();
    println!(
        "KV waste over {samples} steps with the pool at least half used: peak {:.2}% of the pool, \
         mean {:.2}%; peak {:.2}% of allocated blocks ({steps} steps, {} preemptions)",
        peak * 100.0,
        sum / samples.max(1) as f64 * 100.0,
        peak_of_used * 100.0,
        st.preemptions
    );
    assert!(samples > 100, "the workload never put the pool under pressure");
    assert!(peak < 0.04, "KV waste {:.2}% of the pool", peak * 100.0);
    assert_eq!(s.kv_stats().used_blocks, 0);
}
