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
        /// How one part of a stack is held.
        enum Form {
            Int4(usize, Int4Layout),
            Int8(W8Matrix),
            Dense,
        }
        if dev.is_cpu() || !self.keep_quantized || !int4_cuda::kernels_enabled() {
            return Ok(None);
        }
        let ggml = |name: &str| self.entries.get(name).is_some_and(|e| matches!(e.format, StoredFormat::Ggml(_)));
        if !parts.iter().any(|(name, ..)| ggml(name)) {
            return Ok(None);
        }
        let int8 = w8_cuda::policy() != W8Policy::Dense;
        let mut forms = Vec::with_capacity(parts.len());
        let mut cols = 0;
        for (name, expected, part) in parts {
            let q = if ggml(name) {
                self.read_part(name, Some(expected), part)?
                    .quant_matrix()
                    .map_err(|e| e.in_source(&self.source_name))?
            } else {
                None
            };
            let form = match q {
                Some(q) => {
                    cols = q.cols();
                    match Int4Layout::from_blocks(&q) {
                        Some(l) => Form::Int4(q.rows(), l),
                        None if !int8 => Form::Dense,
                        None => match W8Matrix::from_blocks(&q).filter(W8Cuda::fits) {
                            Some(w) => Form::Int8(w),
                            None => Form::Dense,
                        },
                    }
                }
                None => Form::Dense,
            };
            forms.push(form);
        }
        if forms.iter().all(|f| matches!(f, Form::Dense)) {
            return Ok(None);
        }
        let layout = |e: String| WeightsError::Layout {
            tensor: parts[0].0.to_owned(),
            reason: format!("{}: {e}", self.source_name),
        };
        let kind = |f: &Form| std::mem::discriminant(f);
        // Runs of consecutive parts of one kind, in order.
        let mut runs: Vec<Weight> = vec![];
        let mut at = 0;
        while at < parts.len() {
            let k = kind(&forms[at]);
            let end = (at..parts.len()).find(|&i| kind(&forms[i]) != k).unwrap_or(parts.len());
            let run: Vec<Form> = forms[at..end].iter_mut().map(|f| std::mem::replace(f, Form::Dense)).collect();
            let dense = |this: &Self| this.upload_stacked(&parts[at..end], dev, dtype).map(Weight::Dense);
            runs.push(match &run[0] {
                Form::Int4(..) => {
                    let layouts =
                        run.into_iter().filter_map(|f| if let Form::Int4(r, l) = f { Some((r, l)) } else { None });
                    let on_gpu = Int4Cuda::upload_layouts(dev, dtype, cols, layouts.collect())
                        .map_err(|e| layout(e.to_string()))?;
                    Weight::Int4Cuda(on_gpu)
                }
                Form::Int8(_) => {
                    let ws: Vec<W8Matrix> =
                        run.into_iter().filter_map(|f| if let Form::Int8(w) = f { Some(w) } else { None }).collect();
                    match W8Cuda::upload(dev, dtype, &ws, false).map_err(|e| layout(e.to_string()))? {
                        Some(on_gpu) => Weight::W8Cuda(on_gpu),
                        None => dense(self)?,
                    }
                }
                Form::Dense => dense(self)?,
            });
            at = end;
        }
        Ok(Some(if runs.len() == 1 { runs.remove(0) } else { Weight::Rows(runs) }))
    }
}
