//! The fused IR: one closed SSA enum ([`Op`]) for the body of a **row kernel**.
//!
//! A row kernel runs over a `[rows, width]` problem. Every value is typed ([`Ty`]): a
//! [`DType`] and a [`Shape`]:
//! - [`Shape::Elem`]: one value per column of the current row (a vector of `width` values);
//! - [`Shape::Uniform`]: one value for the whole row (a reduction result, a per-row scalar
//!   such as a token position, a constant or a comptime argument).
//!
//! Invariants (checked by [`crate::verify`]):
//! - nodes are in SSA order: an operand always names an earlier node;
//! - node `i` has id `ValueId(i)`;
//! - binary ops take operands of the same dtype; an `Elem` op a `Uniform` broadcasts to `Elem`;
//! - reductions take an `Elem` float operand and produce a `Uniform` value (f32; `ArgMax`
//!   an i32 column);
//! - `Rope` / `RopeTable` rotate an `Elem` f32 value that is *column-local*: every `Elem` node
//!   it is computed from is a `Row`/`Bcast` parameter load, a constant or elementwise
//!   arithmetic (no rope, no reduction over `Elem` values feeds it), so a backend can evaluate
//!   it at the partner column as well (`x + bias`, `x * inv_rms * w` before RoPE);
//!   `RopeTable` reads its frequency table straight from a `Bcast(F32)` parameter;
//! - outputs name existing nodes; `Row` outputs are `Elem`, `PerRow` outputs are `Uniform`;
//! - a row index ([`Param::index`], [`Output::index`]) appears only on `Row` params and outputs
//!   and names a `PerRow(I32)` parameter: row `r` of the problem reads (gather) or writes
//!   (scatter) row `index[r]` of that tensor; a negative scatter index skips the row.
//!
//! Adding an op is a checklist the compiler enforces: a variant here, then every `match` on
//! `Op` (verifier, passes, CPU backend, CUDA emitter) fails to build until it is handled.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element types. Arithmetic runs in `F32`/`I32`; `F16`/`BF16` are storage types that the
/// frontend widens on load (`Builder::widen`) and `Builder::output` narrows on store.
/// `F8E4M3` (OCP FP8 e4m3, a byte) is a storage type of quantized activations: a cast to it
/// rounds to the nearest e4m3 value (ties to even) and saturates at ±448 (NaN too), so
/// `x / scale` with `scale = max|x| / 448` never overflows. `I8` (a signed byte) is the other
/// one, for INT8 W8A8: a cast to it rounds to the nearest integer (ties to even) and saturates
/// at ±127 (NaN gives 0), the symmetric range; its codes widen to f32 exactly, so arithmetic
/// carries them as f32 like every narrow type.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    Bool,
    F8E4M3,
    I8,
}

impl DType {
    /// Values that arithmetic carries as f32: the floats, and `I8`'s integer codes.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8)
    }
    pub fn is_half(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }
    /// A storage type narrower than f32 (the halves, e4m3, i8): arithmetic never runs in it —
    /// values are widened to f32 on load and narrowed by a cast on store.
    pub fn is_narrow(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8)
    }
    /// Bytes per element in memory (`Bool` is never stored).
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Bool | DType::F8E4M3 | DType::I8 => 1,
        }
    }
    /// Lower-case name used in kernel names, file names and the text form.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::Bool => "bool",
            DType::F8E4M3 => "e4m3",
            DType::I8 => "i8",
        }
    }
    /// The storage dtypes a kernel can be specialised for.
    pub const STORAGE: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a value varies across the columns of one row.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// One value per column of the row.
    Elem,
    /// One value for the whole row.
    Uniform,
}

