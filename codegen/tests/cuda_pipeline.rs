//! The emitter behind the whole pipeline (`kiln_codegen::compile`: lower, schedule, emit): the
//! reference kernels and a frontend-level softmax come out as CUDA, and `Compiled::cuda` is
//! exactly what `cuda::emit` gives for the lowered kernel and its schedule.

// Inside `mod cuda` so that `cargo test -p kiln-codegen cuda` selects these tests.
mod cuda {
    use kiln_codegen::builder::Builder;
    use kiln_codegen::cuda::{emit, samples};
    use kiln_codegen::ir::{DType, OutputKind, ParamKind};
    use kiln_codegen::{compile, Compiled};

    fn compiled(k: kiln_codegen::ir::Kernel) -> Compiled {
        let name = k.spec_name();
        compile(k).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn samples_compile_through_the_pipeline() {
        for k in samples::all().unwrap() {
            let c = compiled(k);
            assert_eq!(c.cuda, emit(&c.kernel, &c.schedule).unwrap(), "{}", c.kernel.spec_name());
        }
    }

    #[test]
    fn frontend_softmax_is_lowered_then_emitted() {
        for d in DType::STORAGE {
            let mut b = Builder::new("softmax_op", "test", d);
            let x = b.param("x", ParamKind::Row(d)).unwrap();
            let xf = b.widen(x).unwrap();
            let y = b.softmax(xf).unwrap();
            b.output("y", OutputKind::Row(d), y).unwrap();
            let c = compiled(b.finish().unwrap());
            for needle in ["kiln_block_max(", "kiln_block_sum(", "expf(", "for (int it = 0; it < KILN_MAX_ITERS; ++it)"]
            {
                assert!(c.cuda.contains(needle), "{}: no `{needle}`", c.kernel.spec_name());
            }
            assert_eq!(c.cuda.matches("p0_x_row + c0)").count(), 1, "the row is read once");
        }
    }
}
