//! One sampling job of the device sampler, and its flat `i32` form.
//!
//! A job is "sample one token from logits row `row` with these settings": the validated
//! parameters of a [`crate::sample::Sampler`], its seed and draw counter, the penalty entries
//! of its history, and for a constrained sequence the bitmask of the tokens its grammar allows.
//! Jobs travel to the GPU as fixed-size descriptors ([`DESC_WORDS`] words each) plus one shared
//! array of penalty pairs and one of mask words (only constrained jobs add to it); each job's
//! result comes back as one record of [`OUT_WORDS`] words. The CUDA kernel and its CPU twin read and write exactly these
//! words, so the twin's tests cover the packing too.
//!
//! Invariants of a packed job (established by [`crate::sample::Sampler::device_job`]):
//! - `0 <= top_k < vocab` (0 means off: a `top_k` of at least the vocabulary keeps everything);
//! - every penalty token is `< vocab`, tokens are distinct, and the list is empty exactly when
//!   the penalties are off;
//! - `logprobs` is `-1` (none) or `0..=MAX_LOGPROBS`;
//! - a mask has exactly `mask_words(vocab)` words (checked by [`super::sample`]); its offset
//!   is `-1` when the job has none.

use crate::sample::params::MAX_LOGPROBS;
use crate::sample::{Sampled, SamplingError};

/// Words per job descriptor.
pub const DESC_WORDS: usize = 17;
/// Words per result record: status, token, logprob bits, top count, then `MAX_LOGPROBS`
/// (id, logprob bits) pairs.
pub const OUT_WORDS: usize = 4 + 2 * MAX_LOGPROBS;

/// Descriptor word offsets (the CUDA source gets the same numbers from [`cuda_defines`]).
pub(crate) mod word {
    pub const ROW: usize = 0;
    pub const TEMPERATURE: usize = 1;
    pub const TOP_K: usize = 2;
    pub const TOP_P: usize = 3;
    pub const MIN_P: usize = 4;
    pub const REPETITION: usize = 5;
    pub const PRESENCE: usize = 6;
    pub const FREQUENCY: usize = 7;
    pub const SEED_LO: usize = 8;
    pub const SEED_HI: usize = 9;
    pub const DRAW_LO: usize = 10;
    pub const DRAW_HI: usize = 11;
    pub const LOGPROBS: usize = 12;
    pub const PEN_OFFSET: usize = 13;
    pub const PEN_COUNT: usize = 14;
    pub const MASK_OFFSET: usize = 15;
    pub const MASK_WORDS: usize = 16;
}

/// Result status codes.
pub(crate) mod status {
    pub const OK: i32 = 0;
    pub const NON_FINITE: i32 = 1;
    pub const ALL_MASKED: i32 = 2;
}

/// What one job asks for. Built by [`crate::sample::Sampler::device_job`].
#[derive(Debug, Clone, PartialEq)]
pub struct SampleJob {
    /// The logits row to sample from.
    pub row: usize,
    pub temperature: f32,
    /// `0` is off; otherwise `< vocab`.
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition: f32,
    pub presence: f32,
    pub frequency: f32,
    pub seed: u64,
    /// The sampler's draw counter: this is draw number `draw` of the sequence.
    pub draw: u64,
    /// `None`: no log-probabilities wanted; `Some(n)`: the token's and the `n` best.
    pub logprobs: Option<u32>,
    /// `(token, occurrences in the output)` for every distinct token the penalties touch;
    /// empty when the penalties are off.
    pub penalties: Vec<(u32, u32)>,
    /// The tokens a grammar allows (bit `t % 32` of word `t / 32`, as
    /// [`crate::sample::constraint`] fills it); every other logit is `-inf` before the
    /// penalties, as on the host. `None`: every token is allowed.
    pub mask: Option<Vec<u32>>,
}

/// Jobs as the kernel reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackedJobs {
    pub desc: Vec<i32>,
    /// `(token, count)` pairs of every job, concatenated.
    pub penalties: Vec<i32>,
    /// Mask words of every masked job, concatenated (bit patterns as `i32`).
    pub masks: Vec<i32>,
    /// Whether some job has penalties (and so needs a scratch row for its penalised logits).
    pub needs_scratch: bool,
}

impl PackedJobs {
    pub fn len(&self) -> usize {
        self.desc.len() / DESC_WORDS
    }

    pub fn is_empty(&self) -> bool {
        self.desc.is_empty()
    }
}

fn split(x: u64) -> (i32, i32) {
    (x as u32 as i32, (x >> 32) as u32 as i32)
}

fn join(lo: i32, hi: i32) -> u64 {
    u64::from(lo as u32) | (u64::from(hi as u32) << 32)
}

fn f(x: f32) -> i32 {
    x.to_bits() as i32
}

fn unf(x: i32) -> f32 {
    f32::from_bits(x as u32)
}