impl Shape {
    /// The shape of an elementwise op over operands of these shapes (broadcasting).
    pub fn join(self, other: Shape) -> Shape {
        if self == Shape::Elem || other == Shape::Elem {
            Shape::Elem
        } else {
            Shape::Uniform
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ty {
    pub dtype: DType,
    pub shape: Shape,
}

impl Ty {
    pub fn new(dtype: DType, shape: Shape) -> Ty {
        Ty { dtype, shape }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape {
            Shape::Elem => write!(f, "{}[w]", self.dtype),
            Shape::Uniform => write!(f, "{}", self.dtype),
        }
    }
}

/// What a kernel parameter is, and therefore how it is indexed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParamKind {
    /// A `[rows, width]` tensor (row stride given at launch); loads give `Elem` values.
    Row(DType),
    /// A `[width]` vector shared by all rows; loads give `Elem` values.
    Bcast(DType),
    /// A `[rows]` vector, one value per row (e.g. token positions); loads give `Uniform` values.
    PerRow(DType),
    /// A scalar fixed for the whole launch (e.g. `eps`); a `Uniform` value.
    Comptime(DType),
}

impl ParamKind {
    pub fn dtype(self) -> DType {
        match self {
            ParamKind::Row(d) | ParamKind::Bcast(d) | ParamKind::PerRow(d) | ParamKind::Comptime(d) => d,
        }
    }
    pub fn ty(self) -> Ty {
        match self {
            ParamKind::Row(d) | ParamKind::Bcast(d) => Ty::new(d, Shape::Elem),
            ParamKind::PerRow(d) | ParamKind::Comptime(d) => Ty::new(d, Shape::Uniform),
        }
    }
    /// True for parameters that are device memory (tensors), false for launch scalars.
    pub fn is_tensor(self) -> bool {
        !matches!(self, ParamKind::Comptime(_))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    /// For a `Row` param: the `PerRow(I32)` parameter whose value at row `r` is the tensor row
    /// that problem row `r` reads (a gather, e.g. an embedding lookup). `None`: row `r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

/// What a kernel output is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputKind {
    /// A `[rows, width]` tensor of this dtype, written from an `Elem` value.
    Row(DType),
    /// A `[rows]` vector of this dtype, written from a `Uniform` value.
    PerRow(DType),
}

impl OutputKind {
    pub fn dtype(self) -> DType {
        match self {
            OutputKind::Row(d) | OutputKind::PerRow(d) => d,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    pub kind: OutputKind,
    pub value: ValueId,
    /// For a `Row` output: the `PerRow(I32)` parameter whose value at row `r` is the tensor row
    /// that problem row `r` is written to (a scatter, e.g. a KV-cache slot); a negative index
    /// skips the row. Distinct rows must name distinct tensor rows. `None`: row `r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

/// An SSA value: the index of the node that defines it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Erf,
    Sin,
    Cos,
    /// Logical not (Bool only).
    Not,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Pow,
    /// Logical and / or (Bool only).
    And,
    Or,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    /// The lowest column holding the row's maximum, as `I32` (a NaN counts as `-inf`, so a
    /// row of NaNs or `-inf`s gives column 0): top-k is `k` of these, each masking the
    /// column the previous one chose (MoE routing).
    ArgMax,
}

/// How RoPE pairs the columns of one head.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RopeStyle {
    /// HF checkpoints ("rotate_half"): column `j` pairs with `j ± head_dim/2`.
    HalfSplit,
    /// GPT-J / llama.cpp style: column `2i` pairs with `2i+1`.
    Interleaved,
}

/// Operands of Llama-3 style frequency scaling (all `Uniform` F32 values).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Llama3Scaling {
    pub factor: ValueId,
    pub low_freq_factor: ValueId,
    pub high_freq_factor: ValueId,
    pub original_max_position: ValueId,
}

/// A literal constant.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Const {
    /// Serialised through [`f32_serde`] so that infinities (attention masks) survive JSON.
    F32(#[serde(with = "f32_serde")] f32),
    I32(i32),
    Bool(bool),
}

/// JSON has no infinities or NaN: finite values are plain numbers, the others the strings
/// `"inf"`, `"-inf"` and `"nan"` (the embedded IR of a kernel must read back bit-exact).
mod f32_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f32),
        Text(String),
    }

