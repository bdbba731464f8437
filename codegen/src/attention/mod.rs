//! The attention template: `q·kᵀ·scale → score modifier → causal softmax → ·v` over the paged
//! KV cache, instantiated from a `#[fused]` fn whose body is `attention(q, kv, scale, |score,
//! q_pos, k_pos, head| ...)`. The closure is the **score modifier** (FlexAttention's
//! `score_mod`, in Rust): it maps one raw score to the score the softmax sees; `-inf` masks the
//! key. Causality is the template's (a query attends to keys at positions `<= q_pos`), so the
//! modifier adds only what a model needs on top: a sliding window, ALiBi, a logit softcap.
//!
//! Representation: an [`AttnKernel`] holds the modifier as an ordinary row kernel of this IR
//! (one row = the scores of one query head against a run of keys), so the passes, the verifier
//! and the CPU backend apply to it unchanged, and the CUDA emitter turns it into one scalar
//! device function spliced into the template ([`crate::cuda::attention`]).
//!
//! Invariants of a score modifier (checked by [`verify_score_mod`]):
//! - parameters `0..4` have the kinds of [`MOD_PARAMS`] (their names are the closure's own):
//!   `score: Row<f32>` (the scaled dot product),
//!   `q_pos: PerRow<i32>` (the query's position), `k_pos: Bcast<i32>` (each key's position),
//!   `head: PerRow<i32>` (the query head); every further parameter is a `#[comptime]` scalar of
//!   the attention fn, in its declaration order;
//! - one output, `Row<f32>`, not scattered; no reductions, RoPE or softmax (a modifier is
//!   elementwise: it sees one score at a time);
//! - [`AttnKernel::scale`] is a constant or one of the comptime parameters (f32).

pub mod abi;
pub mod def;

use crate::compile::CompileError;
use crate::ir::{DType, Kernel, Op, OutputKind, ParamKind};
use serde::{Deserialize, Serialize};

/// The fixed leading parameters of every score modifier, in order: their roles (the names
/// generated code uses) and kinds.
pub const MOD_PARAMS: [(&str, ParamKind); 4] = [
    ("score", ParamKind::Row(DType::F32)),
    ("q_pos", ParamKind::PerRow(DType::I32)),
    ("k_pos", ParamKind::Bcast(DType::I32)),
    ("head", ParamKind::PerRow(DType::I32)),
];

/// The name of the comptime parameter that is the template's key window (see
/// [`AttnKernel::window_param`]).
pub const WINDOW_PARAM: &str = "window";

/// The name of the modifier's one output.
pub const MOD_OUTPUT: &str = "score";

/// How the raw dot product is scaled before the modifier sees it.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Scale {
    /// A literal in the source.
    Const(f32),
    /// Comptime parameter `n` of the score modifier (an index into its `params`, `>= 4`).
    Param(u32),
}

/// One specialisation (storage dtype) of an attention fn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttnKernel {
    /// The source fn's name.
    pub name: String,
    /// `file:line` of the source fn.
    pub source: String,
    /// Storage dtype of q, the K/V pools and the output.
    pub dtype: DType,
    pub scale: Scale,
    /// The score modifier (see the module docs).
    pub score_mod: Kernel,
}

impl AttnKernel {
    /// `name_dtype`, the specialisation's stable name.
    pub fn spec_name(&self) -> String {
        format!("{}_{}", self.name, self.dtype)
    }

    /// The comptime parameters (what a launch passes besides the tensors), in order.
    pub fn comptimes(&self) -> &[crate::ir::Param] {
        self.score_mod.params.get(MOD_PARAMS.len()..).unwrap_or(&[])
    }

