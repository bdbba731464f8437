//! The row kernels every Llama-family model needs, written with `#[fused]`, one file per
//! family. Each `#[fused] fn k` becomes a module `k` (constants, `DEF`, `cpu`, `run`); each has
//! an obviously-correct `k_ref` beside it that the tests hold the CPU backend to.
//!
//! Invariant: [`ALL`] lists every kernel defined here exactly once; `kernels-generated/` holds
//! one `.cu` file per specialisation of these (written by `cargo run -p kiln-models --bin
//! write-kernels`, checked fresh by a test).

pub mod activation;
pub mod attention;
pub mod attention_check;
pub mod attention_gpu;
pub mod epilogue;
pub mod gather;
pub mod generated;
pub mod moe_route;
pub mod norm;
pub mod norm_quant;
pub mod qk_norm_rope;
pub mod rope;
pub mod softmax;

use kiln_codegen::attention::def::AttnDef;
use kiln_codegen::fused::FusedDef;

/// Every kernel of this crate, in a stable order (by family, then as written).
pub static ALL: &[&FusedDef] = &[
    &norm::rms_norm::DEF,
    &norm::add_rms_norm::DEF,
    &norm::layer_norm::DEF,
    &norm::add2_layer_norm::DEF,
    &norm_quant::rms_norm_quant_e4m3::DEF,
    &norm_quant::add_rms_norm_quant_e4m3::DEF,
    &norm_quant::rms_norm_quant_i8::DEF,
    &norm_quant::add_rms_norm_quant_i8::DEF,
    &activation::silu_mul::DEF,
    &activation::gelu_tanh_mul::DEF,
    &activation::gelu::DEF,
    &rope::rope_half::DEF,
    &rope::rope_interleaved::DEF,
    &rope::rope_half_llama3::DEF,
    &rope::rope_kv_write::DEF,
    &rope::rope_half_bias::DEF,
    &rope::rope_kv_write_bias::DEF,
    &rope::rope_kv_write_llama3::DEF,
    &rope::rope_half_table::DEF,
    &rope::rope_kv_write_table::DEF,
    &qk_norm_rope::qk_norm_rope_write::DEF,
    &qk_norm_rope::qk_norm_rope_write_llama3::DEF,
    &softmax::softmax::DEF,
    &epilogue::bias_add::DEF,
    &epilogue::residual_add::DEF,
    &epilogue::cast_to_f32::DEF,
    &epilogue::cast_from_f32::DEF,
    &epilogue::scale::DEF,
    &epilogue::softcap::DEF,
    &gather::gather_rows::DEF,
    &moe_route::moe_route_top2::DEF,
    &moe_route::moe_route_top8::DEF,
];

/// Every attention template instance of this crate (`kernels-generated/` holds one `.cu` per
/// specialisation of these too).
pub static ATTENTION: &[&AttnDef] = &[
    &attention::attn_causal::DEF,
    &attention::attn_sliding_window::DEF,
    &attention::attn_softcap::DEF,
    &attention::attn_softcap_window::DEF,
    &attention::attn_alibi::DEF,
];
