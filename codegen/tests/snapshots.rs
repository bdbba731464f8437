//! Snapshots of each test kernel's lowered IR (its text form), for f32 and bf16 storage: a
//! reviewer sees every change to what the passes produce.

mod common;

use common::kernels;
use kiln_codegen::ir::{DType, Kernel, RopeStyle};
use kiln_codegen::passes::lower;

fn text(make: impl Fn(DType) -> Kernel) -> String {
    [DType::F32, DType::BF16].map(|d| lower(make(d)).unwrap().to_string()).join("\n")
}

macro_rules! snap {
    ($name:ident, $make:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(stringify!($name), text($make));
        }
    };
}

snap!(rms_norm, kernels::rms_norm);
snap!(add_rms_norm, kernels::add_rms_norm);
snap!(layer_norm, kernels::layer_norm);
snap!(softmax, kernels::softmax);
snap!(silu_mul, kernels::silu_mul);
snap!(gelu_tanh_mul, kernels::gelu_tanh_mul);
snap!(rope_half, |d| kernels::rope(d, RopeStyle::HalfSplit, false));
snap!(rope_interleaved, |d| kernels::rope(d, RopeStyle::Interleaved, false));
snap!(rope_llama3, |d| kernels::rope(d, RopeStyle::HalfSplit, true));
snap!(logsumexp, kernels::logsumexp);
snap!(select_cmp, kernels::select_cmp);
snap!(pow, kernels::pow);
snap!(int_ops, kernels::int_ops);

#[test]
fn unary_ops() {
    let all: Vec<String> = kernels::FLOAT_UNARY.iter().map(|&op| text(|d| kernels::unary(d, op))).collect();
    insta::assert_snapshot!("unary_ops", all.join("\n"));
}
