use kiln_fusion_macros::fused;

#[fused]
pub fn act(x: Row) -> Row {
    x.exp() * 2.0
}

fn main() {}
