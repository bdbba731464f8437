//! Inputs for one check case: random, never zero, identical bits on the CPU and the GPU.
//!
//! - float tensors: uniform in ±[0.1, 1) (random sign), so no element is zero and nothing
//!   cancels to exactly zero by construction;
//! - i32 tensors (positions): uniform in [0, 4096);
//! - row indices: a gather index takes rows of a table [`EXTRA_ROWS`] rows taller than the
//!   problem, in random order with repeats; a scatter index names distinct rows of an output
//!   that much taller, every fifth entry -1 (skipped);
//! - comptime values by parameter name ([`comptime_value`]), e.g. `eps` 1e-5, `theta` 10000,
//!   `head_dim` 64 (every checked width is a multiple of it).
//!
//! Each tensor is made on the CPU from f32 data (rounded once to its dtype) and copied to the
//! GPU byte for byte, so both backends see the same inputs.

use crate::device::fused::Arg;
use crate::device::tensor::{Tensor, TensorError};
use crate::device::Device;
use kiln_codegen::ir::{DType, Kernel, OutputKind, ParamKind};
use rand::rngs::StdRng;
use rand::Rng;

/// One argument, owned: a tensor (on the CPU and the GPU) or a comptime scalar.
pub(crate) enum Input {
    Tensor { cpu: Tensor, gpu: Tensor },
    F32(f32),
    I32(i32),
    Bool(bool),
}

impl Input {
    pub fn cpu_arg(&self) -> Arg<'_> {
        self.arg(true)
    }
    pub fn gpu_arg(&self) -> Arg<'_> {
        self.arg(false)
    }
    fn arg(&self, cpu: bool) -> Arg<'_> {
        match self {
            Input::Tensor { cpu: c, gpu: g } => Arg::Tensor(if cpu { c } else { g }),
            Input::F32(x) => Arg::F32(*x),
            Input::I32(x) => Arg::I32(*x),
            Input::Bool(x) => Arg::Bool(*x),
        }
    }
    /// A copy with its own GPU storage (for rotating buffer sets while timing).
    pub fn gpu_copy(&self) -> Result<Input, TensorError> {
        Ok(match self {
            Input::Tensor { cpu, gpu } => Input::Tensor { cpu: cpu.clone(), gpu: gpu.deep_copy()? },
            Input::F32(x) => Input::F32(*x),
            Input::I32(x) => Input::I32(*x),
            Input::Bool(x) => Input::Bool(*x),
        })
    }

    /// Bytes a kernel reads from this input once.
    pub fn bytes(&self) -> usize {
        match self {
            Input::Tensor { cpu, .. } => cpu.len() * cpu.dtype().to_ir().size_bytes(),
            _ => 0,
        }
    }
}

/// The value a comptime parameter is checked with, by name; `None` for an unknown name of a
/// float (the caller then uses 0.5), and defaults 1 / false for unknown i32 / bool.
pub fn comptime_value(name: &str) -> Option<f64> {
    Some(match name {
        "eps" | "epsilon" | "rms_eps" | "norm_eps" => 1e-5,
        "theta" | "rope_theta" | "base" => 10000.0,
        "head_dim" => 64.0,
        "factor" | "scaling_factor" => 8.0,
        "low_freq_factor" => 1.0,
        "high_freq_factor" => 4.0,
        "original_max_position" | "original_max_position_embeddings" => 8192.0,
        // MoE routing: renormalise the chosen experts' weights (Mixtral, Qwen3-MoE).
        "norm" => 1.0,
        _ => return None,
    })
}

/// Rows a gathered table or a scattered output has beyond the problem's rows.
pub(crate) const EXTRA_ROWS: usize = 3;

/// Rows of the tensor behind a Row param or output: more when it is indexed.
pub(crate) fn tensor_rows(rows: usize, indexed: bool) -> usize {
    if indexed {
        rows + EXTRA_ROWS
    } else {
        rows
    }
}

