//! The `#[fused]` compile-fail suite: one file per error class in `tests/ui/`, each with the
//! exact rustc output it must produce (`.stderr`). Regenerate with `TRYBUILD=overwrite` after
//! an intended change to a message, and review the diff: the span must stay on the user's
//! offending tokens.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
