use kiln_fusion_macros::fused;

#[fused]
pub fn act(x: Row, y: Row) -> Row {
    pow(x) + y
}

fn main() {}
