//! Type rules of the IR: the one place that says what type an op produces from its operands.
//! Used by the [`crate::builder::Builder`] to type new nodes and by [`crate::verify`] to check
//! that every stored type is the inferred one.

use crate::ir::{elem_cone, BinaryOp, DType, Node, Op, Param, ParamKind, ReduceOp, Shape, Ty, UnaryOp, ValueId};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum TypeError {
    #[error("operand {operand} is not defined before this node")]
    Undefined { operand: u32 },
    #[error("parameter index {0} is out of range")]
    NoSuchParam(u32),
    #[error("{op}: operand types differ ({a} vs {b}); cast one of them")]
    Mismatch { op: String, a: Ty, b: Ty },
    #[error("{op}: needs {want}, got {got}")]
    Wrong { op: String, want: &'static str, got: Ty },
    #[error(
        "rope: the rotated value must be a per-column f32 value computed only from Row/Bcast \
         parameters and elementwise arithmetic (rope evaluates it again at the partner column); {0}"
    )]
    RopeOperand(String),
    #[error("rope: frequency table `{0}` must be a Bcast<f32> parameter (rope reads it at each pair's first column)")]
    RopeTable(String),
}

fn want(op: impl std::fmt::Debug, want: &'static str, got: Ty) -> TypeError {
    TypeError::Wrong { op: format!("{op:?}").to_lowercase(), want, got }
}

/// Infer the type of `op` given the kernel's params and the nodes defined so far.
pub fn infer(params: &[Param], defined: &[Node], op: &Op) -> Result<Ty, TypeError> {
    let ty = |v: crate::ir::ValueId| -> Result<Ty, TypeError> {
        defined.get(v.index()).map(|n| n.ty).ok_or(TypeError::Undefined { operand: v.0 })
    };
    match op {
        Op::Param(p) => params.get(*p as usize).map(|p| p.kind.ty()).ok_or(TypeError::NoSuchParam(*p)),
        Op::Const(c) => Ok(Ty::new(c.dtype(), Shape::Uniform)),
        Op::Column => Ok(Ty::new(DType::I32, Shape::Elem)),
        Op::Unary(u, a) => {
            let t = ty(*a)?;
            let ok = match u {
                UnaryOp::Not => t.dtype == DType::Bool,
                UnaryOp::Neg | UnaryOp::Abs => t.dtype == DType::I32 || t.dtype.is_float(),
                _ => t.dtype.is_float(),
            };
            if !ok {
                let w = match u {
                    UnaryOp::Not => "a bool",
                    UnaryOp::Neg | UnaryOp::Abs => "a number",
                    _ => "a float",
                };
                return Err(want(u, w, t));
            }
            Ok(t)
        }
        Op::Binary(b, x, y) => {
            let (tx, ty_) = (ty(*x)?, ty(*y)?);
            if tx.dtype != ty_.dtype {
                return Err(TypeError::Mismatch { op: format!("{b:?}").to_lowercase(), a: tx, b: ty_ });
            }
            let ok = match b {
                BinaryOp::And | BinaryOp::Or => tx.dtype == DType::Bool,
                BinaryOp::Pow => tx.dtype.is_float(),
                _ => tx.dtype != DType::Bool,
            };
            if !ok {
                return Err(want(b, "operands of a supported dtype", tx));
            }
            Ok(Ty::new(tx.dtype, tx.shape.join(ty_.shape)))
        }
        Op::Cmp(c, x, y) => {
            let (tx, ty_) = (ty(*x)?, ty(*y)?);
            if tx.dtype != ty_.dtype {
                return Err(TypeError::Mismatch { op: format!("{c:?}").to_lowercase(), a: tx, b: ty_ });
            }
            Ok(Ty::new(DType::Bool, tx.shape.join(ty_.shape)))
        }
        Op::Select(c, a, b) => {
            let (tc, ta, tb) = (ty(*c)?, ty(*a)?, ty(*b)?);
            if tc.dtype != DType::Bool {
                return Err(want("select", "a bool condition", tc));
            }
            if ta.dtype != tb.dtype {
                return Err(TypeError::Mismatch { op: "select".into(), a: ta, b: tb });
            }
            Ok(Ty::new(ta.dtype, tc.shape.join(ta.shape).join(tb.shape)))
        }
        Op::Cast(a, d) => {
            let t = ty(*a)?;
            if *d == DType::Bool {
                return Err(want("cast", "a numeric target (compare instead of casting to bool)", t));
            }
            Ok(Ty::new(*d, t.shape))
        }
        Op::Reduce(r, a) => {
            let t = ty(*a)?;
            if t.shape != Shape::Elem || !t.dtype.is_float() {
                let w = match r {
                    ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Max | ReduceOp::ArgMax => "a per-column float value",
                };
                return Err(want(r, w, t));
            }
            let dtype = match r {
                ReduceOp::ArgMax => DType::I32,
                ReduceOp::Sum | ReduceOp::Mean | ReduceOp::Max => t.dtype,
            };
            Ok(Ty::new(dtype, Shape::Uniform))
        }
        Op::Rope { x, pos, theta, head_dim, scaling, .. } => {
            rope_source(defined, *x)?;
            let uni = |v, d: DType, what: &'static str| -> Result<(), TypeError> {
                let t = ty(v)?;
                if t != Ty::new(d, Shape::Uniform) {
                    return Err(want("rope", what, t));
                }
                Ok(())
            };
            uni(*pos, DType::I32, "a per-row i32 position")?;
            uni(*theta, DType::F32, "a uniform f32 theta")?;
            uni(*head_dim, DType::I32, "a uniform i32 head_dim")?;
            if let Some(s) = scaling {
                for v in [s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position] {
                    uni(v, DType::F32, "uniform f32 scaling factors")?;
                }
            }
            Ok(Ty::new(DType::F32, Shape::Elem))
        }
        Op::RopeTable { x, pos, head_dim, table, .. } => {
            rope_source(defined, *x)?;
            let t = params.get(*table as usize).ok_or(TypeError::NoSuchParam(*table))?;
            if t.kind != ParamKind::Bcast(DType::F32) {
                return Err(TypeError::RopeTable(t.name.clone()));
            }
            for (v, d, what) in
                [(*pos, DType::I32, "a per-row i32 position"), (*head_dim, DType::I32, "a uniform i32 head_dim")]
            {
                let t = ty(v)?;
                if t != Ty::new(d, Shape::Uniform) {
                    return Err(want("rope", what, t));
                }
            }
            Ok(Ty::new(DType::F32, Shape::Elem))
        }
        Op::Softmax(a) => {
            let t = ty(*a)?;
            if t.shape != Shape::Elem || !t.dtype.is_float() {
                return Err(want("softmax", "a per-column float value", t));
            }
            Ok(t)
        }
    }
}

