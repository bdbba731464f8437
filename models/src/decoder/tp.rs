//! Tensor parallelism as data: which part of every weight one rank holds, and the shapes its
//! step runs with.
//!
//! The split (Megatron's): q/k/v and gate/up are column-parallel (each rank holds whole heads,
//! a slice of the intermediate features: rows of the `[out, in]` weight), o and down are
//! row-parallel (the matching columns: each rank's product is a partial sum, all-reduced
//! before the residual add), the LM head is vocabulary-parallel (rows of the vocabulary, the
//! logits all-gathered). Norms, q/k norms, RoPE tables and the MoE router are replicated; the
//! embedding table is held by rank 0 alone, whose looked-up rows are broadcast.
//!
//! KV heads: with `world` dividing the KV heads, each rank holds `kv / world` of them. With more
//! ranks than KV heads (`world` a multiple of them), each KV head is replicated on
//! `world / kv` consecutive ranks, the ranks whose query heads use it (vLLM's rule): rank `r`
//! holds KV head `r * kv / world`. Any other count is refused, naming the numbers.
//!
//! Invariant: a rank's [`DecoderSpec`] is the model's with the per-rank head counts and
//! intermediate sizes, so the step, the workspace and the KV pools need no other change; every
//! range here is whole heads, whole features, whole vocabulary rows.

use super::DecoderSpec;
use crate::model::ModelError;
use crate::weights::Part;
use std::ops::Range;

/// One rank's ranges of a model's heads, features and vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RankPlan {
    pub rank: usize,
    pub world: usize,
    q_heads: Range<usize>,
    kv_heads: Range<usize>,
    inter: Range<usize>,
    moe_inter: Range<usize>,
    pub vocab: Range<usize>,
}

fn even(what: &str, n: usize, world: usize, rank: usize) -> Result<Range<usize>, ModelError> {
    if !n.is_multiple_of(world) {
        return Err(ModelError::Unsupported(format!(
            "tensor parallelism over {world} ranks: {n} {what} do not divide"
        )));
    }
    let k = n / world;
    Ok(rank * k..(rank + 1) * k)
}

impl RankPlan {
    pub fn new(spec: &DecoderSpec, rank: usize, world: usize) -> Result<RankPlan, ModelError> {
        let c = &spec.cfg;
        if world == 0 || rank >= world {
            return Err(ModelError::Load(format!("rank {rank} of a group of {world}")));
        }
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let q_heads = even("attention heads", nh, world, rank)?;
        let kv_heads = if nkv.is_multiple_of(world) {
            even("KV heads", nkv, world, rank)?
        } else if world.is_multiple_of(nkv) {
            let h = rank * nkv / world;
            h..h + 1
        } else {
            return Err(ModelError::Unsupported(format!(
                "tensor parallelism over {world} ranks: {nkv} KV heads neither divide among them nor replicate \
                 evenly (the rank count must divide the KV heads or be a multiple of them)"
            )));
        };
        Ok(RankPlan {
            rank,
            world,
            q_heads,
            kv_heads,
            // Only dense layers use the dense size (a MoE-only model's may not divide).
            inter: if spec.layers.iter().any(|l| !l.moe) {
                even("intermediate features", c.intermediate_size, world, rank)?
            } else {
                0..0
            },
            moe_inter: match spec.moe {
                Some(m) => even("expert intermediate features", m.intermediate, world, rank)?,
                None => 0..0,
            },
            vocab: even("vocabulary rows", c.vocab_size, world, rank)?,
        })
    }

    /// The rank's spec: the model's, with its own head counts and intermediate sizes.
    pub fn rank_spec(&self, spec: &DecoderSpec) -> DecoderSpec {
        let mut s = spec.clone();
        s.cfg.num_attention_heads = self.q_heads.len();
        s.cfg.num_key_value_heads = self.kv_heads.len();
        s.cfg.intermediate_size = self.inter.len();
        if let Some(m) = &mut s.moe {
            m.intermediate = self.moe_inter.len();
        }
        s
    }

