use kiln_fusion_macros::fused;

#[fused]
pub fn shift(x: Row, pos: PerRow<i32>) -> Row {
    x + pos
}

fn main() {}
