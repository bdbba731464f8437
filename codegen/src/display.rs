//! The readable text form of a kernel (`Display`), used in snapshots, errors and the
//! headers of generated files. One line per param, node and output; stable across runs.

use crate::ir::{BinaryOp, CmpOp, Const, Kernel, Op, OutputKind, ParamKind, ReduceOp, RopeStyle, UnaryOp};
use std::fmt;

pub(crate) fn unary_name(u: UnaryOp) -> &'static str {
    match u {
        UnaryOp::Neg => "neg",
        UnaryOp::Abs => "abs",
        UnaryOp::Exp => "exp",
        UnaryOp::Log => "log",
        UnaryOp::Sqrt => "sqrt",
        UnaryOp::Rsqrt => "rsqrt",
        UnaryOp::Tanh => "tanh",
        UnaryOp::Sigmoid => "sigmoid",
        UnaryOp::Erf => "erf",
        UnaryOp::Sin => "sin",
        UnaryOp::Cos => "cos",
        UnaryOp::Not => "not",
    }
}

pub(crate) fn binary_name(b: BinaryOp) -> &'static str {
    match b {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Min => "min",
        BinaryOp::Max => "max",
        BinaryOp::Pow => "pow",
        BinaryOp::And => "and",
        BinaryOp::Or => "or",
    }
}

pub(crate) fn cmp_name(c: CmpOp) -> &'static str {
    match c {
        CmpOp::Lt => "lt",
        CmpOp::Le => "le",
        CmpOp::Gt => "gt",
        CmpOp::Ge => "ge",
        CmpOp::Eq => "eq",
        CmpOp::Ne => "ne",
    }
}

pub(crate) fn reduce_name(r: ReduceOp) -> &'static str {
    match r {
        ReduceOp::Sum => "sum",
        ReduceOp::Mean => "mean",
        ReduceOp::Max => "max",
        ReduceOp::ArgMax => "argmax",
    }
}

impl fmt::Display for Const {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Const::F32(x) => write!(f, "{x:?}f32"),
            Const::I32(x) => write!(f, "{x}i32"),
            Const::Bool(x) => write!(f, "{x}"),
        }
    }
}

fn param_kind(k: ParamKind) -> String {
    match k {
        ParamKind::Row(d) => format!("row<{d}>"),
        ParamKind::Bcast(d) => format!("bcast<{d}>"),
        ParamKind::PerRow(d) => format!("per_row<{d}>"),
        ParamKind::Comptime(d) => format!("comptime<{d}>"),
    }
}

impl Kernel {
    /// A parameter's name, or `#N` when the index points nowhere (display never panics).
    fn param_name(&self, i: u32) -> String {
        self.params.get(i as usize).map_or_else(|| format!("#{i}"), |p| p.name.clone())
    }

    /// The text of one op, operands as `%N` (used by the CUDA emitter's line comments too).
    pub fn op_text(&self, op: &Op) -> String {
        match op {
            Op::Param(p) => format!("param {}", self.params[*p as usize].name),
            Op::Const(c) => format!("const {c}"),
            Op::Unary(u, a) => format!("{} {a}", unary_name(*u)),
            Op::Binary(b, x, y) => format!("{} {x}, {y}", binary_name(*b)),
            Op::Cmp(c, x, y) => format!("cmp.{} {x}, {y}", cmp_name(*c)),
            Op::Select(c, a, b) => format!("select {c}, {a}, {b}"),
            Op::Cast(a, d) => format!("cast {a} to {d}"),
            Op::Reduce(r, a) => format!("reduce.{} {a}", reduce_name(*r)),
            Op::Softmax(a) => format!("softmax {a}"),
            Op::Column => "column".to_string(),
            Op::Rope { x, pos, theta, head_dim, style, scaling } => {
                let style = match style {
                    RopeStyle::HalfSplit => "half_split",
                    RopeStyle::Interleaved => "interleaved",
                };
                let mut s = format!("rope.{style} {x}, pos={pos}, theta={theta}, head_dim={head_dim}");
                if let Some(sc) = scaling {
                    s += &format!(
                        ", llama3(factor={}, low={}, high={}, orig_max={})",
                        sc.factor, sc.low_freq_factor, sc.high_freq_factor, sc.original_max_position
                    );
                }
                s
            }
            Op::RopeTable { x, pos, head_dim, style, table } => {
                let style = match style {
                    RopeStyle::HalfSplit => "half_split",
                    RopeStyle::Interleaved => "interleaved",
                };
                format!(
                    "rope.{style} {x}, pos={pos}, inv_freq={}, head_dim={head_dim}",
                    self.params[*table as usize].name
                )
            }
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} (from {})", self.spec_name(), self.source)?;
        for p in &self.params {
            write!(f, "  param {}: {}", p.name, param_kind(p.kind))?;
            if let Some(i) = p.index {
                write!(f, " gathered by {}", self.param_name(i))?;
            }
            writeln!(f)?;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            write!(f, "  %{i}: {} = {}", n.ty, self.op_text(&n.op))?;
            if let Some(name) = &n.name {
                write!(f, "    ; {name}")?;
            }
            writeln!(f)?;
        }
        for o in &self.outputs {
            let kind = match o.kind {
                OutputKind::Row(d) => format!("row<{d}>"),
                OutputKind::PerRow(d) => format!("per_row<{d}>"),
            };
            write!(f, "  output {}: {kind}", o.name)?;
            if let Some(i) = o.index {
                write!(f, " scattered by {}", self.param_name(i))?;
            }
            writeln!(f, " = {}", o.value)?;
        }
        Ok(())
    }
}
