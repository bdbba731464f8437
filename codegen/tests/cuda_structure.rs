//! Properties of the emitted CUDA that snapshots alone would not guard: determinism, the
//! entry points and their access widths, register caching (each row read from memory once),
//! the per-node comments, liveness, and the typed errors for inputs the emitter refuses.

// Inside `mod cuda` so that `cargo test -p kiln-codegen cuda` selects these tests.
mod cuda {
    use kiln_codegen::abi;
    use kiln_codegen::builder::Builder;
    use kiln_codegen::cuda::{self, samples};
    use kiln_codegen::ir::{BinaryOp, DType, Kernel, Op, OutputKind, ParamKind, ReduceOp, Shape, UnaryOp, ValueId};
    use kiln_codegen::schedule::schedule;
    use kiln_codegen::CompileError;

    fn emit(k: &Kernel) -> String {
        cuda::emit(k, &schedule(k)).unwrap_or_else(|e| panic!("{}: {e}", k.spec_name()))
    }

    fn all() -> Vec<Kernel> {
        samples::all().expect("samples build")
    }

    fn emit_err(k: &Kernel) -> String {
        match cuda::emit(k, &schedule(k)) {
            Err(CompileError::Emit { kernel, msg }) => {
                assert_eq!(kernel, k.spec_name());
                msg
            }
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("{} emitted, but should have been refused", k.spec_name()),
        }
    }

    #[test]
    fn output_is_deterministic() {
        for k in all() {
            let again = samples::all().unwrap().into_iter().find(|x| x.spec_name() == k.spec_name()).unwrap();
            assert_eq!(emit(&k), emit(&again), "{}", k.spec_name());
            assert_eq!(emit(&k), emit(&k), "{}", k.spec_name());
        }
    }

    #[test]
    fn both_entry_points_with_their_vector_widths() {
        for k in all() {
            let text = emit(&k);
            let (ve, se) = abi::entry_names(&k);
            let vec = abi::kernel_vec(&k);
            let body = format!("{}_body", k.spec_name());
            for (entry, n) in [(&ve, vec), (&se, 1)] {
                let head = format!("extern \"C\" __global__ void __launch_bounds__({}) {entry}(", abi::MAX_THREADS);
                assert_eq!(text.matches(&head).count(), 1, "{entry}");
                assert!(text.contains(&format!("  {body}<{n}>(")), "{entry} must run the body with VEC={n}");
            }
            assert!(!text.contains("#include"), "{}: generated CUDA must be self-contained", k.spec_name());
        }
    }

    /// The vectorised entry moves 16 bytes per access of the widest tensor dtype: `VEC` times its
    /// size, and the prelude maps a 16-byte pack to `uint4`.
    #[test]
    fn vectorised_entry_uses_16_byte_accesses() {
        for k in all() {
            let text = emit(&k);
            let widest = k
                .params
                .iter()
                .filter(|p| matches!(p.kind, ParamKind::Row(_) | ParamKind::Bcast(_)))
                .map(|p| p.kind.dtype().size_bytes())
                .chain(k.outputs.iter().filter_map(|o| match o.kind {
                    OutputKind::Row(d) => Some(d.size_bytes()),
                    OutputKind::PerRow(_) => None,
                }))
                .max();
            let Some(widest) = widest else { continue };
            assert_eq!(abi::kernel_vec(&k) * widest, 16, "{}", k.spec_name());
            assert!(text.contains("template <> struct kiln_raw<16> { typedef uint4 type; };"));
            // Every tensor access of the body goes through the vector helpers (no element-wise
            // global loads); RoPE's own loads live in its prelude helpers.
            let body = &text[text.find("template <int VEC>\n__device__").expect("body")..];
            let loads = body.matches("kiln_load(").count();
            let stores = body.matches("kiln_store(").count();
            let row_tensors =
                k.nodes.iter().filter(|n| matches!(n.op, Op::Param(_)) && n.ty.shape == Shape::Elem).count();
            assert!(loads <= row_tensors, "{}", k.spec_name());
            let row_outputs = k.outputs.iter().filter(|o| matches!(o.kind, OutputKind::Row(_))).count();
            assert_eq!(stores, row_outputs, "{}", k.spec_name());
        }
    }

