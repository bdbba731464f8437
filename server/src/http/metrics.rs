//! Server-side metrics and the Prometheus text exposition of `/metrics`.
//!
//! The server measures what only it sees (time to first token, inter-token latency and
//! end-to-end latency as the client experiences them; failures by reason; HTTP statuses) and
//! adds the engine's own counters and gauges from [`EngineStats`] at scrape time.
//!
//! Invariants: counters only go up; every histogram's buckets are cumulative and its `+Inf`
//! bucket equals `_count`; recording is lock-free (atomics) except the status-code map.

use crate::engine_api::{EngineStats, Heartbeat};
use crate::error::Failure;
use kiln_runtime::sample::FinishReason;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const TTFT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const ITL_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0];
const E2E_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0];

pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, secs: f64) {
        let secs = if secs.is_finite() && secs > 0.0 { secs } else { 0.0 };
        let i = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        // Read after the buckets so `_count` is never below the `+Inf` bucket mid-update.
        let count = self.count.load(Ordering::Relaxed).max(cum);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub struct Metrics {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    failures: Vec<AtomicU64>,
    finished: [AtomicU64; 4],
    /// Requests the engine accepted.
    pub accepted: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
}

/// What `/metrics` reads besides the server's own numbers.
pub struct Snapshot {
    pub engine: Option<(EngineStats, Heartbeat)>,
    pub in_flight: usize,
    pub ready: bool,
    pub draining: bool,
}

fn finish_index(r: FinishReason) -> usize {
    match r {
        FinishReason::Stop => 0,
        FinishReason::Length => 1,
        FinishReason::Abort => 2,
        FinishReason::Error => 3,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            failures: Failure::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            finished: Default::default(),
            accepted: AtomicU64::new(0),
            statuses: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    pub fn fail(&self, f: Failure) {
        if let Some(i) = Failure::ALL.iter().position(|&x| x == f) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn failures(&self, f: Failure) -> u64 {
        Failure::ALL.iter().position(|&x| x == f).map_or(0, |i| self.failures[i].load(Ordering::Relaxed))
    }

    pub fn finished(&self, r: FinishReason) {
        self.finished[finish_index(r)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn status(&self, code: u16) {
        // A poisoned lock only means another thread panicked mid-increment; the map is still
        // a valid map, so keep counting.
        let mut m = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(code).or_insert(0) += 1;
    }

    pub fn render(&self, s: &Snapshot) -> String {
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        gauge(
            &mut out,
            "llm_server_ready",
            "1 when the model is loaded and the server takes requests.",
            f64::from(u8::from(s.ready)),
        );
        gauge(
            &mut out,
            "llm_server_draining",
            "1 while the server drains for shutdown.",
            f64::from(u8::from(s.draining)),
        );
        gauge(
            &mut out,
            "llm_http_requests_in_flight",
            "Generation requests admitted by the HTTP layer and not yet answered.",
            s.in_flight as f64,
        );
        if let Some((st, hb)) = &s.engine {
            gauge(&mut out, "llm_requests_running", "Requests in the engine's running batch.", st.running as f64);
            gauge(&mut out, "llm_requests_waiting", "Requests queued in the engine.", st.waiting as f64);
            gauge(&mut out, "llm_kv_blocks_used", "KV cache blocks held by requests.", st.kv_blocks_used as f64);
            gauge(&mut out, "llm_kv_blocks_total", "KV cache blocks in the pool.", st.kv_blocks_total as f64);
            gauge(
                &mut out,
                "llm_kv_blocks_free",
                "KV cache blocks not held by requests.",
                st.kv_blocks_total.saturating_sub(st.kv_blocks_used) as f64,
            );
            counter(
                &mut out,
                "llm_preemptions_total",
                "Requests preempted (blocks freed, recomputed later).",
                st.preemptions,
            );
            counter(
                &mut out,
                "llm_prefix_cache_hit_tokens_total",
                "Prompt tokens served from the prefix cache.",
                st.prefix_cache_hit_tokens,
            );
            counter(&mut out, "llm_prompt_tokens_total", "Prompt tokens processed.", st.prompt_tokens_total);
            counter(&mut out, "llm_generation_tokens_total", "Tokens generated.", st.generation_tokens_total);
            counter(
                &mut out,
                "llm_engine_requests_finished_total",
                "Requests the engine finished.",
                st.requests_finished_total,
            );
            counter(
                &mut out,
                "llm_engine_requests_failed_total",
                "Requests the engine failed.",
                st.requests_failed_total,
            );
            counter(&mut out, "llm_scheduler_steps_total", "Engine steps run.", st.steps);
            counter(
                &mut out,
                "kiln_constraint_masks_total",
                "Token masks computed for constrained decoding (structured output, forced tool calls).",
                st.masks.count,
            );
            gauge(
                &mut out,
                "kiln_constraint_mask_seconds_total",
                "Time spent computing token masks, summed (each computed ahead, on the worker pool, while the next model step runs).",
                st.masks.mean_seconds * st.masks.count as f64,
            );
            gauge(
                &mut out,
                "kiln_constraint_mask_p99_seconds",
                "99th percentile of a token mask's computation over the most recent masks.",
                st.masks.p99_seconds,
            );
            gauge(
                &mut out,
                "kiln_constraint_mask_max_seconds",
                "Slowest token mask computed so far (slow masks are measured, never skipped).",
                st.masks.max_seconds,
            );
            gauge(
                &mut out,
                "kiln_constraint_mask_wait_seconds_total",
                "Time sampling waited for token masks still being computed, summed (the part not hidden behind the model step).",
                st.mask_waits.mean_seconds * st.mask_waits.count as f64,
            );
            gauge(
                &mut out,
                "kiln_constraint_mask_wait_max_seconds",
                "Longest wait of sampling for a token mask so far.",
                st.mask_waits.max_seconds,
            );
            gauge(&mut out, "llm_engine_alive", "1 while the engine loop runs.", f64::from(u8::from(hb.alive)));
            gauge(
                &mut out,
                "llm_engine_heartbeat_age_seconds",
                "Seconds since the engine loop last advanced.",
                hb.last_progress.elapsed().as_secs_f64(),
            );
        }
        counter(
            &mut out,
            "llm_requests_accepted_total",
            "Requests the engine accepted.",
            self.accepted.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP llm_requests_finished_total Choices finished, by finish reason.\n# TYPE llm_requests_finished_total counter");
        for r in [FinishReason::Stop, FinishReason::Length, FinishReason::Abort, FinishReason::Error] {
            let _ = writeln!(
                out,
                "llm_requests_finished_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.finished[finish_index(r)].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP llm_request_failures_total Requests refused or failed, by reason.\n# TYPE llm_request_failures_total counter");
        for (i, f) in Failure::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "llm_request_failures_total{{reason=\"{}\"}} {}",
                f.label(),
                self.failures[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP llm_http_responses_total HTTP responses by status code.\n# TYPE llm_http_responses_total counter"
        );
        {
            let m = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
            for (code, n) in m.iter() {
                let _ = writeln!(out, "llm_http_responses_total{{code=\"{code}\"}} {n}");
            }
        }
        self.ttft.render(
            "llm_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
            &mut out,
        );
        self.itl.render(
            "llm_inter_token_latency_seconds",
            "Time between consecutive token events of a request.",
            &mut out,
        );
        self.e2e.render("llm_e2e_request_latency_seconds", "Time from request arrival to its last event.", &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.5, 5.0, f64::NAN] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.1\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 4"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 5"), "{out}");
        assert!(out.contains("x_count 5"), "{out}");
    }

    #[test]
    fn every_sample_line_has_a_type() {
        let m = Metrics::default();
        m.fail(Failure::Overloaded);
        m.status(429);
        let text = m.render(&Snapshot {
            engine: Some((EngineStats::default(), Heartbeat { last_progress: std::time::Instant::now(), alive: true })),
            in_flight: 0,
            ready: true,
            draining: false,
        });
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
                assert!(typed.contains(name) || typed.contains(base), "untyped sample {line}");
            }
        }
        assert!(text.contains("llm_request_failures_total{reason=\"overloaded\"} 1"));
        assert!(text.contains("llm_kv_blocks_free 0"));
    }
}
