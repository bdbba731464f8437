//! Launching a `#[fused]` kernel ([`FusedDef`]) on a [`Device`]: [`launch`].
//!
//! One call: pick the specialisation whose dtypes match the tensors given, validate every
//! argument against it (errors name the kernel and the parameter), then run it on the CPU
//! backend (the codegen interpreter) or on the GPU (NVRTC-compiled, cached).
//!
//! Invariants:
//! - arguments come in the kernel's parameter order, outputs in its output order;
//! - `rows` and `width` are taken from the first `Row` tensor (inputs first, then outputs);
//!   every `Row` tensor is exactly `rows × width`, every `Bcast` vector has `width` elements,
//!   every `PerRow` vector `rows` elements (see [`Tensor::vector_len`]);
//! - nothing is launched or written unless every check passed;
//! - outputs may share storage with inputs or with each other (q/k/v views of one buffer): the
//!   CPU path then computes into scratch and copies back, so results equal the non-aliased run;
//!   on the GPU, in-place use is the kernel author's contract (each element is read before the
//!   same thread writes it).

use crate::device::cuda_error::CudaError;
use crate::device::tensor::{Tensor, TensorError};
use crate::device::Device;
use kiln_codegen::abi::LaunchError;
use kiln_codegen::fused::FusedDef;
use kiln_codegen::ir::DType;

/// One launch argument, matching one kernel parameter.
#[derive(Clone, Copy, Debug)]
pub enum Arg<'a> {
    /// For `Row`, `Bcast` and `PerRow` parameters.
    Tensor(&'a Tensor),
    /// For `Comptime(F32)` parameters (also `Comptime(F16/BF16)`, rounded).
    F32(f32),
    /// For `Comptime(I32)` parameters.
    I32(i32),
    /// For `Comptime(Bool)` parameters.
    Bool(bool),
}

impl<'a> From<&'a Tensor> for Arg<'a> {
    fn from(t: &'a Tensor) -> Self {
        Arg::Tensor(t)
    }
}
impl From<f32> for Arg<'_> {
    fn from(x: f32) -> Self {
        Arg::F32(x)
    }
}
impl From<i32> for Arg<'_> {
    fn from(x: i32) -> Self {
        Arg::I32(x)
    }
}
impl From<bool> for Arg<'_> {
    fn from(x: bool) -> Self {
        Arg::Bool(x)
    }
}

impl Arg<'_> {
    /// How the argument reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Arg::Tensor(t) => format!("a {}x{} {} tensor", t.rows(), t.cols(), t.dtype()),
            Arg::F32(x) => format!("the f32 {x}"),
            Arg::I32(x) => format!("the i32 {x}"),
            Arg::Bool(x) => format!("the bool {x}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FusedError {
    #[error(transparent)]
    Def(#[from] kiln_codegen::fused::FusedError),
    #[error("kernel `{kernel}` takes {expected} arguments, {got} given")]
    ArgCount { kernel: &'static str, expected: usize, got: usize },
    #[error("kernel `{kernel}` has {expected} outputs, {got} given")]
    OutputCount { kernel: &'static str, expected: usize, got: usize },
    #[error("kernel `{kernel}`, `{param}`: expected {expected}, got {got}")]
    ArgKind { kernel: &'static str, param: String, expected: String, got: String },
    #[error("kernel `{kernel}`, `{param}`: tensor is {got}, but the {spec} specialisation needs {expected}")]
    DType { kernel: &'static str, param: String, spec: DType, expected: DType, got: DType },
    #[error("kernel `{kernel}`, `{param}`: {what}")]
    Shape { kernel: &'static str, param: String, what: String },
    #[error("kernel `{kernel}` has no Row tensor to take rows and width from")]
    NoRowTensor { kernel: &'static str },
    #[error("kernel `{kernel}`, `{param}`: tensor is on {tensor}, the launch is on {launch}")]
    WrongDevice { kernel: &'static str, param: String, tensor: String, launch: String },
    #[error("kernel `{kernel}` ({dtype}): the embedded CUDA source differs from what codegen emits for its IR (stale build?)")]
    StaleSource { kernel: &'static str, dtype: DType },
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("kernel `{kernel}` on the CPU: {source}")]
    Cpu { kernel: &'static str, source: kiln_codegen::cpu::CpuError },
    #[error("kernel `{kernel}` on {device}: {source}")]
    Cuda { kernel: &'static str, device: String, source: CudaError },
    #[error("kernel `{kernel}`: {source}")]
    Tensor { kernel: &'static str, source: TensorError },
}

/// Run `def` on `dev`: `args` in parameter order, `outs` in output order.
pub fn launch(
    dev: &Device,
    def: &'static FusedDef,
    args: &[Arg<'_>],
    outs: &mut [&mut Tensor],
) -> Result<(), FusedError> {
    let bound = crate::device::fused_bind::bind(dev, def, args, outs)?;
    match dev {
        Device::Cpu => crate::device::fused_cpu::run(&bound, args, outs),
        Device::Cuda(b) => crate::device::fused_cuda::run(b, &bound, args, outs),
    }
}
