use kiln_fusion_macros::fused;

/// `gelu` is not a prelude function.
#[fused]
pub fn act(x: Row) -> Row {
    let y = x * 2.0;
    gelu(y)
}

fn main() {}
