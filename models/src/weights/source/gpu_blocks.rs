//! GGUF blocks kept quantized on a GPU ([`WeightSource::blocks_on_gpu`]): which block formats
//! map onto which GPU weight kind without dequantizing a value, and how a stack of parts of
//! different kinds becomes one [`Weight`].
//!
//! Invariant: a kept part's values equal its blocks' dequantized values (the layouts' own
//! tests check it per format); anything not kept loads dense through the source's usual path.

use kiln_runtime::device::linear::Weight;
use kiln_runtime::device::quant::int4::Int4Layout;
use kiln_runtime::device::quant::int4_cuda::{self, Int4Cuda};
use kiln_runtime::device::quant::w8::W8Matrix;
use kiln_runtime::device::quant::w8_cuda::{self, W8Cuda, W8Policy};
use kiln_runtime::{DType, Device};

use super::{StackPart, StoredFormat, WeightSource};
use crate::weights::WeightsError;

impl WeightSource {
    /// GGUF blocks kept quantized on a GPU: 4-bit ones (Q4_0, Q4_1, Q4_K) in the int4 kernels'
    /// form ([`Int4Layout::from_blocks`]: nibbles reordered, no value dequantized), and with
    /// `KILN_W8=kernels` (or `w8a8`) 8-bit ones (Q8_0, Q5_0, Q6_K) as INT8 W8A16
    /// ([`W8Matrix::from_blocks`]). Consecutive parts of one kind share one weight; other parts
    /// stacked with them (a Q4_K_M's Q6_K v beside its Q4_K q and k, by default) load dense,
    /// and the weight is [`Weight::Rows`] of the runs. `None` on the CPU (which multiplies every
    /// block format as it is), when the int4 kernels are off, or when no part is kept.
    pub(super) fn blocks_on_gpu(
        &self,
        parts: &[StackPart<'_>],
        dev: &Device,
        dtype: DType,
    ) -> Result<Option<Weight>, WeightsError> {
        /// Consecutive parts of a stack held alike.
        enum Run {
            /// Int4 layouts (rows, layout) of `cols` inputs.
            Int4 {
                cols: usize,
                layouts: Vec<(usize, Int4Layout)>,
            },
            Int8(Vec<W8Matrix>),
            /// The parts of this range of the stack, loaded dense.
            Dense(std::ops::Range<usize>),
        }
        if dev.is_cpu() || !self.keep_quantized || !int4_cuda::kernels_enabled() {
            return Ok(None);
        }
        let ggml = |name: &str| self.entries.get(name).is_some_and(|e| matches!(e.format, StoredFormat::Ggml(_)));
        if !parts.iter().any(|(name, ..)| ggml(name)) {
            return Ok(None);
        }
        let int8 = w8_cuda::policy() != W8Policy::Dense;
        let mut runs: Vec<Run> = vec![];
        for (i, (name, expected, part)) in parts.iter().enumerate() {
            let q = if ggml(name) {
                self.read_part(name, Some(expected), part)?
                    .quant_matrix()
                    .map_err(|e| e.in_source(&self.source_name))?
            } else {
                None
            };
            let four = q.as_ref().and_then(|q| Some((q.cols(), q.rows(), Int4Layout::from_blocks(q)?)));
            let eight = if four.is_none() && int8 { q.as_ref().and_then(W8Matrix::from_blocks) } else { None };
            match (four, eight, runs.last_mut()) {
                (Some((_, rows, l)), _, Some(Run::Int4 { layouts, .. })) => layouts.push((rows, l)),
                (Some((cols, rows, l)), ..) => runs.push(Run::Int4 { cols, layouts: vec![(rows, l)] }),
                (None, Some(w), Some(Run::Int8(ws))) => ws.push(w),
                (None, Some(w), _) => runs.push(Run::Int8(vec![w])),
                (None, None, Some(Run::Dense(r))) => r.end = i + 1,
                (None, None, _) => runs.push(Run::Dense(i..i + 1)),
            }
        }
        if runs.iter().all(|r| matches!(r, Run::Dense(_))) {
            return Ok(None);
        }
        let layout = |e: String| WeightsError::Layout {
            tensor: parts[0].0.to_owned(),
            reason: format!("{}: {e}", self.source_name),
        };
        let mut runs = runs
            .into_iter()
            .map(|run| {
                Ok(match run {
                    Run::Int4 { cols, layouts } => Weight::Int4Cuda(
                        Int4Cuda::upload_layouts(dev, dtype, cols, layouts).map_err(|e| layout(e.to_string()))?,
                    ),
                    // Blocks of 16 or 32 values always fit the kernels' 16-value chunks.
                    Run::Int8(ws) => match W8Cuda::upload(dev, dtype, &ws, false).map_err(|e| layout(e.to_string()))? {
                        Some(on_gpu) => Weight::W8Cuda(on_gpu),
                        None => return Err(layout("INT8 blocks the W8A16 kernels do not take".into())),
                    },
                    Run::Dense(r) => Weight::Dense(self.upload_stacked(&parts[r], dev, dtype)?),
                })
            })
            .collect::<Result<Vec<_>, WeightsError>>()?;
        Ok(Some(if runs.len() == 1 { runs.remove(0) } else { Weight::Rows(runs) }))
    }
}
