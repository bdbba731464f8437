use kiln_fusion_macros::fused;

/// A norm that forgot to multiply by the row: the result is one value per row.
#[fused]
pub fn broken_norm(x: Row, #[comptime] eps: f32) -> Row {
    let inv = rsqrt(mean(x * x) + eps);
    inv
}

fn main() {}