    /// The index (into the modifier's params) of the attention fn's `window` parameter, when it
    /// has one: a `#[comptime] window: i32` is the template's **key window**, not only the
    /// modifier's. Both backends then visit only keys `q_pos - window < k_pos <= q_pos` (work in
    /// proportion to the window, not the context) and mask the rest themselves, so skipping is
    /// exact whatever the modifier does with the value. `window <= 0` means no window.
    pub fn window_param(&self) -> Option<usize> {
        self.score_mod
            .params
            .iter()
            .enumerate()
            .skip(MOD_PARAMS.len())
            .find(|(_, p)| p.name == WINDOW_PARAM && p.kind == ParamKind::Comptime(DType::I32))
            .map(|(i, _)| i)
    }

    /// Whether the modifier returns its score unchanged (backends then skip it).
    pub fn mod_is_identity(&self) -> bool {
        let k = &self.score_mod;
        k.outputs.first().is_some_and(|o| matches!(k.nodes.get(o.value.index()).map(|n| &n.op), Some(Op::Param(0))))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttnError {
    #[error("score modifier of `{name}`: {what}")]
    ScoreMod { name: String, what: String },
}

/// Check the score-modifier rules of the module docs (on top of the IR verifier's).
pub fn verify_score_mod(a: &AttnKernel) -> Result<(), AttnError> {
    let k = &a.score_mod;
    let bad = |what: String| Err(AttnError::ScoreMod { name: a.name.clone(), what });
    for (i, (name, kind)) in MOD_PARAMS.iter().enumerate() {
        match k.params.get(i) {
            Some(p) if p.kind == *kind && p.index.is_none() => {}
            Some(p) => return bad(format!("parameter {i} is `{}: {:?}`, expected `{name}: {kind:?}`", p.name, p.kind)),
            None => return bad(format!("parameter {i} (`{name}`) is missing")),
        }
    }
    if let Some(p) = k.params[MOD_PARAMS.len()..].iter().find(|p| !matches!(p.kind, ParamKind::Comptime(_))) {
        return bad(format!("`{}` must be a #[comptime] scalar: a modifier sees one score at a time", p.name));
    }
    match k.outputs.as_slice() {
        [o] if o.kind == OutputKind::Row(DType::F32) && o.index.is_none() => {}
        _ => return bad("it must have exactly one output, the f32 score".into()),
    }
    for (i, n) in k.nodes.iter().enumerate() {
        if matches!(n.op, Op::Reduce(..) | Op::Rope { .. } | Op::Softmax(_)) {
            return bad(format!(
                "%{i} = {}: a modifier is elementwise (no reductions, RoPE or softmax)",
                k.op_text(&n.op)
            ));
        }
    }
    match a.scale {
        Scale::Const(x) if x.is_finite() => Ok(()),
        Scale::Const(x) => bad(format!("scale {x} is not finite")),
        Scale::Param(i) => match k.params.get(i as usize) {
            Some(p) if i as usize >= MOD_PARAMS.len() && p.kind == ParamKind::Comptime(DType::F32) => Ok(()),
            _ => bad(format!("scale names parameter #{i}, which is not an f32 #[comptime] parameter")),
        },
    }
}

/// A lowered attention specialisation with its CUDA source.
#[derive(Clone, Debug)]
pub struct CompiledAttn {
    /// The kernel with its score modifier lowered (passes run, lowered rules verified).
    pub kernel: AttnKernel,
    /// The complete, self-contained CUDA C source of the template instance.
    pub cuda: String,
}

/// Lower the score modifier, check the attention rules, emit the CUDA template instance.
pub fn compile_attention(a: AttnKernel) -> Result<CompiledAttn, CompileError> {
    let spec = a.spec_name();
    let err = |msg: String| CompileError::Emit { kernel: spec.clone(), msg };
    verify_score_mod(&a).map_err(|e| err(e.to_string()))?;
    let lowered = crate::passes::lower(a.score_mod.clone())?;
    let kernel = AttnKernel { score_mod: lowered, ..a };
    verify_score_mod(&kernel).map_err(|e| err(e.to_string()))?;
    let cuda = crate::cuda::attention::emit(&kernel)?;
    Ok(CompiledAttn { kernel, cuda })
}
