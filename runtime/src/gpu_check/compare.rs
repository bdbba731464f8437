//! Comparing a GPU result with the CPU reference.
//!
//! Metrics, over one output:
//! - `max_rel` = max |gpu − cpu| / max(max |cpu|, 1e-3): the worst element, scaled by the
//!   output's magnitude (elements near zero don't blow it up);
//! - `norm_rel` = ‖gpu − cpu‖₂ / max(‖cpu‖₂, 1e-30);
//! - `unwritten`: elements still holding the poison (NaN, or `i32::MIN` for i32 outputs)
//!   where the reference has a value;
//! - `ref_nonfinite`: NaN/inf in the reference itself (random non-zero inputs should give
//!   none; a kernel that makes them is flagged).
//!
//! Pass: nothing unwritten, no non-finite reference, and `max_rel ≤` [`tolerance`].

use kiln_codegen::ir::DType;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Diff {
    pub max_rel: f64,
    pub norm_rel: f64,
    pub unwritten: usize,
    pub ref_nonfinite: usize,
}

impl Diff {
    /// The worse of two outputs' diffs.
    pub fn worst(self, o: Diff) -> Diff {
        Diff {
            max_rel: self.max_rel.max(o.max_rel),
            norm_rel: self.norm_rel.max(o.norm_rel),
            unwritten: self.unwritten + o.unwritten,
            ref_nonfinite: self.ref_nonfinite + o.ref_nonfinite,
        }
    }

    pub fn passes(&self, tol: f64) -> bool {
        self.unwritten == 0 && self.ref_nonfinite == 0 && self.max_rel <= tol
    }
}

/// The default `max_rel` bound for an output dtype: f32 1e-4 (1e-5 × 10, for a different
/// reduction order and last-ulp differences in exp/rsqrt/sin between the two backends);
/// f16/bf16 1e-2 (one rounding of the stored result); e4m3 one step; i8 one code; i32 exact.
pub fn tolerance(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-4,
        DType::F16 | DType::BF16 => 1e-2,
        // One e4m3 step at the top of the range (416 → 448): both backends encode with the
        // same bits, but an input a last ulp apart can round to the neighbouring value.
        DType::F8E4M3 => 7.2e-2,
        // One code of the ±127 range: an input a last ulp apart can round to the next integer.
        DType::I8 => 1.0 / 127.0 + 1e-6,
        DType::I32 | DType::Bool => 0.0,
    }
}

/// Compare `gpu` with `cpu` (same length, both converted to f32). `int_poison` marks i32
/// outputs, whose poison is `i32::MIN` rather than NaN.
pub fn compare(gpu: &[f32], cpu: &[f32], int_poison: bool) -> Diff {
    let poison = |x: f32| if int_poison { x == i32::MIN as f32 } else { x.is_nan() };
    let mut d = Diff::default();
    let mut max_ref = 0f64;
    let (mut err2, mut ref2) = (0f64, 0f64);
    let mut max_err = 0f64;
    for (&g, &c) in gpu.iter().zip(cpu) {
        if !c.is_finite() {
            d.ref_nonfinite += 1;
            continue;
        }
        if poison(g) {
            d.unwritten += 1;
            continue;
        }
        let e = (g as f64 - c as f64).abs();
        // A non-finite GPU value where the reference is finite is an infinite error.
        let e = if e.is_finite() { e } else { f64::INFINITY };
        max_err = max_err.max(e);
        max_ref = max_ref.max((c as f64).abs());
        err2 += e * e;
        ref2 += (c as f64) * (c as f64);
    }
    d.max_rel = max_err / max_ref.max(1e-3);
    d.norm_rel = err2.sqrt() / ref2.sqrt().max(1e-30);
    d
}
