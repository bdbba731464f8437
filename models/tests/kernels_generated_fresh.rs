//! `kernels-generated/` matches the kernels: every specialisation's CUDA is there, byte-equal,
//! and nothing stale is left (docs/architecture.md, the checks every kernel gets).

use kiln_models::kernels::generated;

#[test]
fn kernels_generated_is_fresh() {
    let d = generated::check(&generated::dir()).unwrap();
    assert!(d.is_clean(), "kernels-generated/ is out of date:\n{d}run `cargo run -p kiln-models --bin write-kernels` and commit the result");
}
