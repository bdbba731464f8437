//! One check case: a kernel × dtype × shape × layout, run on the CPU and the GPU, compared,
//! then (for the dense layout) timed.
//!
//! Layouts: `Dense` uses contiguous, 256-aligned tensors, so the vectorised entry runs (every
//! checked width is a multiple of 8). `Offset` uses views one column into `rows × (n+1)`
//! parents — row stride n+1, pointers off 16-byte alignment — so the scalar `_v1` entry runs;
//! its outputs' untouched column 0 must still hold the poison afterwards (no stray writes).
//!
//! On the CPU device the "GPU" side is the CPU again: a self-test of this harness (CI runs
//! it); nothing is timed.

use super::compare::{compare, tolerance, Diff};
use super::inputs::{make_inputs, output_bytes, poisoned_outputs, Input};
use super::timing::{median_us, rotation_sets};
use super::{CaseResult, CheckConfig, CheckError};
use crate::device::cuda_backend::CudaBackend;
use crate::device::fused::{launch, Arg};
use crate::device::tensor::Tensor;
use crate::device::Device;
use kiln_codegen::fused::FusedDef;
use kiln_codegen::ir::{DType, Kernel, OutputKind};
use rand::rngs::StdRng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Dense,
    Offset,
}

pub(crate) struct Case<'a> {
    pub def: &'static FusedDef,
    pub dtype: DType,
    pub rows: usize,
    pub width: usize,
    pub layout: Layout,
    pub cfg: &'a CheckConfig,
}