/// Packs `jobs` into descriptors, one penalty array and one mask array.
pub fn pack(jobs: &[SampleJob]) -> PackedJobs {
    let mut p = PackedJobs { desc: Vec::with_capacity(jobs.len() * DESC_WORDS), ..PackedJobs::default() };
    for j in jobs {
        let mut d = [0i32; DESC_WORDS];
        d[word::ROW] = j.row as i32;
        d[word::TEMPERATURE] = f(j.temperature);
        d[word::TOP_K] = j.top_k as i32;
        d[word::TOP_P] = f(j.top_p);
        d[word::MIN_P] = f(j.min_p);
        d[word::REPETITION] = f(j.repetition);
        d[word::PRESENCE] = f(j.presence);
        d[word::FREQUENCY] = f(j.frequency);
        (d[word::SEED_LO], d[word::SEED_HI]) = split(j.seed);
        (d[word::DRAW_LO], d[word::DRAW_HI]) = split(j.draw);
        d[word::LOGPROBS] = j.logprobs.map_or(-1, |n| n as i32);
        d[word::PEN_OFFSET] = (p.penalties.len() / 2) as i32;
        d[word::PEN_COUNT] = j.penalties.len() as i32;
        for &(t, c) in &j.penalties {
            p.penalties.push(t as i32);
            p.penalties.push(c as i32);
        }
        (d[word::MASK_OFFSET], d[word::MASK_WORDS]) = match &j.mask {
            Some(m) => (p.masks.len() as i32, m.len() as i32),
            None => (-1, 0),
        };
        p.masks.extend(j.mask.iter().flatten().map(|&w| w as i32));
        p.needs_scratch |= !j.penalties.is_empty();
        p.desc.extend_from_slice(&d);
    }
    p
}

/// Job `i` of `packed`, as [`pack`] was given it.
pub fn unpack_job(packed: &PackedJobs, i: usize) -> SampleJob {
    let d = &packed.desc[i * DESC_WORDS..(i + 1) * DESC_WORDS];
    let off = d[word::PEN_OFFSET] as usize;
    let n = d[word::PEN_COUNT] as usize;
    SampleJob {
        row: d[word::ROW] as usize,
        temperature: unf(d[word::TEMPERATURE]),
        top_k: d[word::TOP_K] as u32,
        top_p: unf(d[word::TOP_P]),
        min_p: unf(d[word::MIN_P]),
        repetition: unf(d[word::REPETITION]),
        presence: unf(d[word::PRESENCE]),
        frequency: unf(d[word::FREQUENCY]),
        seed: join(d[word::SEED_LO], d[word::SEED_HI]),
        draw: join(d[word::DRAW_LO], d[word::DRAW_HI]),
        logprobs: u32::try_from(d[word::LOGPROBS]).ok(),
        penalties: packed.penalties[2 * off..2 * (off + n)]
            .chunks_exact(2)
            .map(|p| (p[0] as u32, p[1] as u32))
            .collect(),
        mask: usize::try_from(d[word::MASK_OFFSET])
            .ok()
            .map(|off| packed.masks[off..off + d[word::MASK_WORDS] as usize].iter().map(|&w| w as u32).collect()),
    }
}

/// What a job produced, as the kernel writes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Record<'a> {
    Sampled { token: u32, logprob: f32, top: &'a [(u32, f32)] },
    NonFinite { token: u32, value: f32 },
    AllMasked,
}

/// Writes `r` into one result record.
pub(crate) fn write_record(out: &mut [i32], r: Record<'_>) {
    out.fill(0);
    match r {
        Record::Sampled { token, logprob, top } => {
            out[0] = status::OK;
            out[1] = token as i32;
            out[2] = f(logprob);
            out[3] = top.len() as i32;
            for (k, &(id, lp)) in top.iter().take(MAX_LOGPROBS).enumerate() {
                out[4 + 2 * k] = id as i32;
                out[5 + 2 * k] = f(lp);
            }
        }
        Record::NonFinite { token, value } => {
            out[0] = status::NON_FINITE;
            out[1] = token as i32;
            out[2] = f(value);
        }
        Record::AllMasked => out[0] = status::ALL_MASKED,
    }
}

/// A result record that no correct kernel writes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("device sampler record {job} is malformed: {what}")]
pub struct BadRecord {
    pub job: usize,
    pub what: String,
}

