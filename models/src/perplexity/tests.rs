//! [`evaluate`] on fake logit sources whose perplexity and KL are known in closed form: which
//! windows reach the source, which rows are scored, which token each row is scored against.

use super::*;
use std::ops::Range;

/// Row `j` of a window: logit `a(j) = 0.01 * j` on the window's next token `window[j+1]`,
/// 0 elsewhere; a uniform row when `uniform`. Records every call.
struct Fake {
    vocab: usize,
    uniform: bool,
    calls: Vec<(Vec<u32>, Range<usize>)>,
}

impl Fake {
    fn new(vocab: usize, uniform: bool) -> Fake {
        Fake { vocab, uniform, calls: vec![] }
    }
}

fn a(j: usize) -> f64 {
    0.01 * j as f64
}

impl LogitSource for Fake {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn window_logits(&mut self, window: &[u32], rows: Range<usize>) -> Result<Vec<f32>, PerplexityError> {
        self.calls.push((window.to_vec(), rows.clone()));
        let mut out = vec![0f32; rows.len() * self.vocab];
        if !self.uniform {
            for (r, j) in rows.enumerate() {
                out[r * self.vocab + window[j + 1] as usize] = a(j) as f32;
            }
        }
        Ok(out)
    }
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect()
}

#[test]
fn uniform_logits_give_the_vocabulary_size() {
    let v = 50;
    let toks = tokens(100, v);
    let w = Windows::new(toks.len(), 16, None, 1024, None).unwrap();
    let r = evaluate(&mut Fake::new(v, true), None, &toks, &w, |_| {}).unwrap();
    assert_eq!((r.chunks, r.evaluated_tokens, r.scored), (6, 96, 6 * 7));
    assert!((r.model.ppl - v as f64).abs() < 1e-9, "{}", r.model.ppl);
    assert!(r.model.ppl_stderr.abs() < 1e-6);
}

#[test]
fn each_row_is_scored_against_the_next_token_of_the_second_half() {
    let (v, ctx) = (40usize, 32usize);
    let toks = tokens(3 * ctx + 5, v);
    let w = Windows::new(toks.len(), ctx, None, 1024, Some(1)).unwrap();
    let mut fake = Fake::new(v, false);
    let mut seen = vec![];
    let r = evaluate(&mut fake, None, &toks, &w, |c| seen.push(c.chunk)).unwrap();
    assert_eq!(seen, vec![1, 2, 3]);
    // The source saw each whole window with BOS first, and was asked for rows ctx/2..ctx-1.
    assert_eq!(fake.calls.len(), 3);
    for (i, (win, rows)) in fake.calls.iter().enumerate() {
        assert_eq!(win[0], 1);
        assert_eq!(&win[1..], &toks[i * ctx + 1..(i + 1) * ctx]);
        assert_eq!(*rows, 16..31);
    }
    // NLL_j = ln(e^a(j) + V - 1) - a(j) for j in 16..31, the same in every window.
    let nlls: Vec<f64> = (16..31).map(|j| (a(j).exp() + (v - 1) as f64).ln() - a(j)).collect();
    let mean = nlls.iter().sum::<f64>() / nlls.len() as f64;
    assert_eq!(r.scored, 45);
    assert!((r.model.nll_mean - mean).abs() < 1e-6, "{} vs {mean}", r.model.nll_mean);
    assert!((r.model.ppl / mean.exp() - 1.0).abs() < 1e-6);
    // Standard error: the 15 values repeated 3 times.
    let n = 45.0;
    let m2 = nlls.iter().map(|x| x * x).sum::<f64>() / 15.0;
    let se = ((m2 - mean * mean) / (n - 1.0)).sqrt() * mean.exp();
    assert!((r.model.ppl_stderr / se - 1.0).abs() < 1e-4, "{} vs {se}", r.model.ppl_stderr);
    for c in &r.per_chunk {
        assert!((c.chunk_nll_mean - mean).abs() < 1e-6);
    }
}

#[test]
fn kl_of_a_uniform_base_has_a_closed_form() {
    let (v, ctx) = (30usize, 8usize);
    let toks = tokens(2 * ctx, v);
    let w = Windows::new(toks.len(), ctx, None, 1024, None).unwrap();
    let mut base = Fake::new(v, true);
    let r = evaluate(&mut Fake::new(v, false), Some(&mut base), &toks, &w, |_| {}).unwrap();
    // KL(U || P) = ln Z - ln V - a / V with Z = e^a + V - 1.
    let kls: Vec<f64> = (4..7)
        .map(|j| {
            let z = a(j).exp() + (v - 1) as f64;
            z.ln() - (v as f64).ln() - a(j) / v as f64
        })
        .collect();
    let kl = r.kl.as_ref().unwrap();
    assert!((kl.mean - kls.iter().sum::<f64>() / 3.0).abs() < 1e-7, "{}", kl.mean);
    assert!((kl.max - kls[2]).abs() < 1e-7);
    let base_report = r.base.as_ref().unwrap();
    assert!((base_report.ppl - v as f64).abs() < 1e-9);
    assert_eq!(base.calls.len(), 2);
}

#[test]
fn different_vocabularies_and_foreign_tokens_are_refused() {
    let toks = tokens(64, 30);
    let w = Windows::new(toks.len(), 16, None, 1024, None).unwrap();
    let e = evaluate(&mut Fake::new(30, false), Some(&mut Fake::new(31, false)), &toks, &w, |_| {}).unwrap_err();
    assert!(matches!(e, PerplexityError::VocabMismatch(_)), "{e}");
    let e = evaluate(&mut Fake::new(20, false), None, &toks, &w, |_| {}).unwrap_err();
    assert!(matches!(e, PerplexityError::TokenOutOfVocab { vocab: 20, .. }), "{e}");
}
