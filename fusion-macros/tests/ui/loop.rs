use kiln_fusion_macros::fused;

#[fused]
pub fn total(x: Row) -> Row {
    let y = x * 2.0;
    for _ in 0..4 {
        y = y + x;
    }
    y
}

fn main() {}
