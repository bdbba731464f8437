//! The grouped mixture-of-experts path (`KILN_MOE_GROUPED=1`: experts' rows sorted by expert,
//! one grouped product per projection, the combine kernel's CPU form), which a GPU takes by
//! default, held on the CPU to the same HF references as the per-expert path
//! (`arch_reference.rs`): Mixtral and Qwen3-MoE, f32 logits within 1e-4, 32 greedy tokens.
//! A test binary of its own: the switch is an environment variable of the process.

mod arch_support;

use arch_support::{check, fixture_dir};

#[test]
fn mixtral_and_qwen3_moe_through_the_grouped_path() {
    std::env::set_var("KILN_MOE_GROUPED", "1");
    for arch in ["mixtral", "qwen3_moe"] {
        check(arch, &fixture_dir(arch));
    }
}
