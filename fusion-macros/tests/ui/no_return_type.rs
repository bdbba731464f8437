use kiln_fusion_macros::fused;

#[fused]
pub fn act(x: Row) {
    let y = x * sigmoid(x);
}

fn main() {}
