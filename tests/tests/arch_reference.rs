//! Every architecture against HF transformers, on the tiny random checkpoints of
//! tests/fixtures/arch-tiny (made by tests/fixtures/make_arch_tiny.py with every feature of the
//! architecture on: sliding windows shorter than the longest prompt, softcaps that bite, several
//! experts): on the CPU in f32, the last-position logits of each prompt within 1e-4 of the
//! largest reference logit, every position's logits of the longer prompts (sliding-window
//! positions included), and 32 greedy tokens equal. The GGUF written from the same weights
//! (llama.cpp's names and conventions) is held to the same references.

mod arch_support;

use arch_support::{check, fixture_dir};

fn check_safetensors(arch: &str) {
    check(arch, &fixture_dir(arch));
}

fn check_gguf(arch: &str) {
    check(arch, &fixture_dir(arch).join(format!("{arch}-tiny.gguf")));
}

macro_rules! arch_tests {
    ($($arch:ident),*) => {
        mod safetensors {
            $(#[test] fn $arch() { super::check_safetensors(stringify!($arch)); })*
        }
        mod gguf {
            $(#[test] fn $arch() { super::check_gguf(stringify!($arch)); })*
        }
    };
}

arch_tests!(mistral, qwen3, gemma2, gemma3, falcon, phi3, mixtral, qwen3_moe);
