//! `WeightSource` shards: one rank's rows or columns of a tensor as stored, equal to the same
//! slice of the whole tensor; a column split never cuts a quantization block; a row split of a
//! permuted Q/K keeps whole heads and un-permutes per shard; uneven splits are errors naming
//! the tensor.

use kiln_models::gguf::{GgmlType, GgufBuilder, GgufFile, MetadataValue};
use kiln_models::weights::{GgufNaming, Shard, WeightSource};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A GGUF image with `blk.0.attn_q.weight` (F32, `[rows, cols]`, HF shape) and
/// `blk.0.ffn_up.weight` (Q8_0, `[4, 64]`).
fn source(rows: usize, cols: usize, q: &[f32], permuted_heads: Option<usize>) -> WeightSource {
    let mut rng = StdRng::seed_from_u64(3);
    let mut b = GgufBuilder::new();
    b.metadata("general.architecture", MetadataValue::String("llama".into())).unwrap();
    let f32_bytes: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
    b.tensor("blk.0.attn_q.weight", &[cols as u64, rows as u64], GgmlType::F32, f32_bytes).unwrap();
    let mut q8 = Vec::new();
    for _ in 0..4 * 64 / 32 {
        q8.extend_from_slice(&half::f16::from_f32(rng.random_range(0.01..0.1)).to_le_bytes());
        q8.extend((0..32).map(|_| rng.random::<u8>()));
    }
    b.tensor("blk.0.ffn_up.weight", &[64, 4], GgmlType::Q8_0, q8).unwrap();
    let file = GgufFile::from_bytes("test.gguf", b.to_bytes()).unwrap();
    let naming = GgufNaming {
        permuted_qk: permuted_heads.map(|h| (h, h)),
        ..GgufNaming::hf_order(&kiln_models::llama::GGUF_BLOCKS)
    };
    WeightSource::open_gguf(file, &naming).unwrap()
}

const Q: &str = "model.layers.0.self_attn.q_proj.weight";
const UP: &str = "model.layers.0.mlp.up_proj.weight";

fn values(src: &WeightSource, name: &str, shard: Option<Shard>) -> (Vec<usize>, Vec<f32>) {
    let t = src.read(name, None, shard).unwrap();
    (t.shape.clone(), t.to_f32().unwrap())
}

#[test]
fn row_and_column_shards_are_slices_of_the_whole() {
    let (rows, cols) = (8, 6);
    let q: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let src = source(rows, cols, &q, None);
    let (_, whole) = values(&src, Q, None);
    for rank in 0..2 {
        let (shape, part) = values(&src, Q, Some(Shard { rank, world: 2, dim: 0 }));
        assert_eq!(shape, [4, 6]);
        assert_eq!(part, whole[rank * 24..(rank + 1) * 24]);
        let (shape, part) = values(&src, Q, Some(Shard { rank, world: 3, dim: 1 }));
        assert_eq!(shape, [8, 2]);
        let want: Vec<f32> =
            (0..rows).flat_map(|r| whole[r * cols + 2 * rank..r * cols + 2 * rank + 2].to_vec()).collect();
        assert_eq!(part, want);
    }
    let e = src.read(Q, None, Some(Shard { rank: 0, world: 3, dim: 0 })).unwrap_err().to_string();
    assert!(e.contains(Q) && e.contains("do not split evenly"), "{e}");
    assert!(src.read(Q, None, Some(Shard { rank: 2, world: 2, dim: 0 })).is_err(), "rank 2 of 2 does not exist");
}

#[test]
fn a_column_shard_never_cuts_a_block() {
    let src = source(2, 2, &[0.0; 4], None);
    let (_, whole) = values(&src, UP, None);
    for rank in 0..2 {
        let (shape, part) = values(&src, UP, Some(Shard { rank, world: 2, dim: 1 }));
        assert_eq!(shape, [4, 32]);
        let want: Vec<f32> = (0..4).flat_map(|r| whole[r * 64 + 32 * rank..r * 64 + 32 * rank + 32].to_vec()).collect();
        assert_eq!(part, want);
    }
    let e = src.read(UP, None, Some(Shard { rank: 0, world: 4, dim: 1 })).unwrap_err().to_string();
    assert!(e.contains(UP) && e.contains("whole 32-element blocks"), "{e}");
}

#[test]
fn a_row_shard_of_permuted_rows_keeps_whole_heads() {
    // 4 heads of head_dim 4, stored in llama.cpp's order: each shard un-permutes its 2 heads.
    let (heads, hd, cols) = (4, 4, 3);
    let hf: Vec<f32> = (0..heads * hd * cols).map(|i| i as f32).collect();
    let stored = kiln_models::gguf::permute_qk_rows(&hf, heads * hd, cols, heads).unwrap();
    let src = source(heads * hd, cols, &stored, Some(heads));
    assert_eq!(values(&src, Q, None).1, hf, "the whole tensor comes back in HF order");
    for rank in 0..2 {
        let (_, part) = values(&src, Q, Some(Shard { rank, world: 2, dim: 0 }));
        assert_eq!(part, hf[rank * 2 * hd * cols..(rank + 1) * 2 * hd * cols], "rank {rank}");
    }
    let e = src.read(Q, None, Some(Shard { rank: 0, world: 8, dim: 0 })).unwrap_err().to_string();
    assert!(e.contains("permuted heads"), "{e}");
}

#[test]
fn every_tensor_must_be_consumed() {
    let src = source(2, 2, &[0.0; 4], None);
    src.read(Q, None, None).unwrap();
    let e = src.check_all_used().unwrap_err().to_string();
    assert!(e.contains(UP) && e.contains("not used"), "{e}");
    src.mark_used(UP);
    src.check_all_used().unwrap();
}
