//! [`Builder`]: the only way frontends (the `#[fused]` macro, tests) make a [`Kernel`].
//! Every node is typed as it is added (through [`crate::typeck::infer`]), so a builder can
//! never produce an ill-typed kernel; errors say which op and which operand types.

use crate::ir::{
    BinaryOp, CmpOp, Const, DType, Kernel, Llama3Scaling, Node, Op, Output, OutputKind, Param, ParamKind, ReduceOp,
    RopeStyle, Shape, Ty, UnaryOp, ValueId,
};
use crate::typeck::{infer, TypeError};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Type(#[from] TypeError),
    #[error("duplicate name `{0}`")]
    Duplicate(String),
    #[error("output `{name}` is {got} but a {kind} output needs {want}")]
    OutputShape { name: String, kind: &'static str, got: Ty, want: &'static str },
    #[error("kernel has no outputs")]
    NoOutputs,
    #[error("parameter index {0} is out of range")]
    NoSuchParam(u32),
}

/// Builds one specialisation (one storage dtype) of a row kernel.
pub struct Builder {
    k: Kernel,
}

impl Builder {
    /// `name`: the source function; `source`: `file:line` for headers; `dtype`: the storage
    /// dtype of this specialisation.
    pub fn new(name: &str, source: &str, dtype: DType) -> Builder {
        Builder {
            k: Kernel {
                name: name.to_string(),
                source: source.to_string(),
                dtype,
                params: vec![],
                nodes: vec![],
                outputs: vec![],
            },
        }
    }

    pub fn dtype(&self) -> DType {
        self.k.dtype
    }

    pub fn ty(&self, v: ValueId) -> Ty {
        self.k.ty(v)
    }

    /// Declare a parameter and return the value of loading it.
    pub fn param(&mut self, name: &str, kind: ParamKind) -> Result<ValueId, BuildError> {
        if self.k.params.iter().any(|p| p.name == name) {
            return Err(BuildError::Duplicate(name.to_string()));
        }
        self.k.params.push(Param { name: name.to_string(), kind, index: None });
        let idx = (self.k.params.len() - 1) as u32;
        let v = self.push(Op::Param(idx))?;
        self.name(v, name);
        Ok(v)
    }

    /// Make `Row` param `param` a gather: problem row `r` reads tensor row `index[r]`, where
    /// `index` is an earlier declared `PerRow(I32)` parameter (checked by the verifier).
    pub fn gather(&mut self, param: u32, index: u32) -> Result<(), BuildError> {
        let p = self.k.params.get_mut(param as usize).ok_or(BuildError::NoSuchParam(param))?;
        p.index = Some(index);
        Ok(())
    }

    /// Index of a declared parameter (for `rope`, which names its tensor operand).
    pub fn param_index(&self, name: &str) -> Option<u32> {
        self.k.params.iter().position(|p| p.name == name).map(|i| i as u32)
    }

    /// Add a node; its type is inferred.
    pub fn push(&mut self, op: Op) -> Result<ValueId, BuildError> {
        let ty = infer(&self.k.params, &self.k.nodes, &op)?;
        self.k.nodes.push(Node { op, ty, name: None });
        Ok(ValueId((self.k.nodes.len() - 1) as u32))
    }

    /// Attach a source-level name (`let h = ...`) to a node, for readable emitted code.
    /// The first name wins (a param keeps its own name when rebound).
    pub fn name(&mut self, v: ValueId, name: &str) {
        let n = &mut self.k.nodes[v.index()];
        if n.name.is_none() {
            n.name = Some(name.to_string());
        }
    }

