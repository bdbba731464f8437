use kiln_fusion_macros::fused;

#[fused]
pub fn rot(x: Row, pos: PerRow<i32>, #[comptime] theta: f32) -> Row {
    let p = softmax(x);
    rope_half(p, pos, theta, 64)
}

fn main() {}
