use kiln_fusion_macros::fused;

#[fused]
pub fn three_args(q: Query, kv: PagedKv, #[comptime] scale: f32) -> Query {
    attention(q, kv, scale, |score, q_pos, k_pos| score)
}

#[fused]
pub fn tensor_param(q: Query, kv: PagedKv, bias: Row) -> Query {
    attention(q, kv, 0.125, |score, _q, _k, _h| score)
}

#[fused]
pub fn reduces(q: Query, kv: PagedKv, #[comptime] scale: f32) -> Query {
    attention(q, kv, scale, |score, _q, _k, _h| score - max(score))
}

fn main() {}