    /// Kernels with cached values keep them in `[KILN_MAX_ITERS][VEC]` register arrays and read
    /// each `Row` param from memory exactly once.
    #[test]
    fn cached_values_live_in_registers_and_rows_are_read_once() {
        let mut checked = 0;
        for k in all() {
            let s = schedule(&k);
            let text = emit(&k);
            if s.cached.is_empty() {
                assert!(
                    !text.contains("KILN_MAX_ITERS; ++it"),
                    "{}: uncached kernels use strided loops",
                    k.spec_name()
                );
                assert!(!text.contains("[KILN_MAX_ITERS][VEC]"), "{}", k.spec_name());
                continue;
            }
            checked += 1;
            assert!(
                text.contains("#pragma unroll\n  for (int it = 0; it < KILN_MAX_ITERS; ++it) {"),
                "{}",
                k.spec_name()
            );
            assert!(!text.contains("v += (int)blockDim.x"), "{}: cached kernels use the fixed loop", k.spec_name());
            for v in &s.cached {
                // A widened half param is cached as its packed bits; other values as f32 arrays.
                let (v, packed) = match k.node(*v).op {
                    Op::Cast(p, DType::F32) if k.ty(p).dtype.is_half() && matches!(k.node(p).op, Op::Param(_)) => {
                        (p, true)
                    }
                    Op::Param(_) => (*v, true),
                    _ => (*v, false),
                };
                let var = match &k.node(v).name {
                    Some(name) => format!("v{}_{name}", v.0),
                    None => format!("v{}", v.0),
                };
                let ty = kiln_type(k.ty(v).dtype);
                let arr = if packed {
                    format!("kiln_pack<{ty}, VEC> c_{var}[KILN_MAX_ITERS];")
                } else {
                    format!("{ty} c_{var}[KILN_MAX_ITERS][VEC];")
                };
                // Elementwise arithmetic over params is recomputed in each stage that reads it
                // (the params are cached instead): defined once per stage, no array.
                let recomputed = !packed && text.matches(&format!("const {ty} {var} = ")).count() >= 2;
                assert!(
                    text.contains(&arr) || recomputed,
                    "{}: `{var}` neither cached (`{arr}`) nor recomputed",
                    k.spec_name()
                );
            }
            for (i, p) in k.params.iter().enumerate() {
                if let ParamKind::Row(_) = p.kind {
                    let reads = text.matches(&format!("p{i}_{}_row + c0)", p.name)).count();
                    assert_eq!(reads, 1, "{}: row param `{}` read {reads} times", k.spec_name(), p.name);
                }
            }
        }
        assert!(checked >= 4 * 3, "the samples must include cached kernels in every dtype");
    }

    /// Each emitted node is computed on a line that ends with `// %N = <op text>`.
    #[test]
    fn every_computed_node_carries_its_ir_comment() {
        for k in all() {
            let text = emit(&k);
            let live = live_nodes(&k);
            for (i, n) in k.nodes.iter().enumerate() {
                let comment = format!("// %{i} = {}", k.op_text(&n.op));
                if live[i] {
                    assert!(text.lines().any(|l| l.ends_with(&comment)), "{}: missing `{comment}`", k.spec_name());
                }
            }
        }
    }