    pub fn constant(&mut self, c: Const) -> ValueId {
        self.push(Op::Const(c)).expect("constants always type-check")
    }
    pub fn f32(&mut self, x: f32) -> ValueId {
        self.constant(Const::F32(x))
    }
    pub fn unary(&mut self, u: UnaryOp, a: ValueId) -> Result<ValueId, BuildError> {
        self.push(Op::Unary(u, a))
    }
    pub fn binary(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> Result<ValueId, BuildError> {
        self.push(Op::Binary(b, x, y))
    }
    pub fn cmp(&mut self, c: CmpOp, x: ValueId, y: ValueId) -> Result<ValueId, BuildError> {
        self.push(Op::Cmp(c, x, y))
    }
    pub fn select(&mut self, c: ValueId, a: ValueId, b: ValueId) -> Result<ValueId, BuildError> {
        self.push(Op::Select(c, a, b))
    }
    pub fn reduce(&mut self, r: ReduceOp, a: ValueId) -> Result<ValueId, BuildError> {
        self.push(Op::Reduce(r, a))
    }
    pub fn softmax(&mut self, a: ValueId) -> Result<ValueId, BuildError> {
        self.push(Op::Softmax(a))
    }
    /// The column index (`Elem` I32).
    pub fn column(&mut self) -> ValueId {
        self.push(Op::Column).expect("the column index always type-checks")
    }
    /// Cast, skipping the node when `a` already has dtype `d`.
    pub fn cast(&mut self, a: ValueId, d: DType) -> Result<ValueId, BuildError> {
        if self.ty(a).dtype == d {
            return Ok(a);
        }
        self.push(Op::Cast(a, d))
    }
    /// Widen a narrow float (f16, bf16, e4m3) to f32 (arithmetic runs in f32); other dtypes unchanged.
    pub fn widen(&mut self, a: ValueId) -> Result<ValueId, BuildError> {
        if self.ty(a).dtype.is_narrow() {
            self.cast(a, DType::F32)
        } else {
            Ok(a)
        }
    }
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &mut self,
        x: ValueId,
        pos: ValueId,
        theta: ValueId,
        head_dim: ValueId,
        style: RopeStyle,
        scaling: Option<Llama3Scaling>,
    ) -> Result<ValueId, BuildError> {
        self.push(Op::Rope { x, pos, theta, head_dim, style, scaling })
    }

    /// RoPE with the inverse frequencies read from `Bcast(F32)` parameter `table` (see
    /// [`Op::RopeTable`]).
    pub fn rope_table(
        &mut self,
        x: ValueId,
        pos: ValueId,
        table: u32,
        head_dim: ValueId,
        style: RopeStyle,
    ) -> Result<ValueId, BuildError> {
        self.push(Op::RopeTable { x, pos, head_dim, style, table })
    }

    /// Declare an output. A value of a different dtype is cast to the output's dtype.
    pub fn output(&mut self, name: &str, kind: OutputKind, v: ValueId) -> Result<(), BuildError> {
        if self.k.outputs.iter().any(|o| o.name == name) || self.k.params.iter().any(|p| p.name == name) {
            return Err(BuildError::Duplicate(name.to_string()));
        }
        let t = self.ty(v);
        match (kind, t.shape) {
            (OutputKind::Row(_), Shape::Uniform) => {
                return Err(BuildError::OutputShape {
                    name: name.into(),
                    kind: "Row",
                    got: t,
                    want: "a per-column value",
                })
            }
            (OutputKind::PerRow(_), Shape::Elem) => {
                return Err(BuildError::OutputShape {
                    name: name.into(),
                    kind: "PerRow",
                    got: t,
                    want: "a per-row value (reduce it first)",
                })
            }
            _ => {}
        }
        let v = self.cast(v, kind.dtype())?;
        self.k.outputs.push(Output { name: name.to_string(), kind, value: v, index: None });
        Ok(())
    }

    /// Declare a scattered `Row` output: problem row `r` is written to tensor row `index[r]`
    /// (`index` a `PerRow(I32)` parameter; a negative value skips the row).
    pub fn output_at(&mut self, name: &str, kind: OutputKind, v: ValueId, index: u32) -> Result<(), BuildError> {
        self.output(name, kind, v)?;
        if let Some(o) = self.k.outputs.last_mut() {
            o.index = Some(index);
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Kernel, BuildError> {
        if self.k.outputs.is_empty() {
            return Err(BuildError::NoOutputs);
        }
        Ok(self.k)
    }
}
