//! Row gathers: the embedding lookup (`table[ids]`) and picking the rows that need logits.
//! A gathered row is read straight from its place in the table, so no index list is ever
//! expanded on the host.

use kiln_fusion_macros::fused;

/// `rows[r] = table[ids[r]]`. Every id must name a row of `table` (the CPU backend checks;
/// on the GPU the caller guarantees it: token ids are validated against the vocabulary).
#[fused]
pub fn gather_rows(table: Gather<ids>, ids: PerRow<i32>) -> Row {
    let rows = table;
    rows
}

/// The obviously-correct gather: row `ids[r]` of `table` (`cols` wide).
pub fn gather_rows_ref(table: &[f64], cols: usize, ids: &[i32]) -> Vec<Vec<f64>> {
    ids.iter().map(|&i| table[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect()
}
