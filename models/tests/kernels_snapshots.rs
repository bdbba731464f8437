//! The lowered IR of every kernel's bf16 specialisation, as text (insta snapshots in
//! `snapshots/`). The CUDA is snapshotted by `kernels-generated/` and its freshness test.

use kiln_codegen::ir::DType;
use kiln_models::kernels::ALL;

#[test]
fn lowered_ir_bf16() {
    for def in ALL {
        let k = &def.compiled(DType::BF16).unwrap().kernel;
        insta::assert_snapshot!(format!("{}_bf16", def.name), k.to_string());
    }
}

/// Every attention instance's score modifier after lowering, with its scale, as text.
#[test]
fn attention_score_modifiers_bf16() {
    for def in kiln_models::kernels::ATTENTION {
        let a = &def.compiled(DType::BF16).unwrap().kernel;
        insta::assert_snapshot!(format!("{}_bf16", def.name), format!("scale: {:?}\n{}", a.scale, a.score_mod));
    }
}
