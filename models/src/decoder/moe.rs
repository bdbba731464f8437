//! The mixture-of-experts feed-forward (Mixtral, Qwen3-MoE): route every token to `top_k` of the
//! experts, run each expert's gated MLP on the tokens routed to it, and sum the outputs weighted
//! by the routing probabilities.
//!
//! Routing, as HF computes it: `p = softmax(router(x))` in f32 over all experts; the `top_k`
//! largest (ties: the lower expert index first); with `norm_top_k`, `p / sum(p over the top_k)`.
//! A `#[fused]` row kernel decides it on the device for the `top_k` of the supported models
//! (`kernels::moe_route`: 2 and 8) in steps of at least [`KERNEL_MIN_TOKENS`] tokens, and each
//! token's choices (`top_k` ids and weights in one copy, not the router's `experts` logits)
//! come to the host, which sorts them by expert; any other `top_k` or step is routed on the
//! host from the logits ([`route`], also the kernels' reference in the tests).
//! Then one of two paths:
//!
//! - **grouped** (on a GPU, when every expert's weights are dense in the activations' dtype;
//!   `KILN_MOE_GROUPED=0|1` forces it off or on, on any device): the chosen (token, expert)
//!   pairs sorted by expert ([`sort_by_expert`]), their rows gathered into one buffer, each
//!   projection of every expert in one grouped GEMM (`device::grouped`), the activation over
//!   all rows in one launch, and the weighted combine in one kernel (`device::expert_combine`:
//!   f32, routing order) — a fixed number of launches per layer whatever the experts;
//! - **per expert** (the CPU, and weights kept quantized): each expert runs its MLP on a
//!   gathered contiguous batch of its tokens (one call of each projection whatever the batch,
//!   any weight format), and the weighted combine runs on the host in f32 (expert order),
//!   written back once per layer.
//!
//! The grouped path takes the sorted rows through the experts in chunks that fit the
//! workspace's `capacity` rows (an expert's rows may straddle two chunks), keeping every sorted
//! row's output (`capacity · top_k` rows) for one combine.
//! Not yet: sorting by expert on the device and a grouped GEMM that reads its groups from device
//! memory (each step's choices come to the host, so MoE steps are not captured in CUDA graphs).

use super::normed::Normed;
use super::{Decoder, Mlp, MoeSpec};
use crate::kernels::gather;
use crate::kernels::moe_route::{moe_route_top2, moe_route_top8};
use crate::model::ModelError;
use kiln_codegen::fused::FusedDef;
use kiln_runtime::device::expert_combine::{combine, Choices};
use kiln_runtime::device::fused::{launch, Arg};
use kiln_runtime::device::grouped::{grouped_matmul, Group};
use kiln_runtime::device::linear::{linear, Weight};
use kiln_runtime::DType;
use kiln_runtime::{Device, Tensor};
use std::ops::Range;
use std::sync::OnceLock;

/// Scratch for one MoE layer's step, sized for `capacity` tokens.
pub struct Workspace {
    /// `[capacity, experts]`: the router's logits.
    logits: Tensor,
    /// `[2 · top_k, capacity]` `I32`, where a routing kernel serves this `top_k`: rank by rank,
    /// each token's chosen experts, then their weights (`F32` bits), so one copy brings both.
    chosen: Option<Tensor>,
    /// `[capacity, hidden]`: one expert's tokens, gathered (per expert), or a chunk of the
    /// sorted rows (grouped).
    x_e: Tensor,
    /// `[capacity · top_k, hidden]` where the grouped path may run (every sorted row's output:
    /// the combine reads them all), else `[capacity, hidden]` (one expert's output).
    y_e: Tensor,
}

