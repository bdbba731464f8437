use kiln_fusion_macros::fused;

#[fused]
pub fn rot(x: Row, w: Bcast, pos: PerRow<i32>, #[comptime] theta: f32) -> Row {
    rope_half(w, pos, theta, 64)
}

fn main() {}
