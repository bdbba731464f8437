//! The calling convention of the generated attention kernels, shared by the emitter (which
//! writes the signatures) and the runtime (which marshals the arguments and builds the plan).
//!
//! **The plan** is one `int32` array per forward step, shared by every layer, built on the host
//! and copied to the device once ([`plan_len`], [`PlanLayout`]):
//! - `plan[0]`: keys per split (`part`), a multiple of [`TILE`] (or `>=` every context);
//! - `tok_seq[n_tokens]`: each query token's sequence (`-1`: a padding token, whose output is
//!   zeros);
//! - `tok_pos[n_tokens]`: each query token's position; it attends to keys `0 ..= tok_pos`;
//! - `seq_ctx[n_seqs]`: each sequence's context length (unused by the kernels; checks and tools);
//! - `block_tables[n_seqs * bt_stride]`: sequence `s`'s physical block of its key `t` is
//!   `block_tables[s * bt_stride + t / block_size]`; the key's cache row (slot) is that block
//!   times `block_size` plus `t % block_size`.
//!
//! **The split kernel** `{spec}_split_hd{HD}_g{G}` (one per head dim in [`HEAD_DIMS`] and group
//! cap in [`GROUP_CAPS`]): `grid = (n_tokens, n_kv_heads * ceil(group / G), n_splits)`,
//! [`THREADS`] threads, static shared memory only. Block `(t, y, s)` serves query heads
//! `kvh * group + g0 .. + min(G, group - g0)` of token `t` (`kvh = y / chunks`,
//! `g0 = (y % chunks) * G`) over keys `[lo + s * part, min(lo + (s + 1) * part, tok_pos + 1))`,
//! `lo` the first key of the query's window (0 without a window). With one
//! split it writes the normalised output; with more it writes unnormalised partials
//! (`part_o[((t * n_heads + h) * n_splits + s) * HD ..]`, f32) and their running max and sum
//! (`part_ml[2 * (..)]`), which `{spec}_combine_hd{HD}` (`grid = (n_tokens, n_heads)`, `HD`
//! threads) merges into the output.
//!
//! Arguments of the split kernel, in order: `q, q_stride, k_pool, v_pool, kv_stride, plan,
//! n_tokens, n_seqs, bt_stride, block_size, n_heads, n_kv_heads, scale, out, out_stride,
//! part_o, part_ml, n_splits`, then the comptime parameters (the template's `window` argument
//! is not one: the entry passes its `window` parameter, or 0, itself) (f32 as `float`, i32 and bool as
//! `int`). Of the combine kernel: `part_o, part_ml, n_splits, n_heads, out, out_stride`.
//! Pointers are device addresses of the storage dtype (`plan` int32, partials f32); strides
//! are in elements; the K/V pools and `kv_stride * sizeof(T)` must be 16-byte aligned.
//!
//! **The tensor-core kernel** `{spec}_mma_hd{HD}` (f16 / bf16 only): `grid = (n_items,
//! n_kv_heads)`, [`THREADS`] threads. `items` holds 4 `int32` per block of queries: the
//! sequence (`-1` for a block of padding tokens, whose output is zeros), the batch row of its first query, the number of queries (at most
//! [`mma_queries`]`(group)`), and the position of the first query; the block serves those
//! queries' heads of KV head `blockIdx.y` and writes the normalised output. Arguments: as the
//! split kernel's up to `out_stride`, then `items`, then the comptime parameters.
//!
//! **FP8 KV pools** (`--kv-cache-dtype fp8`; f16 / bf16 specialisations only,
//! [`fp8_kv_supported`]): `{spec}_split_kv8_hd{HD}_g{G}` and `{spec}_mma_kv8_hd{HD}` read K/V
//! pools of e4m3 bytes (`kv_stride` in bytes, pools and stride 8-byte aligned) and take one more
//! argument, `float v_scale`, right after `scale`: a key's value is its e4m3 × the layer's K
//! scale, which the caller folds into `scale`; a value's is its e4m3 × `v_scale`. The combine
//! kernel is shared. Each head dim's FP8 entries sit behind [`KV8_MACRO`] `== 1`, the others
//! behind `== 0` (the combine kernel in both); without the macro all are compiled.

use super::AttnKernel;

