//! `kiln perplexity` as a user runs it (default model, CPU): bad input is a one-line error and
//! exit status 1, never a panic; a small run with the model as its own `--kl-base` gives a KL
//! of zero and the base's perplexity equal to the model's.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn text() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/perplexity/founding-documents.txt")
        .display()
        .to_string()
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["perplexity", "--device", "cpu"])
        .args(args)
        .output()
        .expect("run kiln")
}

fn fails_with(args: &[&str], want: &str) {
    let out = kiln(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains("error:") && err.contains(want), "{args:?}: expected {want:?} in {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let text = text();
    fails_with(&["--file", "/nonexistent/kiln-perplexity.txt"], "reading /nonexistent/kiln-perplexity.txt");
    fails_with(&["--file", &text, "--ctx", "511"], "--ctx 511: the window must be an even number");
    fails_with(&["--file", &text, "--ctx", "2"], "--ctx 2: the window must be an even number");
    fails_with(&["--file", &text, "--max-chunks", "0"], "--max-chunks 0");
    // These need the model's tokenizer and context length.
    fails_with(&["--file", &text, "--ctx", "16384"], "longer than the model's maximum context of 8192");
    let short = std::env::temp_dir().join(format!("kiln-perplexity-short-{}.txt", std::process::id()));
    std::fs::write(&short, "We the People of the United States").unwrap();
    fails_with(&["--file", short.to_str().unwrap()], "shorter than one window of 512");
    std::fs::remove_file(&short).ok();
}

#[test]
fn the_model_against_itself_has_zero_kl() {
    let model = kiln_models::fetch::default_model_path().expect("the default model (run `kiln fetch`)");
    let model = model.to_str().unwrap();
    let out = kiln(&["--file", &text(), "--ctx", "64", "--max-chunks", "2", "--json", "--kl-base", model]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("[1]") && err.contains("[2]"), "running values on stderr: {err}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["chunks"].as_u64(), r["ctx"].as_u64(), r["scored"].as_u64()), (Some(2), Some(64), Some(62)));
    let ppl = r["model"]["ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "{ppl}");
    assert_eq!(r["base"]["ppl"].as_f64(), Some(ppl));
    assert!(r["kl"]["mean"].as_f64().unwrap().abs() < 1e-9, "{}", r["kl"]);
    assert_eq!(r["kl"]["same_top"].as_f64(), Some(1.0));
    assert_eq!(r["text_tokens"].as_u64(), Some(3599));
    assert_eq!(r["per_chunk"].as_array().map(Vec::len), Some(2));
}
