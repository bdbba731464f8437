use kiln_fusion_macros::fused;

#[fused]
pub fn rot(x: Row, s: PerRow<f32>, pos: PerRow<i32>, #[comptime] theta: f32) -> Row {
    let y = x * rope_half(s, pos, theta, 64);
    y
}

fn main() {}
