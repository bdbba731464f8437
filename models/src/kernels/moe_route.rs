//! Mixture-of-experts routing as row kernels: one row per token, one column per expert. The
//! router's logits go in; each token's `k` chosen experts (best first) and their weights come
//! out, as HF computes them: `p = softmax(logits)` in f32, the `k` largest `p` (ties: the
//! lower expert first), then with `norm` each weight divided by the sum of the `k`.
//!
//! Top-k is `k` row reductions: rank `j` takes the `argmax` of `p` with the columns of ranks
//! `0..j` masked to `-1` (below every probability), and its weight is the `max` of the same
//! masked row, i.e. `p` at that column. One kernel per `k` the supported models use (Mixtral
//! 2, Qwen3-MoE 8); `kiln_models::decoder::moe` routes any other `k`, and steps of a few
//! tokens, on the host.
//!
//! Invariant: expert ids are in `0..experts` and distinct within a row for `k <= experts`
//! (a masked column is `-1`, below every probability, and `argmax` takes the lowest column of
//! a tie); weights are `p` at those ids, best first.

use kiln_fusion_macros::fused;

/// The two best experts of each token and their weights.
#[fused]
pub fn moe_route_top2(logits: Row, #[comptime] norm: bool) -> (PerRow<i32>, PerRow<f32>, PerRow<i32>, PerRow<f32>) {
    let p = softmax(logits);
    let e0 = argmax(p);
    let w0 = max(p);
    let p1 = select(column() == e0, -1.0, p);
    let e1 = argmax(p1);
    let w1 = max(p1);
    let d = select(norm, w0 + w1, 1.0);
    let g0 = w0 / d;
    let g1 = w1 / d;
    (e0, g0, e1, g1)
}

/// The eight best experts of each token and their weights.
#[fused]
pub fn moe_route_top8(
    logits: Row,
    #[comptime] norm: bool,
) -> (
    PerRow<i32>,
    PerRow<f32>,
    PerRow<i32>,
    PerRow<f32>,
    PerRow<i32>,
    PerRow<f32>,
    PerRow<i32>,
    PerRow<f32>,
    PerRow<i32>,
    PerRow<f32>,
    PerRow<i32>,
    PerRow<f32>,
    PerRow<i32>,
    PerRow<f32>,
    PerRow<i32>,
    PerRow<f32>,
) {
    let p = softmax(logits);
    let e0 = argmax(p);
    let w0 = max(p);
    let p1 = select(column() == e0, -1.0, p);
    let e1 = argmax(p1);
    let w1 = max(p1);
    let p2 = select(column() == e1, -1.0, p1);
    let e2 = argmax(p2);
    let w2 = max(p2);
    let p3 = select(column() == e2, -1.0, p2);
    let e3 = argmax(p3);
    let w3 = max(p3);
    let p4 = select(column() == e3, -1.0, p3);
    let e4 = argmax(p4);
    let w4 = max(p4);
    let p5 = select(column() == e4, -1.0, p4);
    let e5 = argmax(p5);
    let w5 = max(p5);
    let p6 = select(column() == e5, -1.0, p5);
    let e6 = argmax(p6);
    let w6 = max(p6);
    let p7 = select(column() == e6, -1.0, p6);
    let e7 = argmax(p7);
    let w7 = max(p7);
    let d = select(norm, w0 + w1 + w2 + w3 + w4 + w5 + w6 + w7, 1.0);
    let g0 = w0 / d;
    let g1 = w1 / d;
    let g2 = w2 / d;
    let g3 = w3 / d;
    let g4 = w4 / d;
    let g5 = w5 / d;
    let g6 = w6 / d;
    let g7 = w7 / d;
    (e0, g0, e1, g1, e2, g2, e3, g3, e4, g4, e5, g5, e6, g6, e7, g7)
}

/// Each row's `k` best experts and weights, by the definition (f64 softmax, a stable sort):
/// what the kernels are held to.
pub fn moe_route_ref(logits: &[f64], k: usize, norm: bool) -> Vec<(usize, f64)> {
    let p = super::softmax::softmax_ref(logits);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let chosen = &order[..k.min(p.len())];
    let d = if norm { chosen.iter().map(|&i| p[i]).sum() } else { 1.0 };
    chosen.iter().map(|&i| (i, p[i] / d)).collect()
}
