//! The arithmetic of scoring, in f64: the negative log-likelihood of a target under a row of
//! logits, the KL divergence between two rows, and [`Running`] sums with llama.cpp's standard
//! error.
//!
//! Invariants: a row's log-softmax is `x - max - ln Σ exp(x - max)` with the sum in f64 (the
//! max taken in f32, exactly as llama.cpp does); `KL(P_base || P_model) = Σ p_base (log p_base
//! - log p_model)` over the whole vocabulary; a row's result does not depend on other rows.

/// `ln Σ exp(x)` over a row, shifted by its maximum, accumulated in f64.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln()
}

/// `-log softmax(logits)[target]`. `target` must index `logits`.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits[target as usize] as f64
}

/// `KL(softmax(base) || softmax(model))`, in nats. The rows must have the same length.
pub fn kl_divergence(base: &[f32], model: &[f32]) -> f64 {
    kl_with(base, log_sum_exp(base), model, log_sum_exp(model))
}

fn kl_with(base: &[f32], lse_base: f64, model: &[f32], lse_model: f64) -> f64 {
    base.iter()
        .zip(model)
        .map(|(&b, &m)| {
            let lb = b as f64 - lse_base;
            let lm = m as f64 - lse_model;
            lb.exp() * (lb - lm)
        })
        .sum()
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

/// One scored position: the model's NLL and, with a base row, the base's NLL, the KL of the
/// base to the model and whether their most likely tokens agree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowScore {
    pub nll: f64,
    pub base: Option<BaseRowScore>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BaseRowScore {
    pub nll: f64,
    pub kl: f64,
    pub same_top: bool,
}

/// Score one position (each row's log-sum-exp computed once).
pub fn score_row(model: &[f32], base: Option<&[f32]>, target: u32) -> RowScore {
    let lse_m = log_sum_exp(model);
    let nll = lse_m - model[target as usize] as f64;
    let base = base.map(|b| {
        let lse_b = log_sum_exp(b);
        BaseRowScore {
            nll: lse_b - b[target as usize] as f64,
            kl: kl_with(b, lse_b, model, lse_m),
            same_top: argmax(b) == argmax(model),
        }
    });
    RowScore { nll, base }
}

/// Running sum and sum of squares of a series of values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Running {
    sum: f64,
    sum2: f64,
    count: usize,
}

impl Running {
    pub fn add(&mut self, x: f64) {
        self.sum += x;
        self.sum2 += x * x;
        self.count += 1;
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// The standard error of the mean as llama.cpp computes it, `sqrt((E[x²] - E[x]²) / (n -
    /// 1))` (a variance below 0 from rounding counts as 0); NaN with fewer than two values.
    pub fn stderr(&self) -> f64 {
        if self.count < 2 {
            return f64::NAN;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        ((self.sum2 / n - mean * mean).max(0.0) / (n - 1.0)).sqrt()
    }

    /// `exp(mean)`: the perplexity when the values are NLLs.
    pub fn perplexity(&self) -> f64 {
        self.mean().exp()
    }

    /// The perplexity's standard error, `ppl * stderr(NLL)` (llama.cpp's "PPL = x +/- e").
    pub fn perplexity_stderr(&self) -> f64 {
        self.perplexity() * self.stderr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn uniform_logits_give_log_vocab() {
        for v in [2usize, 7, 49152] {
            let row = vec![3.25f32; v];
            assert!(close(nll(&row, 0), (v as f64).ln()));
            assert!(close(nll(&row, v as u32 - 1), (v as f64).ln()));
        }
    }

    #[test]
    fn one_raised_logit_has_a_closed_form() {
        // p(target) = e^a / (e^a + V - 1).
        let (v, a) = (10usize, 2.0f32);
        let mut row = vec![0f32; v];
        row[4] = a;
        let z = (a as f64).exp() + (v - 1) as f64;
        assert!(close(nll(&row, 4), z.ln() - a as f64));
        assert!(close(nll(&row, 0), z.ln()));
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let row = [1000f32, 1000.0, -1000.0];
        assert!(close(nll(&row, 0), 2f64.ln()));
        assert!(nll(&row, 2) > 1999.0);
    }

    #[test]
    fn kl_is_zero_for_equal_rows_and_matches_two_point_form() {
        let row = [0.5f32, -1.0, 2.0, 0.0];
        assert!(kl_divergence(&row, &row).abs() < 1e-15);
        // Shifting every logit leaves the distribution, and so the KL, unchanged.
        let shifted: Vec<f32> = row.iter().map(|x| x + 7.0).collect();
        assert!(kl_divergence(&row, &shifted).abs() < 1e-12);
        // Two outcomes: p = sigmoid(a), q = sigmoid(b).
        let (a, b) = (1.5f64, -0.5f64);
        let (p, q) = (1.0 / (1.0 + (-a).exp()), 1.0 / (1.0 + (-b).exp()));
        let want = p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
        assert!(close(kl_divergence(&[a as f32, 0.0], &[b as f32, 0.0]), want));
    }

    #[test]
    fn score_row_agrees_with_the_separate_functions() {
        let m = [0.1f32, 2.0, -0.3, 1.0];
        let b = [0.0f32, 1.5, 0.2, 2.5];
        let s = score_row(&m, Some(&b), 2);
        assert!(close(s.nll, nll(&m, 2)));
        let base = s.base.unwrap();
        assert!(close(base.nll, nll(&b, 2)));
        assert!(close(base.kl, kl_divergence(&b, &m)));
        assert!(!base.same_top);
        assert_eq!(score_row(&m, None, 0).base, None);
    }

    #[test]
    fn running_matches_llama_cpp_formulas() {
        let xs = [1.0, 2.0, 4.0, 5.0];
        let mut r = Running::default();
        xs.iter().for_each(|&x| r.add(x));
        assert_eq!(r.count(), 4);
        assert!(close(r.mean(), 3.0));
        // E[x²] = 46/4 = 11.5, var = 11.5 - 9 = 2.5, stderr = sqrt(2.5 / 3).
        assert!(close(r.stderr(), (2.5f64 / 3.0).sqrt()));
        assert!(close(r.perplexity(), 3f64.exp()));
        assert!(close(r.perplexity_stderr(), 3f64.exp() * (2.5f64 / 3.0).sqrt()));
        let mut one = Running::default();
        one.add(1.0);
        assert!(one.stderr().is_nan());
    }
}