/// Head dims the CUDA template is instantiated for: 16 and 32 (small models and kiln's tiny
/// test checkpoints), 64, 80 (Phi-2), 96 (Phi-3 / Phi-4-mini), 128, 256 (Gemma). Each head dim's entries sit in the generated file
/// behind `#if` on [`HEAD_DIM_MACRO`]: the runtime compiles a module per head dim with only the
/// model's (NVRTC takes ~7 s for the 256 instances alone); without the macro (the CI compile
/// test) every head dim is compiled.
pub const HEAD_DIMS: [usize; 7] = [16, 32, 64, 80, 96, 128, 256];
/// The macro that selects one head dim's entries (see [`HEAD_DIMS`]).
pub const HEAD_DIM_MACRO: &str = "KILN_ATTN_HD";
/// Query heads per block (group caps) the split kernel is instantiated for.
pub const GROUP_CAPS: [usize; 2] = [4, 8];
/// Threads per block of the split kernel; also the keys per tile.
pub const THREADS: usize = 128;
/// Keys per tile (one per thread in the score phase); `part` is a multiple of it.
pub const TILE: usize = 128;

/// The macro that selects the entries over FP8 KV pools (`1`) or over pools of the storage
/// dtype (`0`).
pub const KV8_MACRO: &str = "KILN_ATTN_KV8";

/// Whether a specialisation has entries over FP8 KV pools (the half-precision ones: a GPU runs
/// models in f16 or bf16; f32 on a GPU serves checks).
pub fn fp8_kv_supported(a: &AttnKernel) -> bool {
    a.dtype.is_half()
}

/// The infix of an entry over FP8 KV pools.
fn kv_infix(fp8_kv: bool) -> &'static str {
    if fp8_kv {
        "_kv8"
    } else {
        ""
    }
}

pub fn split_entry(a: &AttnKernel, head_dim: usize, group_cap: usize, fp8_kv: bool) -> String {
    format!("{}_split{}_hd{head_dim}_g{group_cap}", a.spec_name(), kv_infix(fp8_kv))
}

pub fn combine_entry(a: &AttnKernel, head_dim: usize) -> String {
    format!("{}_combine_hd{head_dim}", a.spec_name())
}

/// The tensor-core entry of a half-precision specialisation (`None` for f32, and for head dims
/// outside 64..=128: below, a key row is under the 8 chunks its swizzle needs; above, the K and
/// V tiles outgrow static shared memory; the split kernel serves those prefills).
pub fn mma_entry(a: &AttnKernel, head_dim: usize, fp8_kv: bool) -> Option<String> {
    (a.dtype.is_half() && (64..=128).contains(&head_dim))
        .then(|| format!("{}_mma{}_hd{head_dim}", a.spec_name(), kv_infix(fp8_kv)))
}

/// Rows (query token × query head pairs) of one tensor-core block.
pub const MMA_ROWS: usize = 64;

/// Queries per tensor-core block for `group` query heads per KV head (`0` when the group
/// is larger than a block).
pub fn mma_queries(group: usize) -> usize {
    MMA_ROWS / group.max(1)
}

/// Every entry point of a specialisation for one head dim and KV pool type, in a fixed order
/// (its module is loaded with all of them).
pub fn entries_for(a: &AttnKernel, hd: usize, fp8_kv: bool) -> Vec<String> {
    let mut e: Vec<String> = GROUP_CAPS.iter().map(|&g| split_entry(a, hd, g, fp8_kv)).collect();
    e.push(combine_entry(a, hd));
    e.extend(mma_entry(a, hd, fp8_kv));
    e
}

/// Every entry point of a specialisation, in a fixed order (the combine kernels once).
pub fn entries(a: &AttnKernel) -> Vec<String> {
    let mut all: Vec<String> = HEAD_DIMS.iter().flat_map(|&hd| entries_for(a, hd, false)).collect();
    if fp8_kv_supported(a) {
        for hd in HEAD_DIMS {
            all.extend(GROUP_CAPS.iter().map(|&g| split_entry(a, hd, g, true)));
            all.extend(mma_entry(a, hd, true));
        }
    }
    all
}

/// The smallest group cap that covers `group` query heads per KV head (the largest cap when
/// none does: the heads are then split over several blocks).
pub fn group_cap(group: usize) -> usize {
    GROUP_CAPS.iter().copied().find(|&g| g >= group).unwrap_or(GROUP_CAPS[GROUP_CAPS.len() - 1])
}

/// Offsets of the plan's parts (in `i32` elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLayout {
    pub n_tokens: usize,
    pub n_seqs: usize,
    pub bt_stride: usize,
}

impl PlanLayout {
    pub fn tok_seq(&self) -> usize {
        1
    }
    pub fn tok_pos(&self) -> usize {
        1 + self.n_tokens
    }
    pub fn seq_ctx(&self) -> usize {
        1 + 2 * self.n_tokens
    }
    pub fn block_tables(&self) -> usize {
        1 + 2 * self.n_tokens + self.n_seqs
    }
    /// Elements of the whole plan.
    pub fn len(&self) -> usize {
        self.block_tables() + self.n_seqs * self.bt_stride
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}
