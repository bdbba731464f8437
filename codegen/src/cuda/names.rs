//! Names, C types and literals of the generated CUDA.
//!
//! Invariants:
//! - every identifier the emitter derives from a user name carries a prefix made of a letter
//!   and the index of its param / output / node (`p0_x`, `o1_y`, `v7_inv`, `c_v4_h`), so two
//!   derived names never collide with each other or with the fixed locals (`row`, `nvec`, `v`,
//!   `it`, `e`, `c0`, `kiln_*`), whatever the user called things;
//! - user names are reduced to `[A-Za-z0-9_]` (anything else becomes `_`): the prefix keeps
//!   them unique, the name keeps them readable;
//! - literals denote exactly the IR constant: an f32 is written in decimal only when that text
//!   reads back as the same bits both directly and through an f64 (a compiler may do either);
//!   otherwise, and for inf/NaN, as its bit pattern.

use crate::ir::{DType, Kernel, ValueId};

/// `name` reduced to C identifier characters.
pub fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Whether `s` can be used as-is as a C identifier (entry point names must be, since the
/// runtime looks them up by the ABI's spelling).
pub fn is_c_ident(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
        _ => false,
    }
}

/// The C type of a value or element of this dtype.
pub fn c_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::I32 => "int",
        DType::Bool => "bool",
        DType::F16 => "kiln_f16",
        DType::BF16 => "kiln_bf16",
        DType::F8E4M3 => "kiln_e4m3",
        DType::I8 => "kiln_i8",
    }
}

/// Kernel argument of param `i` (a pointer or a comptime value).
pub fn param(k: &Kernel, i: usize) -> String {
    format!("p{i}_{}", sanitize(&k.params[i].name))
}

/// Row-stride argument of `Row` param `i`.
pub fn param_stride(k: &Kernel, i: usize) -> String {
    format!("{}_stride", param(k, i))
}

/// This block's row of `Row` param `i`.
pub fn param_row(k: &Kernel, i: usize) -> String {
    format!("{}_row", param(k, i))
}

pub fn output(k: &Kernel, i: usize) -> String {
    format!("o{i}_{}", sanitize(&k.outputs[i].name))
}

pub fn output_stride(k: &Kernel, i: usize) -> String {
    format!("{}_stride", output(k, i))
}

pub fn output_row(k: &Kernel, i: usize) -> String {
    format!("{}_row", output(k, i))
}

/// The tensor row a scattered `Row` output `i` writes this block's row to.
pub fn output_slot(k: &Kernel, i: usize) -> String {
    format!("{}_slot", output(k, i))
}

/// The values of `Row` output `i` for the current vector, gathered for one store.
pub fn output_vec(k: &Kernel, i: usize) -> String {
    format!("{}_vec", output(k, i))
}

/// The variable of node `v`: `v<N>` or `v<N>_<name>`.
pub fn var(k: &Kernel, v: ValueId) -> String {
    match &k.node(v).name {
        Some(n) => format!("v{}_{}", v.0, sanitize(n)),
        None => format!("v{}", v.0),
    }
}

/// The register array that carries a cached value across stages.
pub fn cached(k: &Kernel, v: ValueId) -> String {
    format!("c_{}", var(k, v))
}

/// The per-thread partial of reduction `v`.
pub fn acc(k: &Kernel, v: ValueId) -> String {
    format!("acc_{}", var(k, v))
}

/// The body template shared by both entry points.
pub fn body_fn(k: &Kernel) -> String {
    format!("{}_body", k.spec_name())
}

/// An f32 literal that denotes exactly `x`.
pub fn f32_lit(x: f32) -> String {
    if x.is_finite() {
        // Debug prints the shortest text that reads back as `x` ("0.5", "1e-6", "-0.0").
        let mut s = format!("{x:?}");
        if !s.contains(['.', 'e', 'E']) {
            s.push_str(".0");
        }
        let direct = s.parse::<f32>().map(|y| y.to_bits() == x.to_bits()).unwrap_or(false);
        let via_f64 = s.parse::<f64>().map(|y| (y as f32).to_bits() == x.to_bits()).unwrap_or(false);
        if direct && via_f64 {
            return format!("{s}f");
        }
    }
    format!("__uint_as_float(0x{:08x}u)", x.to_bits())
}

/// An i32 literal (`i32::MIN` has no negative literal in C: `-2147483648` is `-(long)`).
pub fn i32_lit(x: i32) -> String {
    if x == i32::MIN {
        "(-2147483647 - 1)".to_string()
    } else {
        x.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_literals_are_exact() {
        assert_eq!(f32_lit(0.5), "0.5f");
        assert_eq!(f32_lit(1.0), "1.0f");
        assert_eq!(f32_lit(1e-6), "1e-6f");
        assert_eq!(f32_lit(-0.0), "-0.0f");
        assert_eq!(f32_lit(f32::INFINITY), "__uint_as_float(0x7f800000u)");
        assert_eq!(f32_lit(f32::NEG_INFINITY), "__uint_as_float(0xff800000u)");
        assert!(f32_lit(f32::NAN).starts_with("__uint_as_float(0x"));
        // Every decimal the function emits reads back exactly.
        for bits in [1u32, 0x0000_ffff, 0x3dcc_cccd, 0x7f7f_ffff, 0x3380_0001, 0x4b80_0001] {
            let x = f32::from_bits(bits);
            let lit = f32_lit(x);
            if let Some(dec) = lit.strip_suffix('f') {
                assert_eq!(dec.parse::<f32>().unwrap().to_bits(), bits, "{lit}");
                assert_eq!((dec.parse::<f64>().unwrap() as f32).to_bits(), bits, "{lit}");
            }
        }
    }

    #[test]
    fn i32_min_is_spelled_safely() {
        assert_eq!(i32_lit(i32::MIN), "(-2147483647 - 1)");
        assert_eq!(i32_lit(-3), "-3");
    }

    #[test]
    fn identifiers() {
        assert!(is_c_ident("add_rms_norm_bf16_v8"));
        assert!(!is_c_ident("9a"));
        assert!(!is_c_ident("a-b"));
        assert_eq!(sanitize("héllo"), "h_llo");
    }
}
