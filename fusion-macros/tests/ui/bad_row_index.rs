use kiln_fusion_macros::fused;

#[fused]
pub fn lookup(table: Gather<ids>, ids: PerRow<f32>) -> Row {
    let rows = table;
    rows
}

#[fused]
pub fn store(x: Row, pos: PerRow<i32>) -> Scatter<slot> {
    let y = x;
    y
}

fn main() {}
