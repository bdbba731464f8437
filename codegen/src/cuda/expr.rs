//! The C expression that computes one node, given how to spell its operands.
//!
//! Invariants:
//! - operands are spelled by the caller as atoms (an identifier, possibly indexed), so the
//!   expressions here need no extra parentheses around them;
//! - semantics follow the CPU backend: f32 math uses the precise CUDA functions (`expf`,
//!   never `__expf`), `sigmoid(x) = 1/(1+exp(-x))`, `rsqrt` is `rsqrtf`, min/max ignore a NaN
//!   operand (`fminf`/`fmaxf`, like `f32::min`/`max`), f32→i32 truncates and saturates with
//!   NaN→0 (`__float2int_rz`, like Rust's `as`), narrowing to f16/bf16 rounds to nearest even,
//!   i32 arithmetic is C `int` arithmetic;
//! - only a lowered kernel reaches here (checked before emission): arithmetic is on f32, i32
//!   or bool; halves appear only as params and cast operands/results.

use super::names::{f32_lit, i32_lit};
use crate::ir::{BinaryOp, CmpOp, Const, DType, Op, RopeStyle, UnaryOp};

/// What the caller provides to spell a node's expression.
pub struct Operands<'a> {
    /// The spelling of each operand, in `Op::operands` order.
    pub args: &'a [String],
    /// For `Rope`: the name of this node's rotated vector and cos/sin tables (see
    /// [`rope_table_fill`] and [`rope_vector_call`]).
    pub rope_table: Option<&'a str>,
}

/// The expression of `op`, whose operands have dtypes `arg_dtypes` (same order as `args`).
/// `Param` and `Reduce` are not expressions (loads and accumulations are emitted by the
/// caller), nor is `Softmax` (lowered before emission); they return `None`.
pub fn op_expr(op: &Op, arg_dtypes: &[DType], o: &Operands<'_>) -> Option<String> {
    let a = |i: usize| o.args[i].as_str();
    Some(match op {
        Op::Param(_) | Op::Reduce(..) | Op::Softmax(_) => return None,
        Op::Const(Const::F32(x)) => f32_lit(*x),
        Op::Const(Const::I32(x)) => i32_lit(*x),
        Op::Const(Const::Bool(x)) => x.to_string(),
        // Inside the column loop: element `e` of the vector that starts at column `c0`.
        Op::Column => "c0 + e".to_string(),
        Op::Unary(u, _) => unary(*u, arg_dtypes[0], a(0)),
        Op::Binary(b, _, _) => binary(*b, arg_dtypes[0], a(0), a(1)),
        Op::Cmp(c, _, _) => format!("{} {} {}", a(0), cmp_op(*c), a(1)),
        Op::Select(..) => format!("{} ? {} : {}", a(0), a(1), a(2)),
        Op::Cast(_, to) => cast(arg_dtypes[0], *to, a(0)),
        // Rotated before the element loop by `rope_vector_call`; here, this element of it.
        Op::Rope { .. } | Op::RopeTable { .. } => format!("{}[e]", o.rope_table?),
    })
}

