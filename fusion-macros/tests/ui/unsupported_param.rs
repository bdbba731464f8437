use kiln_fusion_macros::fused;

#[fused]
pub fn scale(x: Row, w: &[f32]) -> Row {
    x * 2.0
}

fn main() {}
