//! [`evaluate`]: the loop over windows. Each window goes to the model (and the base, when
//! there is one), its scored rows are scored in parallel, and the sums are taken in row order,
//! so the result does not depend on the thread count.
//!
//! Invariants: the model and the base see the same windows; a source's vocabulary equals the
//! other's and holds every token of every window (else an error before any work); tok/s counts
//! every token of every evaluated window over the time spent in that source's forward passes.

use super::score::{score_row, RowScore, Running};
use super::source::LogitSource;
use super::windows::Windows;
use super::PerplexityError;
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// One model's side of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SideReport {
    pub ppl: f64,
    /// llama.cpp's standard error of the perplexity.
    pub ppl_stderr: f64,
    pub nll_mean: f64,
    /// Time in this model's forward passes (logits copied to the host included).
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// `KL(P_base || P_model)` over the scored positions, in nats.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KlReport {
    pub mean: f64,
    pub stderr: f64,
    pub max: f64,
    /// The fraction of positions where both models' most likely tokens agree.
    pub same_top: f64,
}

/// The running values after a window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChunkReport {
    /// 1-based, as llama.cpp prints it.
    pub chunk: usize,
    /// Perplexity over every window so far.
    pub ppl: f64,
    /// This window's own mean NLL.
    pub chunk_nll_mean: f64,
    pub base_ppl: Option<f64>,
    pub kl_mean: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub ctx: usize,
    pub chunks: usize,
    /// Tokens the model evaluated: `chunks * ctx`.
    pub evaluated_tokens: usize,
    /// Positions scored: `chunks * (ctx - 1 - ctx/2)`.
    pub scored: usize,
    pub model: SideReport,
    pub base: Option<SideReport>,
    pub kl: Option<KlReport>,
    pub per_chunk: Vec<ChunkReport>,
    pub wall_seconds: f64,
}

#[derive(Default)]
struct BaseSums {
    nll: Running,
    kl: Running,
    kl_max: f64,
    same_top: usize,
    time: Duration,
}

fn side(nll: &Running, time: Duration, tokens: usize) -> SideReport {
    SideReport {
        ppl: nll.perplexity(),
        ppl_stderr: nll.perplexity_stderr(),
        nll_mean: nll.mean(),
        seconds: time.as_secs_f64(),
        tokens_per_s: tokens as f64 / time.as_secs_f64().max(1e-9),
    }
}

fn check(src: &mut dyn LogitSource, window: &[u32], rows: std::ops::Range<usize>) -> Result<Vec<f32>, PerplexityError> {
    let (n, vocab) = (rows.len(), src.vocab_size());
    let logits = src.window_logits(window, rows)?;
    if logits.len() != n * vocab {
        return Err(PerplexityError::BadLogits { got: logits.len(), rows: n, vocab });
    }
    Ok(logits)
}

/// Evaluate `windows` of `tokens` with `model` (and `base`), calling `on_chunk` after each.
pub fn evaluate(
    model: &mut dyn LogitSource,
    mut base: Option<&mut dyn LogitSource>,
    tokens: &[u32],
    windows: &Windows,
    mut on_chunk: impl FnMut(&ChunkReport),
) -> Result<Report, PerplexityError> {
    let vocab = model.vocab_size();
    if let Some(b) = base.as_deref() {
        if b.vocab_size() != vocab {
            return Err(PerplexityError::VocabMismatch(format!(
                "{} ids in the base, {vocab} in the model",
                b.vocab_size()
            )));
        }
    }
    let used = &tokens[..windows.count() * windows.ctx()];
    if let Some(&t) = used.iter().chain(windows.bos().as_ref()).find(|&&t| t as usize >= vocab) {
        return Err(PerplexityError::TokenOutOfVocab { token: t, vocab });
    }
    let t0 = Instant::now();
    let rows = windows.scored_rows();
    let mut nll = Running::default();
    let mut model_time = Duration::ZERO;
    let mut sums = base.as_ref().map(|_| BaseSums::default());
    let mut per_chunk = Vec::with_capacity(windows.count());
    for i in 0..windows.count() {
        let w = windows.window(tokens, i);
        let t = Instant::now();
        let m = check(model, &w, rows.clone())?;
        model_time += t.elapsed();
        let b = match (base.as_deref_mut(), sums.as_mut()) {
            (Some(src), Some(s)) => {
                let t = Instant::now();
                let b = check(src, &w, rows.clone())?;
                s.time += t.elapsed();
                Some(b)
            }
            _ => None,
        };
        let targets = windows.targets(&w);
        let scores: Vec<RowScore> = (0..rows.len())
            .into_par_iter()
            .map(|r| {
                let span = r * vocab..(r + 1) * vocab;
                score_row(&m[span.clone()], b.as_ref().map(|b| &b[span.clone()]), targets[r])
            })
            .collect();
        let mut chunk = Running::default();
        for s in &scores {
            nll.add(s.nll);
            chunk.add(s.nll);
            if let (Some(bs), Some(sum)) = (s.base, sums.as_mut()) {
                sum.nll.add(bs.nll);
                sum.kl.add(bs.kl);
                sum.kl_max = sum.kl_max.max(bs.kl);
                sum.same_top += bs.same_top as usize;
            }
        }
        let report = ChunkReport {
            chunk: i + 1,
            ppl: nll.perplexity(),
            chunk_nll_mean: chunk.mean(),
            base_ppl: sums.as_ref().map(|s| s.nll.perplexity()),
            kl_mean: sums.as_ref().map(|s| s.kl.mean()),
        };
        on_chunk(&report);
        per_chunk.push(report);
    }
    let evaluated = windows.count() * windows.ctx();
    Ok(Report {
        ctx: windows.ctx(),
        chunks: windows.count(),
        evaluated_tokens: evaluated,
        scored: nll.count(),
        model: side(&nll, model_time, evaluated),
        base: sums.as_ref().map(|s| side(&s.nll, s.time, evaluated)),
        kl: sums.as_ref().map(|s| KlReport {
            mean: s.kl.mean(),
            stderr: s.kl.stderr(),
            max: s.kl_max,
            same_top: s.same_top as f64 / s.kl.count() as f64,
        }),
        per_chunk,
        wall_seconds: t0.elapsed().as_secs_f64(),
    })
}