/// Where a rope reads the value it rotates.
pub enum RopeSource<'a> {
    /// Straight from this block's row of a `Row` param (vector loads where the layout allows).
    Row(&'a str),
    /// From a device lambda `float(int column)` that evaluates the source expression (a bias
    /// add, a norm's scale) at any column of the row.
    Fn(&'a str),
}

/// The statements that rotate this thread's vector of a `Rope` node (before the element loop)
/// into `{table}` (`float {table}[VEC]`); `args` spell the node's operands.
pub fn rope_vector_call(op: &Op, args: &[String], src: &RopeSource<'_>, table: &str) -> Option<[String; 2]> {
    // Operands: x, pos, theta, head_dim, .. (`Rope`) or x, pos, head_dim (`RopeTable`).
    let (style, head_dim) = match op {
        Op::Rope { style, .. } => (style, &args[3]),
        Op::RopeTable { style, .. } => (style, &args[2]),
        _ => return None,
    };
    let f = match style {
        RopeStyle::HalfSplit => "kiln_rope_half_split",
        RopeStyle::Interleaved => "kiln_rope_interleaved",
    };
    let (f, src) = match src {
        RopeSource::Row(row) => (f.to_string(), row),
        RopeSource::Fn(lambda) => (format!("{f}_of"), lambda),
    };
    Some([
        format!("float {table}[VEC];"),
        format!("{f}<VEC>({table}, {src}, c0, {head_dim}, {table}_cos, {table}_sin);"),
    ])
}

/// The statements that declare and fill a `Rope` node's per-row cos/sin table named `table`
/// (`{table}_cos`, `{table}_sin`); `args` spell the node's operands, and for `RopeTable` then
/// the frequency table's pointer. `None` for other ops.
pub fn rope_table_fill(op: &Op, args: &[String], table: &str) -> Option<[String; 2]> {
    let a = |i: usize| args[i].as_str();
    let decl = format!("__shared__ float {table}_cos[KILN_ROPE_MAX_PAIRS], {table}_sin[KILN_ROPE_MAX_PAIRS];");
    let scaling = match op {
        Op::Rope { scaling, .. } => scaling,
        Op::RopeTable { style, .. } => {
            let step = match style {
                RopeStyle::HalfSplit => 1,
                RopeStyle::Interleaved => 2,
            };
            // Operands x, pos, head_dim, then the table's pointer.
            let fill =
                format!("kiln_rope_table_freqs({table}_cos, {table}_sin, {}, {}, {}, {step});", a(1), a(2), a(3));
            return Some([decl, fill]);
        }
        _ => return None,
    };
    // Operands x, pos, theta, head_dim, then the four scaling factors.
    let sc = if scaling.is_some() {
        format!("kiln_llama3_on({}, {}, {}, {})", a(4), a(5), a(6), a(7))
    } else {
        "kiln_llama3_off()".to_string()
    };
    Some([decl, format!("kiln_rope_table({table}_cos, {table}_sin, {}, {}, {}, {sc});", a(1), a(2), a(3))])
}

fn unary(u: UnaryOp, d: DType, a: &str) -> String {
    let int = d == DType::I32;
    match u {
        UnaryOp::Neg => format!("-{a}"),
        UnaryOp::Abs if int => format!("abs({a})"),
        UnaryOp::Abs => format!("fabsf({a})"),
        UnaryOp::Exp => format!("expf({a})"),
        UnaryOp::Log => format!("logf({a})"),
        UnaryOp::Sqrt => format!("sqrtf({a})"),
        UnaryOp::Rsqrt => format!("rsqrtf({a})"),
        UnaryOp::Tanh => format!("tanhf({a})"),
        UnaryOp::Sigmoid => format!("1.0f / (1.0f + expf(-{a}))"),
        UnaryOp::Erf => format!("erff({a})"),
        UnaryOp::Sin => format!("sinf({a})"),
        UnaryOp::Cos => format!("cosf({a})"),
        UnaryOp::Not => format!("!{a}"),
    }
}

fn binary(b: BinaryOp, d: DType, x: &str, y: &str) -> String {
    let int = d == DType::I32;
    match b {
        BinaryOp::Add => format!("{x} + {y}"),
        BinaryOp::Sub => format!("{x} - {y}"),
        BinaryOp::Mul => format!("{x} * {y}"),
        BinaryOp::Div => format!("{x} / {y}"),
        BinaryOp::Min if int => format!("min({x}, {y})"),
        BinaryOp::Max if int => format!("max({x}, {y})"),
        BinaryOp::Min => format!("fminf({x}, {y})"),
        BinaryOp::Max => format!("fmaxf({x}, {y})"),
        BinaryOp::Pow => format!("powf({x}, {y})"),
        BinaryOp::And => format!("{x} && {y}"),
        BinaryOp::Or => format!("{x} || {y}"),
    }
}

fn cmp_op(c: CmpOp) -> &'static str {
    match c {
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
    }
}

/// A cast; conversions that are not single steps go through f32 (exact for every source a
/// half or bool can come from, and how the CPU backend converts).
fn cast(from: DType, to: DType, a: &str) -> String {
    if from == to {
        return a.to_string();
    }
    let to_f32 = match from {
        DType::F32 => a.to_string(),
        DType::F16 | DType::BF16 | DType::F8E4M3 | DType::I8 => format!("kiln_to_f32({a})"),
        DType::I32 => format!("(float){a}"),
        DType::Bool => format!("({a} ? 1.0f : 0.0f)"),
    };
    match to {
        DType::F32 => to_f32,
        DType::F16 => format!("kiln_f32_to_f16({to_f32})"),
        DType::BF16 => format!("kiln_f32_to_bf16({to_f32})"),
        DType::F8E4M3 => format!("kiln_f32_to_e4m3({to_f32})"),
        DType::I8 => format!("kiln_f32_to_i8({to_f32})"),
        DType::I32 => match from {
            DType::Bool => format!("(int){a}"),
            _ => format!("__float2int_rz({to_f32})"),
        },
        // Casting to bool is rejected by the type rules; compare instead.
        DType::Bool => format!("{a} != 0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ValueId;

    fn ex(op: Op, d: &[DType]) -> String {
        let args: Vec<String> = (0..op.operands().len()).map(|i| format!("a{i}")).collect();
        op_expr(&op, d, &Operands { args: &args, rope_table: Some("t") }).unwrap()
    }

    #[test]
    fn casts() {
        let v = ValueId(0);
        assert_eq!(ex(Op::Cast(v, DType::F32), &[DType::BF16]), "kiln_to_f32(a0)");
        assert_eq!(ex(Op::Cast(v, DType::BF16), &[DType::F16]), "kiln_f32_to_bf16(kiln_to_f32(a0))");
        assert_eq!(ex(Op::Cast(v, DType::I32), &[DType::F32]), "__float2int_rz(a0)");
        assert_eq!(ex(Op::Cast(v, DType::F16), &[DType::I32]), "kiln_f32_to_f16((float)a0)");
        assert_eq!(ex(Op::Cast(v, DType::F32), &[DType::Bool]), "(a0 ? 1.0f : 0.0f)");
    }

    #[test]
    fn int_and_float_min_differ() {
        let (x, y) = (ValueId(0), ValueId(1));
        assert_eq!(ex(Op::Binary(BinaryOp::Min, x, y), &[DType::F32, DType::F32]), "fminf(a0, a1)");
        assert_eq!(ex(Op::Binary(BinaryOp::Min, x, y), &[DType::I32, DType::I32]), "min(a0, a1)");
    }
}