impl Case<'_> {
    pub fn run(&self, gpu: &Device, rng: &mut StdRng) -> CaseResult {
        let mut r = CaseResult {
            kernel: self.def.name.to_string(),
            dtype: self.dtype,
            rows: self.rows,
            width: self.width,
            layout: self.layout,
            diff: Diff::default(),
            pass: false,
            median_us: None,
            bytes: 0,
            error: None,
        };
        match self.check(gpu, rng, &mut r) {
            Ok(()) => {}
            Err(e) => {
                r.pass = false;
                r.error = Some(e.to_string());
            }
        }
        r
    }

    fn check(&self, gpu: &Device, rng: &mut StdRng, r: &mut CaseResult) -> Result<(), CheckError> {
        let k: &Kernel = &self.def.compiled(self.dtype).map_err(crate::device::fused::FusedError::from)?.kernel;
        let inputs = make_inputs(k, gpu, self.rows, self.width, &self.cfg.comptime, rng)?;
        let inputs = match self.layout {
            Layout::Dense => inputs,
            Layout::Offset => offset_inputs(inputs, gpu)?,
        };
        let (mut cpu_parents, mut cpu_outs) = self.outputs(k, &Device::Cpu)?;
        let (mut gpu_parents, mut gpu_outs) = self.outputs(k, gpu)?;

        let cpu_args: Vec<Arg<'_>> = inputs.iter().map(|i| i.cpu_arg()).collect();
        launch(&Device::Cpu, self.def, &cpu_args, &mut cpu_outs.iter_mut().collect::<Vec<_>>())?;
        let gpu_args: Vec<Arg<'_>> = inputs.iter().map(|i| i.gpu_arg()).collect();
        launch(gpu, self.def, &gpu_args, &mut gpu_outs.iter_mut().collect::<Vec<_>>())?;
        gpu.synchronize()?;

        let mut diff = Diff::default();
        for (o, (g, c)) in k.outputs.iter().zip(gpu_outs.iter().zip(&cpu_outs)) {
            let int = o.kind.dtype() == DType::I32;
            let (g, c) = (g.to_host_f32()?, c.to_host_f32()?);
            match o.index {
                None => diff = diff.worst(compare(&g, &c, int)),
                Some(i) => {
                    // A scattered output: compare the rows written; the rest must stay poison.
                    let Some(Input::Tensor { cpu: idx, .. }) = inputs.get(i as usize) else { continue };
                    let slots = idx.to_host::<i32>()?;
                    let w = g.len() / (self.rows + super::inputs::EXTRA_ROWS);
                    let (mut gw, mut cw) = (vec![], vec![]);
                    for (r, (gr, cr)) in g.chunks(w).zip(c.chunks(w)).enumerate() {
                        if slots.contains(&(r as i32)) {
                            gw.extend_from_slice(gr);
                            cw.extend_from_slice(cr);
                        } else if gr.iter().any(|x| !(x.is_nan() || *x == i32::MIN as f32)) {
                            return Err(CheckError::Stray { kernel: self.def.name.to_string(), count: w });
                        }
                    }
                    diff = diff.worst(compare(&gw, &cw, int));
                }
            }
        }
        // Offset layout: column 0 of every output parent must be untouched poison.
        for p in gpu_parents.iter_mut().chain(cpu_parents.iter_mut()) {
            let col0 = p.view_cols(0, 1)?.to_host_f32()?;
            let stray = col0.iter().filter(|x| !(x.is_nan() || **x == i32::MIN as f32)).count();
            if stray > 0 {
                return Err(CheckError::Stray { kernel: self.def.name.to_string(), count: stray });
            }
        }
        let out_dtype =
            k.outputs
                .iter()
                .map(|o| o.kind.dtype())
                .fold(DType::F32, |a, d| if tolerance(d) > tolerance(a) { d } else { a });
        r.diff = diff;
        r.pass = diff.passes(self.cfg.tolerance.unwrap_or_else(|| tolerance(out_dtype)));

        r.bytes = inputs.iter().map(Input::bytes).sum::<usize>() + output_bytes(&gpu_outs);
        // Timing needs CUDA events: on the CPU device (a self-test of the harness) it is skipped.
        if let (Some(backend), Layout::Dense, true) = (gpu.cuda_backend(), self.layout, self.cfg.reps > 0) {
            r.median_us = Some(self.time(gpu, backend, &inputs, gpu_outs, r.bytes)?);
        }
        Ok(())
    }

    /// Poisoned outputs: (parents, views). Dense: the views are the tensors, no parents.
    fn outputs(&self, k: &Kernel, dev: &Device) -> Result<(Vec<Tensor>, Vec<Tensor>), CheckError> {
        let pad = match self.layout {
            Layout::Dense => 0,
            Layout::Offset => 1,
        };
        let parents = poisoned_outputs(k, dev, self.rows, self.width, pad)?;
        if pad == 0 {
            return Ok((vec![], parents));
        }
        let views = k
            .outputs
            .iter()
            .zip(&parents)
            .map(|(o, p)| {
                let n = match o.kind {
                    OutputKind::Row(_) => self.width,
                    OutputKind::PerRow(_) => self.rows,
                };
                p.view_cols(1, n)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((parents, views))
    }

    fn time(
        &self,
        gpu: &Device,
        b: &CudaBackend,
        inputs: &[Input],
        outs: Vec<Tensor>,
        bytes: usize,
    ) -> Result<f64, CheckError> {
        let sets = rotation_sets(bytes, b.l2_bytes());
        let mut in_sets: Vec<Vec<Input>> = vec![];
        let mut out_sets: Vec<Vec<Tensor>> = vec![outs];
        for _ in 1..sets {
            in_sets.push(inputs.iter().map(|i| i.gpu_copy()).collect::<Result<_, _>>()?);
            out_sets.push(out_sets[0].iter().map(|t| t.deep_copy()).collect::<Result<_, _>>()?);
        }
        median_us(b, self.cfg.warmup, self.cfg.reps, |i| {
            let s = i % sets;
            let ins = if s == 0 { inputs } else { &in_sets[s - 1] };
            let args: Vec<Arg<'_>> = ins.iter().map(|x| x.gpu_arg()).collect();
            let mut outs: Vec<&mut Tensor> = out_sets[s].iter_mut().collect();
            launch(gpu, self.def, &args, &mut outs)?;
            Ok(())
        })
    }
}

/// Re-make each tensor input as a view one column into a `rows × (cols+1)` parent (CPU and
/// GPU alike, same values).
fn offset_inputs(inputs: Vec<Input>, gpu: &Device) -> Result<Vec<Input>, CheckError> {
    inputs
        .into_iter()
        .map(|i| match i {
            Input::Tensor { cpu, .. } => {
                let (r, c) = (cpu.rows(), cpu.cols());
                let vals = cpu.to_host_f32()?;
                let mut wide = vec![0.25f32; r * (c + 1)];
                for (row, src) in wide.chunks_exact_mut(c + 1).zip(vals.chunks_exact(c)) {
                    row[1..].copy_from_slice(src);
                }
                let parent = Tensor::from_f32_as(&Device::Cpu, cpu.dtype(), &wide, r, c + 1)?;
                let gparent = parent.to_device(gpu)?;
                Ok(Input::Tensor { cpu: parent.view_cols(1, c)?, gpu: gparent.view_cols(1, c)? })
            }
            other => Ok(other),
        })
        .collect()
}
