//! The mixture-of-experts feed-forward (Mixtral, Qwen3-MoE): route every token to `top_k` of the
//! experts, run each expert's gated MLP on the tokens routed to it, and sum the outputs weighted
//! by the routing probabilities.
//!
//! Routing, as HF computes it: `p = softmax(router(x))` in f32 over all experts; the `top_k`
//! largest (ties: the lower expert index first); with `norm_top_k`, `p / sum(p over the top_k)`.
//! The router's logits are read on the host and the routing decided there (a `top_k` over a few
//! experts is a handful of comparisons per token); each expert then runs on a gathered
//! contiguous batch of its tokens, so its GEMM is one call whatever the batch. The weighted
//! combine runs on the host in f32 and is written back once per layer.
//!
//! Not yet: a grouped GEMM over all experts in one launch and device-side routing (the GPU path
//! works through host copies, so MoE steps are not captured in CUDA graphs).

use super::normed::Normed;
use super::{Decoder, Mlp, MoeSpec};
use crate::kernels::gather;
use crate::model::ModelError;
use kiln_runtime::device::linear::{linear, Weight};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};

/// Scratch for one MoE layer's step, sized for `capacity` tokens.
pub struct Workspace {
    /// `[capacity, experts]`: the router's logits.
    logits: Tensor,
    /// `[capacity, hidden]`: one expert's tokens, gathered; and that expert's output.
    x_e: Tensor,
    y_e: Tensor,
}

impl Workspace {
    pub fn new(dev: &Device, dtype: DType, capacity: usize, hidden: usize, m: MoeSpec) -> Result<Self, ModelError> {
        Ok(Workspace {
            logits: Tensor::uninit(dev, dtype, capacity, m.experts)?,
            x_e: Tensor::uninit(dev, dtype, capacity, hidden)?,
            y_e: Tensor::uninit(dev, dtype, capacity, hidden)?,
        })
    }
}

/// For each token row, its `top_k` experts and their weights, from the router's logits.
pub fn route(logits: &[f32], experts: usize, m: MoeSpec) -> Vec<Vec<(usize, f32)>> {
    logits
        .chunks(experts)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            let mut order: Vec<usize> = (0..experts).collect();
            // Stable: equal probabilities keep the lower index first.
            order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
            let chosen = &order[..m.top_k.min(experts)];
            let picked: f32 = chosen.iter().map(|&i| e[i] / sum).sum();
            let norm = if m.norm_top_k { picked } else { 1.0 };
            chosen.iter().map(|&i| (i, e[i] / sum / norm)).collect()
        })
        .collect()
}

/// The MoE feed-forward of `h` (`[n, hidden]`) into `out`; `scratch` holds the dense MLP's
/// `(gate_up, act)` buffers, reused by each expert.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    d: &Decoder,
    m: MoeSpec,
    router: &Weight,
    experts: &[Mlp],
    h: &Tensor,
    ws: &mut Workspace,
    scratch: (&mut Tensor, &mut Tensor),
    out: &mut Tensor,
) -> Result<(), ModelError> {
    let (n, hidden) = (h.rows(), h.cols());
    let dev = &d.dev;
    let mut logits = ws.logits.view_rows(0, n)?;
    linear(dev, h, router, &mut logits)?;
    let routes = route(&logits.to_host_f32()?, m.experts, m);
    let (gate_up, act) = scratch;
    // Each expert's token rows (ascending) and their weights, in one pass over the routes.
    let mut by_expert: Vec<(Vec<i32>, Vec<f32>)> = vec![(vec![], vec![]); experts.len()];
    for (r, chosen) in routes.iter().enumerate() {
        for &(e, w) in chosen {
            by_expert[e].0.push(r as i32);
            by_expert[e].1.push(w);
        }
    }
    let mut acc = vec![0f32; n * hidden];
    for (mlp, (rows, weights)) in experts.iter().zip(&by_expert) {
        if rows.is_empty() {
            continue;
        }
        let k = rows.len();
        let ids = Tensor::from_host(dev, rows, 1, k)?;
        let mut x_e = ws.x_e.view_rows(0, k)?;
        gather::gather_rows::run(dev, h, &ids, &mut x_e)?;
        let mut y_e = ws.y_e.view_rows(0, k)?;
        d.mlp(mlp, (Normed::Dense, &x_e, None), gate_up, act, &mut y_e)?;
        let y = y_e.to_host_f32()?;
        for ((&r, &w), y_row) in rows.iter().zip(weights).zip(y.chunks(hidden)) {
            let a = &mut acc[r as usize * hidden..][..hidden];
            a.iter_mut().zip(y_row).for_each(|(a, y)| *a += w * y);
        }
    }
    out.copy_from(&Tensor::from_f32_as(dev, out.dtype(), &acc, n, hidden)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: MoeSpec = MoeSpec { experts: 4, top_k: 2, norm_top_k: true, intermediate: 8 };

    #[test]
    fn routes_pick_the_largest_and_renormalise() {
        let r = route(&[0.0, 2.0, 1.0, -1.0], 4, M);
        assert_eq!(r[0].iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        let (a, b) = (r[0][0].1, r[0][1].1);
        assert!((a + b - 1.0).abs() < 1e-6);
        assert!((a / b - 1f32.exp()).abs() < 1e-5, "ratio of the two weights is e^(2-1)");
        let unnormed = route(&[0.0, 2.0, 1.0, -1.0], 4, MoeSpec { norm_top_k: false, ..M });
        assert!(unnormed[0].iter().map(|x| x.1).sum::<f32>() < 0.95);
    }

    #[test]
    fn ties_keep_the_lower_expert_first() {
        let r = route(&[1.0, 1.0, 1.0, 1.0], 4, M);
        assert_eq!(r[0].iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
    }
}