    /// Rows `[q | k | v]` of a fused projection (or bias) of `hd`-wide heads that this rank
    /// keeps, as ranges of each part's own rows.
    pub fn qkv_rows(&self, hd: usize) -> [Range<usize>; 3] {
        let rows = |r: &Range<usize>| r.start * hd..r.end * hd;
        [rows(&self.q_heads), rows(&self.kv_heads), rows(&self.kv_heads)]
    }

    /// The columns of o's weight (the attention output features) this rank multiplies.
    pub fn o_cols(&self, hd: usize) -> Range<usize> {
        self.q_heads.start * hd..self.q_heads.end * hd
    }

    /// The intermediate features of a dense MLP (`moe`: of each expert).
    pub fn inter(&self, moe: bool) -> Range<usize> {
        if moe {
            self.moe_inter.clone()
        } else {
            self.inter.clone()
        }
    }
}

/// `r` shifted by `by` rows (a part of a fused tensor after the parts before it).
pub(crate) fn shifted(r: &Range<usize>, by: usize) -> Range<usize> {
    r.start + by..r.end + by
}

/// Rows `r` of a tensor, or the whole of it without a plan.
pub(crate) fn rows_or_whole(plan: Option<&RankPlan>, r: impl FnOnce(&RankPlan) -> Range<usize>) -> Part {
    plan.map_or(Part::Whole, |p| Part::Rows(r(p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;

    fn spec(nh: usize, nkv: usize) -> DecoderSpec {
        let cfg = LlamaConfig {
            hidden_size: 8 * nh,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: nh,
            num_key_value_heads: nkv,
            head_dim: 8,
            vocab_size: 240,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
            architecture: "llama".into(),
        };
        DecoderSpec::llama(cfg)
    }

    #[test]
    fn kv_heads_split_or_replicate_by_the_stated_rule() {
        // 8 query heads, 2 KV heads (groups of 4): 2 ranks split them, 4 and 8 replicate.
        let s = spec(8, 2);
        let kv = |world: usize| -> Vec<Range<usize>> {
            (0..world).map(|r| RankPlan::new(&s, r, world).unwrap().kv_heads).collect()
        };
        assert_eq!(kv(2), vec![0..1, 1..2]);
        assert_eq!(kv(4), vec![0..1, 0..1, 1..2, 1..2]);
        assert_eq!(kv(8).iter().map(|r| r.start).collect::<Vec<_>>(), vec![0, 0, 0, 0, 1, 1, 1, 1]);
        // A rank's query heads all belong to the group of the KV head it holds.
        for world in [1, 2, 4, 8] {
            for r in 0..world {
                let p = RankPlan::new(&s, r, world).unwrap();
                assert!(p.q_heads.clone().all(|q| p.kv_heads.contains(&(q / 4))), "world {world} rank {r}");
            }
        }
        let e = RankPlan::new(&spec(9, 3), 0, 2).unwrap_err().to_string();
        assert!(e.contains("9 attention heads do not divide"), "{e}");
        let e = RankPlan::new(&spec(12, 3), 0, 4).unwrap_err().to_string();
        assert!(e.contains("3 KV heads neither divide"), "{e}");
    }

    #[test]
    fn a_rank_spec_has_its_own_heads_and_features() {
        let s = spec(8, 2);
        let p = RankPlan::new(&s, 1, 4).unwrap();
        let r = p.rank_spec(&s);
        assert_eq!((r.cfg.num_attention_heads, r.cfg.num_key_value_heads, r.cfg.intermediate_size), (2, 1, 24));
        assert_eq!(r.cfg.hidden_size, s.cfg.hidden_size, "the residual stream is whole on every rank");
        assert_eq!(p.qkv_rows(8), [16..32, 0..8, 0..8]);
        assert_eq!(p.o_cols(8), 16..32);
        assert_eq!(p.vocab, 60..120);
    }
}
