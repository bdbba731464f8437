use kiln_fusion_macros::fused;

#[fused]
pub fn rot(x: Row, pos: PerRow<i32>, #[comptime] theta: f32) -> Row {
    let scaled = x * 0.5;
    rope_half(scaled, pos, theta, 64)
}

fn main() {}