    fn kiln_type(d: DType) -> &'static str {
        match d {
            DType::F32 => "float",
            DType::F16 => "kiln_f16",
            DType::BF16 => "kiln_bf16",
            DType::I32 => "int",
            DType::Bool => "bool",
            DType::F8E4M3 => "kiln_e4m3",
            DType::I8 => "kiln_i8",
        }
    }

    fn live_nodes(k: &Kernel) -> Vec<bool> {
        let mut live = vec![false; k.nodes.len()];
        for o in &k.outputs {
            live[o.value.index()] = true;
        }
        for i in (0..k.nodes.len()).rev() {
            if live[i] {
                // A rope's source is evaluated inside the rope (in a lambda whose lines carry
                // the comments too, or read straight from its row).
                for o in k.nodes[i].op.value_operands() {
                    live[o.index()] = true;
                }
            }
        }
        live
    }

    #[test]
    fn dead_nodes_and_unused_params_emit_nothing() {
        let k = samples::dead_code(DType::BF16).unwrap();
        let text = emit(&k);
        assert!(!text.contains("expf("), "the dead exp must not be emitted");
        assert!(!text.contains("v1_unused"), "an unused param is not loaded");
        assert!(!text.contains("p1_unused_row"));
    }

    #[test]
    fn kernels_without_columns_have_no_loop() {
        let k = samples::per_row_only(DType::F16).unwrap();
        let text = emit(&k);
        assert!(!text.contains("nvec"));
        assert!(!text.contains("for (int v"));
        assert!(text.contains("if (threadIdx.x == 0) o0_y[row] = v5;"));
    }

    #[test]
    fn names_from_any_identifier_stay_distinct() {
        let mut b = Builder::new("odd_names", "test", DType::F32);
        let a = b.param("größe", ParamKind::Row(DType::F32)).unwrap();
        let c = b.param("größe2", ParamKind::Row(DType::F32)).unwrap();
        let s = b.binary(BinaryOp::Add, a, c).unwrap();
        b.output("row", OutputKind::Row(DType::F32), s).unwrap();
        let text = emit(&b.finish().unwrap());
        assert!(text.contains("const float* __restrict__ p0_gr__e,"));
        assert!(text.contains("const float* __restrict__ p1_gr__e2,"));
        assert!(text.contains("float* __restrict__ o0_row,"));
    }

    #[test]
    fn refuses_unlowered_softmax() {
        let mut b = Builder::new("sm", "test", DType::F32);
        let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
        let y = b.softmax(x).unwrap();
        b.output("y", OutputKind::Row(DType::F32), y).unwrap();
        let msg = emit_err(&b.finish().unwrap());
        assert!(msg.contains("softmax must be lowered"), "{msg}");
    }

    #[test]
    fn refuses_arithmetic_on_halves() {
        let mut b = Builder::new("h", "test", DType::BF16);
        let x = b.param("x", ParamKind::Row(DType::BF16)).unwrap();
        let y = b.unary(UnaryOp::Exp, x).unwrap();
        b.output("y", OutputKind::Row(DType::BF16), y).unwrap();
        let msg = emit_err(&b.finish().unwrap());
        assert!(msg.contains("half type"), "{msg}");
    }

    #[test]
    fn refuses_bool_tensors() {
        let mut b = Builder::new("b", "test", DType::F32);
        let m = b.param("mask", ParamKind::Row(DType::Bool)).unwrap();
        let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
        let z = b.f32(0.0);
        let y = b.select(m, x, z).unwrap();
        b.output("y", OutputKind::Row(DType::F32), y).unwrap();
        let msg = emit_err(&b.finish().unwrap());
        assert!(msg.contains("bool tensor"), "{msg}");
    }

    #[test]
    fn refuses_entry_names_that_are_not_c_identifiers() {
        let mut b = Builder::new("not-an-ident", "test", DType::F32);
        let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
        b.output("y", OutputKind::Row(DType::F32), x).unwrap();
        let msg = emit_err(&b.finish().unwrap());
        assert!(msg.contains("not a C identifier"), "{msg}");
    }

    #[test]
    fn refuses_a_schedule_that_does_not_fit_the_kernel() {
        let k = samples::rms_norm(DType::F32).unwrap();
        let mut s = schedule(&k);
        // Pretend nothing is cached: the kernel would read %1 in stage 1 without having kept it.
        s.cached.clear();
        assert!(matches!(cuda::emit(&k, &s), Err(CompileError::Emit { .. })));
        let mut s = schedule(&k);
        s.stage_of.pop();
        assert!(matches!(cuda::emit(&k, &s), Err(CompileError::Emit { .. })));
        // A reduction's result read in the stage that accumulates it.
        let mut s = schedule(&k);
        let r = k.nodes.iter().position(|n| matches!(n.op, Op::Reduce(ReduceOp::Mean, _))).unwrap();
        let user = k.nodes.iter().position(|n| n.op.operands().contains(&ValueId(r as u32))).unwrap();
        let from = s.stage_of[user];
        s.stages[from].uniform.retain(|v| v.index() != user);
        s.stages[0].uniform.push(ValueId(user as u32));
        s.stage_of[user] = 0;
        let msg = match cuda::emit(&k, &s) {
            Err(CompileError::Emit { msg, .. }) => msg,
            other => panic!("{other:?}"),
        };
        assert!(msg.contains("before the reduction is finished"), "{msg}");
    }

    /// Exactly representable f32 constants are written in decimal; others by their bits.
    #[test]
    fn constants_are_exact() {
        let mut b = Builder::new("consts", "test", DType::F32);
        let x = b.param("x", ParamKind::Row(DType::F32)).unwrap();
        let mut acc = x;
        for c in [0.1f32, 1e-6, f32::MAX, f32::MIN_POSITIVE, 1.0e-45, f32::INFINITY] {
            let v = b.f32(c);
            acc = b.binary(BinaryOp::Add, acc, v).unwrap();
        }
        b.output("y", OutputKind::Row(DType::F32), acc).unwrap();
        let text = emit(&b.finish().unwrap());
        for lit in [
            "= 0.1f;",
            "= 1e-6f;",
            "= 3.4028235e38f;",
            "= 1.1754944e-38f;",
            "= 1e-45f;",
            "= __uint_as_float(0x7f800000u);",
        ] {
            assert!(text.contains(lit), "missing `{lit}`");
        }
    }
}
