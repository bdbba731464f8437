//! Snapshots of the CUDA emitted for the reference kernels (`kiln_codegen::cuda::samples`).
//! A change to the emitter shows up here as a reviewable diff of generated code; accept it
//! with `cargo insta review` (or `INSTA_UPDATE=always`) once it reads right.

// Inside `mod cuda` so that `cargo test -p kiln-codegen cuda` selects these tests.
mod cuda {
    use kiln_codegen::cuda::{self, samples};
    use kiln_codegen::ir::DType;
    use kiln_codegen::schedule::schedule;

    fn cuda_of(name: &str, d: DType) -> String {
        let (_, f) = samples::SAMPLES
            .iter()
            .chain(&samples::EDGE_CASES)
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no sample `{name}`"));
        let k = f(d).expect("sample builds");
        cuda::emit(&k, &schedule(&k)).expect("sample emits")
    }

    macro_rules! snap {
        ($test:ident, $name:literal, $d:expr) => {
            #[test]
            fn $test() {
                insta::assert_snapshot!(cuda_of($name, $d));
            }
        };
    }

    snap!(rms_norm_bf16, "rms_norm", DType::BF16);
    snap!(rms_norm_f16, "rms_norm", DType::F16);
    snap!(rms_norm_f32, "rms_norm", DType::F32);
    snap!(add_rms_norm_bf16, "add_rms_norm", DType::BF16);
    snap!(silu_mul_bf16, "silu_mul", DType::BF16);
    snap!(rope_half_split_bf16, "rope_half_split", DType::BF16);
    snap!(rope_llama3_interleaved_f32, "rope_llama3_interleaved", DType::F32);
    snap!(rope_table_interleaved_bf16, "rope_table_interleaved", DType::BF16);
    snap!(rope_bias_half_split_bf16, "rope_bias_half_split", DType::BF16);
    snap!(rms_norm_rope_bf16, "rms_norm_rope", DType::BF16);
    snap!(logsumexp_bf16, "logsumexp", DType::BF16);
    snap!(softmax_bf16, "softmax", DType::BF16);
    snap!(top2_f16, "top2", DType::F16);
    snap!(op_zoo_bf16, "op_zoo", DType::BF16);
    snap!(per_row_only_f16, "per_row_only", DType::F16);
    snap!(copy_f32, "copy", DType::F32);
}