    pub fn serialize<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
        match *x {
            x if x.is_finite() => Repr::Num(x),
            x if x.is_nan() => Repr::Text("nan".into()),
            x if x > 0.0 => Repr::Text("inf".into()),
            _ => Repr::Text("-inf".into()),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Num(x) => Ok(x),
            Repr::Text(t) => match t.as_str() {
                "inf" => Ok(f32::INFINITY),
                "-inf" => Ok(f32::NEG_INFINITY),
                "nan" => Ok(f32::NAN),
                other => Err(serde::de::Error::custom(format!("`{other}` is not an f32"))),
            },
        }
    }
}

impl Const {
    pub fn dtype(self) -> DType {
        match self {
            Const::F32(_) => DType::F32,
            Const::I32(_) => DType::I32,
            Const::Bool(_) => DType::Bool,
        }
    }
}

/// One IR operation. Operands are earlier [`ValueId`]s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Load parameter `n` (index into [`Kernel::params`]).
    Param(u32),
    Const(Const),
    Unary(UnaryOp, ValueId),
    Binary(BinaryOp, ValueId, ValueId),
    Cmp(CmpOp, ValueId, ValueId),
    /// `select(cond, if_true, if_false)`.
    Select(ValueId, ValueId, ValueId),
    Cast(ValueId, DType),
    /// A row reduction: `Elem` → `Uniform`. A stage boundary.
    Reduce(ReduceOp, ValueId),
    /// Rotate the columns of `x` (an `Elem` F32 value over a row of `n_heads * head_dim`
    /// columns, column-local: see the module invariants) by position `pos` (`Uniform` I32),
    /// base `theta` (`Uniform` F32), head size `head_dim` (`Uniform` I32), with optional
    /// Llama-3 frequency scaling. Result: `Elem` F32.
    Rope {
        x: ValueId,
        pos: ValueId,
        theta: ValueId,
        head_dim: ValueId,
        style: RopeStyle,
        scaling: Option<Llama3Scaling>,
    },
    /// [`Op::Rope`] with the inverse frequencies given as data instead of a formula (LongRoPE,
    /// partial rotary with pass-through pairs at frequency 0, per-dimension `rope_freqs`):
    /// pair `i` of every head turns by `pos * table[c_i]`, where `c_i` is the pair's first column
    /// in head 0 (`i` for `HalfSplit`, `2i` for `Interleaved`). `table` names a `Bcast(F32)`
    /// parameter, so it has `width` entries like every `Bcast` (checked at launch) and
    /// `width >= head_dim`: only head 0's pair-first columns are read, and a caller that fills
    /// every column with its pair's frequency (the table tiled per head) gets the same result.
    /// Result: `Elem` F32.
    RopeTable {
        x: ValueId,
        pos: ValueId,
        head_dim: ValueId,
        style: RopeStyle,
        table: u32,
    },
    /// Row softmax; the `lower_softmax` pass expands it into max / exp / sum / div.
    Softmax(ValueId),
    /// The column index, `Elem` I32 (`0..width`): masks a column a reduction chose.
    Column,
}

impl Op {
    /// The operands of this op, in order.
    pub fn operands(&self) -> Vec<ValueId> {
        match self {
            Op::Param(_) | Op::Const(_) | Op::Column => vec![],
            Op::Unary(_, a) | Op::Cast(a, _) | Op::Reduce(_, a) | Op::Softmax(a) => vec![*a],
            Op::Binary(_, a, b) | Op::Cmp(_, a, b) => vec![*a, *b],
            Op::Select(c, a, b) => vec![*c, *a, *b],
            Op::Rope { x, pos, theta, head_dim, scaling, .. } => {
                let mut v = vec![*x, *pos, *theta, *head_dim];
                if let Some(s) = scaling {
                    v.extend([s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position]);
                }
                v
            }
            Op::RopeTable { x, pos, head_dim, .. } => vec![*x, *pos, *head_dim],
        }
    }