/// Reads job `job`'s record: the sampled token (with `logprob` 0 when `logprobs` is `None`), or
/// the sampling error the CPU sampler would have given.
pub fn read_record(out: &[i32], job: usize, vocab: usize) -> Result<Result<Sampled, SamplingError>, BadRecord> {
    let r = out.get(job * OUT_WORDS..(job + 1) * OUT_WORDS).ok_or_else(|| BadRecord { job, what: "missing".into() })?;
    let bad = |what: String| BadRecord { job, what };
    let id = |w: i32| -> Result<u32, BadRecord> {
        u32::try_from(w)
            .ok()
            .filter(|&t| (t as usize) < vocab)
            .ok_or_else(|| bad(format!("token {w} outside the vocabulary of {vocab}")))
    };
    match r[0] {
        status::OK => {
            let n = usize::try_from(r[3])
                .ok()
                .filter(|&n| n <= MAX_LOGPROBS)
                .ok_or_else(|| bad(format!("{} top entries", r[3])))?;
            let top =
                (0..n).map(|k| Ok((id(r[4 + 2 * k])?, unf(r[5 + 2 * k])))).collect::<Result<Vec<_>, BadRecord>>()?;
            Ok(Ok(Sampled { token: id(r[1])?, logprob: unf(r[2]), top_logprobs: top }))
        }
        status::NON_FINITE => Ok(Err(SamplingError::NonFiniteLogit { token: id(r[1])?, value: unf(r[2]) })),
        status::ALL_MASKED => Ok(Err(SamplingError::AllMasked)),
        s => Err(bad(format!("status {s}"))),
    }
}

/// `#define`s that give the CUDA source the layout above.
pub(crate) fn cuda_defines() -> String {
    let mut s = String::new();
    for (name, v) in [
        ("DESC_WORDS", DESC_WORDS),
        ("OUT_WORDS", OUT_WORDS),
        ("MAX_LOGPROBS", MAX_LOGPROBS),
        ("W_ROW", word::ROW),
        ("W_TEMPERATURE", word::TEMPERATURE),
        ("W_TOP_K", word::TOP_K),
        ("W_TOP_P", word::TOP_P),
        ("W_MIN_P", word::MIN_P),
        ("W_REPETITION", word::REPETITION),
        ("W_PRESENCE", word::PRESENCE),
        ("W_FREQUENCY", word::FREQUENCY),
        ("W_SEED_LO", word::SEED_LO),
        ("W_SEED_HI", word::SEED_HI),
        ("W_DRAW_LO", word::DRAW_LO),
        ("W_DRAW_HI", word::DRAW_HI),
        ("W_LOGPROBS", word::LOGPROBS),
        ("W_PEN_OFFSET", word::PEN_OFFSET),
        ("W_PEN_COUNT", word::PEN_COUNT),
        ("W_MASK_OFFSET", word::MASK_OFFSET),
        ("W_MASK_WORDS", word::MASK_WORDS),
    ] {
        s.push_str(&format!("#define KILN_SAMPLE_{name} {v}\n"));
    }
    for (name, v) in [("OK", status::OK), ("NON_FINITE", status::NON_FINITE), ("ALL_MASKED", status::ALL_MASKED)] {
        s.push_str(&format!("#define KILN_SAMPLE_STATUS_{name} {v}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(row: usize, penalties: Vec<(u32, u32)>) -> SampleJob {
        SampleJob {
            row,
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            repetition: 1.3,
            presence: -0.5,
            frequency: 0.25,
            seed: 0xDEAD_BEEF_0123_4567,
            draw: (1 << 33) + 5,
            logprobs: Some(3),
            penalties,
            mask: None,
        }
    }

    #[test]
    fn pack_round_trips() {
        let jobs = vec![
            SampleJob { mask: Some(vec![0x8000_0001, u32::MAX]), ..job(2, vec![(7, 0), (9, 3)]) },
            SampleJob { logprobs: None, ..job(0, vec![]) },
            SampleJob { mask: Some(vec![0, 5]), ..job(5, vec![(1, 1)]) },
        ];
        let p = pack(&jobs);
        assert_eq!(p.len(), 3);
        assert!(p.needs_scratch);
        assert_eq!(p.masks.len(), 4, "only masked jobs add words");
        for (i, j) in jobs.iter().enumerate() {
            assert_eq!(&unpack_job(&p, i), j);
        }
        assert!(!pack(&[job(0, vec![])]).needs_scratch);
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let mut out = vec![0i32; 3 * OUT_WORDS];
        let top = [(4u32, -0.5f32), (1, -1.25)];
        write_record(&mut out[..OUT_WORDS], Record::Sampled { token: 4, logprob: -0.5, top: &top });
        write_record(&mut out[OUT_WORDS..2 * OUT_WORDS], Record::NonFinite { token: 3, value: f32::INFINITY });
        write_record(&mut out[2 * OUT_WORDS..], Record::AllMasked);
        assert_eq!(
            read_record(&out, 0, 10).unwrap(),
            Ok(Sampled { token: 4, logprob: -0.5, top_logprobs: top.to_vec() })
        );
        assert_eq!(
            read_record(&out, 1, 10).unwrap(),
            Err(SamplingError::NonFiniteLogit { token: 3, value: f32::INFINITY })
        );
        assert_eq!(read_record(&out, 2, 10).unwrap(), Err(SamplingError::AllMasked));
        assert!(read_record(&out, 3, 10).is_err(), "past the end");
        assert!(read_record(&out, 0, 4).is_err(), "token outside the vocabulary");
        out[0] = 9;
        assert!(read_record(&out, 0, 10).is_err(), "unknown status");
    }
}
