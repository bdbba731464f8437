use kiln_fusion_macros::fused;

#[fused]
pub fn relu(x: Row) -> Row {
    if x > 0.0 { x } else { 0.0 }
}

fn main() {}
