//! The GPU check's report as markdown: one table of kernel cases (failures first in a
//! summary line), the copy and GEMM baselines, the GEMM correctness table.

use super::Report;
use std::fmt::Write;

pub(crate) fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let failed = r.cases.iter().filter(|c| !c.pass).count();
    let _ = writeln!(s, "## kiln GPU check\n");
    let _ = writeln!(s, "device: {}  ", r.device);
    let _ = writeln!(s, "libraries: {}  ", r.libraries);
    let _ = writeln!(s, "seed: {} (repeat with --seed {})  ", r.seed, r.seed);
    let _ = writeln!(
        s,
        "kernel cache: {} compiled, {} from disk, {} disk errors  ",
        r.cache.compiled, r.cache.disk_hits, r.cache.disk_errors
    );
    let _ = writeln!(s, "cases: {} run, {} failed\n", r.cases.len(), failed);

    let _ = writeln!(s, "| kernel | dtype | rows×width | layout | max rel err | norm rel err | pass | median µs | GB/s | % of {:.0} GB/s |", r.peak_gbps);
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for c in &r.cases {
        let pass = match (&c.error, c.pass) {
            (Some(e), _) => format!("ERROR: {}", one_line(e)),
            (None, true) => "ok".into(),
            (None, false) if c.diff.unwritten > 0 => format!("FAIL ({} unwritten)", c.diff.unwritten),
            (None, false) if c.diff.ref_nonfinite > 0 => {
                format!("FAIL ({} non-finite in CPU ref)", c.diff.ref_nonfinite)
            }
            (None, false) => "FAIL".into(),
        };
        let (us, gbps, pct) = match (c.median_us, c.gbps()) {
            (Some(us), Some(g)) => (format!("{us:.2}"), format!("{g:.0}"), format!("{:.0}%", 100.0 * g / r.peak_gbps)),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {}×{} | {:?} | {:.2e} | {:.2e} | {} | {} | {} | {} |",
            c.kernel, c.dtype, c.rows, c.width, c.layout, c.diff.max_rel, c.diff.norm_rel, pass, us, gbps, pct
        );
    }

    match &r.copy {
        Some(Ok(c)) => {
            let g = c.bytes as f64 / (c.median_us * 1e-6) / 1e9;
            let _ = writeln!(
                s,
                "| copy (device-to-device memcpy, read+write) | bf16 | {}×{} | - | - | - | - | {:.2} | {:.0} | {:.0}% |",
                c.rows,
                c.cols,
                c.median_us,
                g,
                100.0 * g / r.peak_gbps
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(
                s,
                "| copy (device-to-device memcpy) | bf16 | - | - | - | - | ERROR: {} | - | - | - |",
                one_line(e)
            );
        }
        None => {}
    }

    let _ = writeln!(s, "\n### baselines\n");
    match &r.gemm_speed {
        Some(Ok(g)) => {
            let _ = writeln!(s, "- cuBLAS {} GEMM {}³: {:.1} µs, {:.1} TFLOP/s", g.dtype, g.n, g.median_us, g.tflops);
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "- cuBLAS GEMM: ERROR: {}", one_line(e));
        }
        None => {}
    }

    if !r.gemm_checks.is_empty() {
        let _ = writeln!(s, "\n### cuBLAS vs CPU GEMM\n");
        let _ = writeln!(s, "| dtype | m×k×n | layout | max rel err | pass |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for g in &r.gemm_checks {
            let pass = match &g.error {
                Some(e) => format!("ERROR: {}", one_line(e)),
                None if g.pass() => "ok".into(),
                None => "FAIL".into(),
            };
            let layout = if g.offset { "offset views" } else { "dense" };
            let _ = writeln!(
                s,
                "| {} | {}×{}×{} | {} | {:.2e} | {} |",
                g.dtype, g.m, g.k, g.n, layout, g.diff.max_rel, pass
            );
        }
    }
    let mut errors: Vec<String> = r
        .cases
        .iter()
        .filter_map(|c| c.error.as_ref().map(|e| format!("{} {} {}x{}: {e}", c.kernel, c.dtype, c.rows, c.width)))
        .collect();
    errors.extend(
        r.gemm_checks
            .iter()
            .filter_map(|g| g.error.as_ref().map(|e| format!("GEMM {} {}x{}x{}: {e}", g.dtype, g.m, g.k, g.n))),
    );
    // Failures again at the end, where a truncated log still shows them.
    let failed: Vec<String> = r
        .cases
        .iter()
        .filter(|c| !c.pass)
        .map(|c| {
            let why = c.error.as_deref().map(one_line).unwrap_or_else(|| format!("{:?}", c.diff));
            format!("- {} {} {}×{} {:?}: {}", c.kernel, c.dtype, c.rows, c.width, c.layout, why)
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\n### failed cases ({}; first 40)\n", failed.len());
        for f in failed.iter().take(40) {
            let _ = writeln!(s, "{f}");
        }
    }
    // The same failure (an NVRTC log, say) repeats for every shape: show each text once.
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert(e.split_once(": ").map_or(e.clone(), |(_, t)| t.to_string())));
    if !errors.is_empty() {
        let _ = writeln!(s, "\n### errors (full text, each distinct one, first 20)\n");
        for e in errors.iter().take(20) {
            let _ = writeln!(s, "```\n{e}\n```");
        }
    }
    let _ = writeln!(s, "\nresult: {}", if r.all_passed() { "ALL PASSED" } else { "FAILURES" });
    s
}

/// Errors go in table cells: one line, no pipes.
fn one_line(e: &str) -> String {
    let mut t: String = e.replace('|', "/").lines().take(3).collect::<Vec<_>>().join(" / ");
    if t.chars().count() > 300 {
        t = t.chars().take(300).collect();
        t.push('…');
    }
    t
}