/// A rope's rotated value: `Elem` f32 and column-local (see the invariants of [`crate::ir`]).
fn rope_source(defined: &[Node], x: ValueId) -> Result<(), TypeError> {
    let t = defined.get(x.index()).map(|n| n.ty).ok_or(TypeError::Undefined { operand: x.0 })?;
    if t.shape != Shape::Elem {
        return Err(TypeError::RopeOperand(format!("{x} is one value per row ({t}), not one per column")));
    }
    if t.dtype != DType::F32 {
        return Err(TypeError::RopeOperand(format!("{x} is {t}; widen it to f32 first")));
    }
    // Uniform values (reductions, per-row and comptime parameters, constants) end the walk,
    // so what is left is loads and per-column arithmetic, except a nested rope or softmax.
    for v in elem_cone(defined, x) {
        let what = match &defined[v.index()].op {
            Op::Rope { .. } | Op::RopeTable { .. } => "a rope",
            Op::Softmax(_) => "a softmax",
            // The backends evaluate a rope's source at other columns by its loads and
            // arithmetic alone; a column index would need to know which column that is.
            Op::Column => "the column index",
            _ => continue,
        };
        let at = if v == x { format!("{x} is {what}") } else { format!("{x} depends on {v}, {what}") };
        return Err(TypeError::RopeOperand(format!("{at}, which needs the whole row")));
    }
    Ok(())
}