    /// The operands whose value this op reads at its own column: all but a rope's rotated
    /// source, which a backend evaluates itself at both columns of each pair (it is
    /// column-local, see the module invariants), so a schedule never carries it in registers.
    pub fn value_operands(&self) -> Vec<ValueId> {
        match self {
            Op::Rope { x, .. } | Op::RopeTable { x, .. } => self.operands().into_iter().filter(|o| o != x).collect(),
            _ => self.operands(),
        }
    }

    /// The parameters this op reads directly (a `Param` load, a rope's frequency table).
    pub fn params_read(&self) -> Vec<u32> {
        match self {
            Op::Param(p) | Op::RopeTable { table: p, .. } => vec![*p],
            _ => vec![],
        }
    }

    /// Rewrite every operand through `f` (used by passes that renumber nodes).
    pub fn map_operands(&self, mut f: impl FnMut(ValueId) -> ValueId) -> Op {
        match self {
            Op::Param(p) => Op::Param(*p),
            Op::Const(c) => Op::Const(*c),
            Op::Column => Op::Column,
            Op::Unary(u, a) => Op::Unary(*u, f(*a)),
            Op::Cast(a, d) => Op::Cast(f(*a), *d),
            Op::Reduce(r, a) => Op::Reduce(*r, f(*a)),
            Op::Softmax(a) => Op::Softmax(f(*a)),
            Op::Binary(b, x, y) => Op::Binary(*b, f(*x), f(*y)),
            Op::Cmp(c, x, y) => Op::Cmp(*c, f(*x), f(*y)),
            Op::Select(c, x, y) => Op::Select(f(*c), f(*x), f(*y)),
            Op::Rope { x, pos, theta, head_dim, style, scaling } => Op::Rope {
                x: f(*x),
                pos: f(*pos),
                theta: f(*theta),
                head_dim: f(*head_dim),
                style: *style,
                scaling: scaling.map(|s| Llama3Scaling {
                    factor: f(s.factor),
                    low_freq_factor: f(s.low_freq_factor),
                    high_freq_factor: f(s.high_freq_factor),
                    original_max_position: f(s.original_max_position),
                }),
            },
            Op::RopeTable { x, pos, head_dim, style, table } => {
                Op::RopeTable { x: f(*x), pos: f(*pos), head_dim: f(*head_dim), style: *style, table: *table }
            }
        }
    }
}

/// One SSA node: the op, its result type, and the source-level name it was bound to, if any
/// (`let h = ...` gives `h`), used for stable variable names in emitted code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub ty: Ty,
    pub name: Option<String>,
}

/// A row kernel: the unit the macro builds, passes transform, and backends run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    /// The source function's name (`add_rms_norm`).
    pub name: String,
    /// Where the source function lives (`models/src/kernels.rs:12`), for generated headers.
    pub source: String,
    /// The storage dtype this specialisation was built for (`Row`/`Bcast` tensors, `Row` outputs).
    pub dtype: DType,
    pub params: Vec<Param>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<Output>,
}

/// The `Elem` nodes `v` is computed from, `v` included, in SSA order: what a backend evaluates
/// to get `v` at some other column (a rope source at its partner column). The walk stops at
/// `Uniform` values, which are the same at every column. Operands that are not in `nodes` are
/// skipped (the verifier reports them).
pub fn elem_cone(nodes: &[Node], v: ValueId) -> Vec<ValueId> {
    let mut seen = vec![false; nodes.len()];
    let mut stack = vec![v];
    while let Some(u) = stack.pop() {
        match nodes.get(u.index()) {
            Some(n) if !seen[u.index()] && n.ty.shape == Shape::Elem => {
                seen[u.index()] = true;
                stack.extend(n.op.operands());
            }
            _ => {}
        }
    }
    (0..nodes.len()).filter(|&i| seen[i]).map(|i| ValueId(i as u32)).collect()
}

impl Kernel {
    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }
    pub fn ty(&self, v: ValueId) -> Ty {
        self.nodes[v.index()].ty
    }
    /// `name_dtype`, e.g. `add_rms_norm_bf16`: the specialisation's stable name.
    pub fn spec_name(&self) -> String {
        format!("{}_{}", self.name, self.dtype)
    }
}