impl Workspace {
    pub fn new(dev: &Device, dtype: DType, capacity: usize, hidden: usize, m: MoeSpec) -> Result<Self, ModelError> {
        // Every sorted row's output only where the grouped path may run.
        let y_rows = if grouped_on(dev) { capacity * m.top_k.clamp(1, m.experts.max(1)) } else { capacity };
        let chosen = match route_kernel(m) {
            Some(_) => Some(Tensor::uninit(dev, DType::I32, 2 * m.top_k, capacity)?),
            None => None,
        };
        Ok(Workspace {
            logits: Tensor::uninit(dev, dtype, capacity, m.experts)?,
            chosen,
            x_e: Tensor::uninit(dev, dtype, capacity, hidden)?,
            y_e: Tensor::uninit(dev, dtype, y_rows, hidden)?,
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
    let routes = routes(dev, m, &logits, ws)?;
    if let Some(weights) = grouped_weights(dev, experts, d.dtype) {
        return forward_grouped(d, m, &routes, &weights, h, ws, scratch, out);
    }
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

/// The routing kernel for `m.top_k`, if there is one (`KILN_MOE_ROUTE=host` routes on the
/// host anyway, to compare the two).
fn route_kernel(m: MoeSpec) -> Option<&'static FusedDef> {
    static ROUTE: OnceLock<Option<String>> = OnceLock::new();
    match m.top_k {
        _ if m.top_k > m.experts || knob(&ROUTE, "KILN_MOE_ROUTE") == Some("host") => None,
        2 => Some(&moe_route_top2::DEF),
        8 => Some(&moe_route_top8::DEF),
        _ => None,
    }
}

/// Steps of fewer tokens route on the host even where a kernel could: the kernel is a chain
/// of `k + 2` dependent block reductions (14.5 µs for top 8 on an H100 whatever the rows),
/// which costs more than the host's few comparisons when both copy a token's worth of bytes
/// back. Measured on the 30B-A3B shape (H100): 1 sequence decoded 7% faster on the host,
/// 16 and 64 sequences 1.05–1.26× and 1.75–2.06× faster with the kernel (which also does
/// every prefill). Between 1 and 16 the cut is not measured.
const KERNEL_MIN_TOKENS: usize = 8;

/// Each token's `top_k` choices, best first, from the router's `logits` (`[n, experts]`): by
/// the routing kernel where there is one and the step has [`KERNEL_MIN_TOKENS`] (the host
/// reads `top_k` ids and weights a token), else by [`route`] on the host.
fn routes(dev: &Device, m: MoeSpec, logits: &Tensor, ws: &mut Workspace) -> Result<Vec<Vec<(usize, f32)>>, ModelError> {
    let (n, k) = (logits.rows(), m.top_k);
    let (Some(def), Some(chosen), true) = (route_kernel(m), &ws.chosen, n >= KERNEL_MIN_TOKENS) else {
        return Ok(route(&logits.to_host_f32()?, m.experts, m));
    };
    let chosen = chosen.view_cols(0, n)?;
    let mut outs = vec![];
    for j in 0..k {
        outs.push(chosen.view_rows(j, 1)?);
        outs.push(chosen.view_rows(k + j, 1)?.bitcast(DType::F32)?);
    }
    launch(dev, def, &[Arg::Tensor(logits), Arg::Bool(m.norm_top_k)], &mut outs.iter_mut().collect::<Vec<_>>())?;
    let host = chosen.to_host::<i32>()?;
    let (ids, gates) = host.split_at(k * n);
    (0..n)
        .map(|t| {
            (0..k)
                .map(|j| match usize::try_from(ids[j * n + t]) {
                    Ok(e) if e < m.experts => Ok((e, f32::from_bits(gates[j * n + t] as u32))),
                    _ => Err(ModelError::Batch(format!("routing chose expert {} of {}", ids[j * n + t], m.experts))),
                })
                .collect()
        })
        .collect()
}

/// Whether the grouped path may run on `dev`: on a GPU, unless `KILN_MOE_GROUPED=0`; on the
/// CPU with `KILN_MOE_GROUPED=1`.
fn grouped_on(dev: &Device) -> bool {
    static GROUPED: OnceLock<Option<String>> = OnceLock::new();
    match knob(&GROUPED, "KILN_MOE_GROUPED") {
        Some("0") => false,
        Some("1") => true,
        _ => matches!(dev, Device::Cuda(_)),
    }
}

/// The environment variable `name`, read once into `cell`: every MoE layer of every step asks.
fn knob(cell: &'static OnceLock<Option<String>>, name: &str) -> Option<&'static str> {
    cell.get_or_init(|| std::env::var(name).ok()).as_deref()
}

/// Each expert's `(input, down)` projection weights when the grouped path applies (see the
/// module header): every one dense in the activations' dtype, and a GPU (or
/// `KILN_MOE_GROUPED=1`; `=0` turns the path off).
fn grouped_weights<'a>(dev: &Device, experts: &'a [Mlp], dtype: DType) -> Option<Vec<(&'a Tensor, &'a Tensor)>> {
    if !grouped_on(dev) {
        return None;
    }
    let dense = |w: &'a Weight| match w {
        Weight::Dense(t) if t.dtype() == dtype => Some(t),
        _ => None,
    };
    let inter = experts.first()?.inter;
    experts.iter().map(|e| Some((dense(&e.w_in)?, dense(&e.w_down)?)).filter(|_| e.inter == inter)).collect()
}

/// A chunk of tokens' chosen (token, expert) pairs sorted by expert: `ids[r]` is the token row
/// of sorted row `r`; `groups` each expert's sorted rows (ascending experts, empty ones left
/// out); `pos` / `w` the sorted row and weight of each token's choices, token-major in routing
/// order (what the combine reads).
#[derive(Debug, PartialEq)]
pub struct Sorted {
    pub ids: Vec<i32>,
    pub groups: Vec<(usize, Range<usize>)>,
    pub pos: Vec<u32>,
    pub w: Vec<f32>,
}

/// [`Sorted`] for `routes` (each token's `k` choices; token `t` is row `first + t`), by
/// counting: within an expert, its tokens keep their order.
pub fn sort_by_expert(routes: &[Vec<(usize, f32)>], first: usize, experts: usize) -> Sorted {
    let mut start = vec![0usize; experts + 1];
    for &(e, _) in routes.iter().flatten() {
        start[e + 1] += 1;
    }
    for e in 0..experts {
        start[e + 1] += start[e];
    }
    let groups = (0..experts).filter(|&e| start[e + 1] > start[e]).map(|e| (e, start[e]..start[e + 1])).collect();
    let total = start[experts];
    let (mut ids, mut pos, mut w) = (vec![0i32; total], Vec::with_capacity(total), Vec::with_capacity(total));
    let mut next = start;
    for (t, chosen) in routes.iter().enumerate() {
        for &(e, wt) in chosen {
            let r = next[e];
            next[e] += 1;
            ids[r] = (first + t) as i32;
            pos.push(r as u32);
            w.push(wt);
        }
    }
    Sorted { ids, groups, pos, w }
}

/// The grouped path (see the module header) over every token of `h`: the sorted rows through
/// the experts in chunks that fit the scratch (an expert's rows may straddle two chunks), then
/// one combine over all of them.
#[allow(clippy::too_many_arguments)]
fn forward_grouped(
    d: &Decoder,
    m: MoeSpec,
    routes: &[Vec<(usize, f32)>],
    weights: &[(&Tensor, &Tensor)],
    h: &Tensor,
    ws: &mut Workspace,
    (gate_up, act): (&mut Tensor, &mut Tensor),
    out: &mut Tensor,
) -> Result<(), ModelError> {
    let dev = &d.dev;
    let k = m.top_k.clamp(1, m.experts.max(1));
    let sorted = sort_by_expert(routes, 0, m.experts);
    let total = sorted.ids.len();
    let chunk = ws.x_e.rows().min(gate_up.rows()).min(act.rows()).max(1);
    let inter = weights.first().map_or(0, |(_, down)| down.cols());
    let ids = Tensor::from_host(dev, &sorted.ids, 1, total)?;
    for r0 in (0..total).step_by(chunk) {
        let len = (total - r0).min(chunk);
        let mut xs = ws.x_e.view_rows(0, len)?;
        gather::gather_rows::run(dev, h, &ids.view_cols(r0, len)?, &mut xs)?;
        // Each expert's rows inside this chunk, counted from the chunk's first row.
        let groups = |down: bool| -> Vec<Group<'_>> {
            let pick = |e: usize| if down { weights[e].1 } else { weights[e].0 };
            let clip = |r: &Range<usize>| r.start.max(r0) - r0..r.end.min(r0 + len).max(r0) - r0;
            sorted
                .groups
                .iter()
                .map(|(e, r)| Group { rows: clip(r), w: pick(*e) })
                .filter(|g| !g.rows.is_empty())
                .collect()
        };
        let mut gu = gate_up.view_rows(0, len)?.view_cols(0, d.mlp_in_cols(inter))?;
        grouped_matmul(dev, &xs, &groups(false), &mut gu)?;
        let mut a = act.view_rows(0, len)?.view_cols(0, inter)?;
        d.activate(&gu, &mut a)?;
        grouped_matmul(dev, &a, &groups(true), &mut ws.y_e.view_rows(r0, len)?)?;
    }
    let choices = Choices { pos: &sorted.pos, w: &sorted.w, k };
    combine(dev, &ws.y_e.view_rows(0, total)?, choices, out)?;
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
    fn sorting_groups_each_experts_tokens_in_order_and_keeps_routing_order_for_the_combine() {
        // Three tokens (rows 10-12 of the step) of two choices each over four experts.
        let routes = vec![vec![(2, 0.6), (0, 0.4)], vec![(0, 0.7), (3, 0.3)], vec![(2, 0.5), (3, 0.5)]];
        let s = sort_by_expert(&routes, 10, 4);
        assert_eq!(s.ids, vec![10, 11, 10, 12, 11, 12]);
        assert_eq!(s.groups, vec![(0, 0..2), (2, 2..4), (3, 4..6)]);
        assert_eq!(s.pos, vec![2, 0, 1, 4, 3, 5]);
        assert_eq!(s.w, vec![0.6, 0.4, 0.7, 0.3, 0.5, 0.5]);
        for (t, chosen) in routes.iter().enumerate() {
            for (j, &(e, _)) in chosen.iter().enumerate() {
                let row = s.pos[t * 2 + j] as usize;
                assert_eq!(s.ids[row], 10 + t as i32);
                assert!(s.groups.iter().any(|(g, r)| *g == e && r.contains(&row)));
            }
        }
    }

    #[test]
    fn ties_keep_the_lower_expert_first() {
        let r = route(&[1.0, 1.0, 1.0, 1.0], 4, M);
        assert_eq!(r[0].iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
    }
}