/// Random inputs for every parameter of `k` over `rows × width`.
pub(crate) fn make_inputs(
    k: &Kernel,
    gpu: &Device,
    rows: usize,
    width: usize,
    overrides: &[(String, f64)],
    rng: &mut StdRng,
) -> Result<Vec<Input>, TensorError> {
    let mut out = vec![];
    for (i, p) in k.params.iter().enumerate() {
        let value = overrides.iter().find(|(n, _)| *n == p.name).map(|(_, v)| *v).or_else(|| comptime_value(&p.name));
        let scatters = k.outputs.iter().any(|o| o.index == Some(i as u32));
        let gathers = k.params.iter().any(|q| q.index == Some(i as u32));
        if scatters || gathers {
            out.push(index_tensor(rows, scatters, gpu, rng)?);
            continue;
        }
        out.push(match p.kind {
            ParamKind::Row(d) => tensor(d, tensor_rows(rows, p.index.is_some()), width, gpu, rng)?,
            ParamKind::Bcast(d) => tensor(d, 1, width, gpu, rng)?,
            ParamKind::PerRow(d) => tensor(d, 1, rows, gpu, rng)?,
            ParamKind::Comptime(DType::I32) => Input::I32(value.unwrap_or(1.0) as i32),
            ParamKind::Comptime(DType::Bool) => Input::Bool(value.is_some_and(|v| v != 0.0)),
            ParamKind::Comptime(_) => Input::F32(value.unwrap_or(0.5) as f32),
        });
    }
    Ok(out)
}

/// A row index over a tensor of `rows + EXTRA_ROWS` rows (see the module docs).
fn index_tensor(rows: usize, distinct: bool, gpu: &Device, rng: &mut StdRng) -> Result<Input, TensorError> {
    let n = rows + EXTRA_ROWS;
    let idx: Vec<i32> = if distinct {
        let mut perm: Vec<i32> = (0..n as i32).collect();
        for i in (1..n).rev() {
            perm.swap(i, rng.random_range(0..=i));
        }
        perm.truncate(rows);
        for (j, x) in perm.iter_mut().enumerate() {
            if j % 5 == 4 {
                *x = -1;
            }
        }
        perm
    } else {
        (0..rows).map(|_| rng.random_range(0..n as i32)).collect()
    };
    let cpu = Tensor::vector(&Device::Cpu, &idx)?;
    let gpu = cpu.to_device(gpu)?;
    Ok(Input::Tensor { cpu, gpu })
}

fn tensor(d: DType, rows: usize, cols: usize, gpu: &Device, rng: &mut StdRng) -> Result<Input, TensorError> {
    let n = rows * cols;
    let data: Vec<f32> = if d == DType::I32 {
        (0..n).map(|_| rng.random_range(0..4096) as f32).collect()
    } else {
        (0..n)
            .map(|_| {
                let m: f32 = rng.random_range(0.1..1.0);
                if rng.random::<bool>() {
                    m
                } else {
                    -m
                }
            })
            .collect()
    };
    let cpu = Tensor::from_f32_as(&Device::Cpu, storage(d)?, &data, rows, cols)?;
    let gpu = cpu.to_device(gpu)?;
    Ok(Input::Tensor { cpu, gpu })
}

/// Output tensors for `k` on `dev`, filled with a poison value (NaN for floats, `i32::MIN`
/// for i32) so unwritten elements are detectable; `pad` extra columns each (a Row output is
/// `rows × (width+pad)`, a PerRow output `1 × (rows+pad)`).
pub(crate) fn poisoned_outputs(
    k: &Kernel,
    dev: &Device,
    rows: usize,
    width: usize,
    pad: usize,
) -> Result<Vec<Tensor>, TensorError> {
    k.outputs
        .iter()
        .map(|o| {
            let (r, c) = match o.kind {
                OutputKind::Row(_) => (tensor_rows(rows, o.index.is_some()), width + pad),
                OutputKind::PerRow(_) => (1, rows + pad),
            };
            let d = o.kind.dtype();
            let fill = if d == DType::I32 { i32::MIN as f32 } else { f32::NAN };
            Tensor::from_f32_as(dev, storage(d)?, &vec![fill; r * c], r, c)
        })
        .collect()
}

/// Bytes a kernel writes to these outputs once.
pub(crate) fn output_bytes(outs: &[Tensor]) -> usize {
    outs.iter().map(|t| t.len() * t.dtype().to_ir().size_bytes()).sum()
}

/// The storage dtype of a kernel parameter's IR type (a `Bool` is never stored).
fn storage(d: DType) -> Result<crate::DType, TensorError> {
    crate::DType::from_ir(d).ok_or(TensorError::NotStorable(d))
}
