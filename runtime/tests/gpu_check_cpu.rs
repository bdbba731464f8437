//! The GPU check's harness, run with the CPU device on both sides (no GPU needed): every
//! sample kernel × dtype × shape, dense and offset layouts, must come out identical, and the
//! report must render. Also the comparison metrics on hand-made data.

use kiln_codegen::ir::DType;
use kiln_runtime::gpu_check::compare::{compare, tolerance};
use kiln_runtime::gpu_check::{run_all, samples, CheckConfig, Layout};
use kiln_runtime::Device;

#[test]
fn harness_self_test_on_cpu() {
    let cfg = CheckConfig { rows: vec![1, 7], widths: vec![576], reps: 0, seed: 7, ..CheckConfig::default() };
    let defs = samples::all().unwrap();
    let report = run_all(&Device::Cpu, defs, &cfg).unwrap();
    let md = report.markdown();
    println!("{md}");
    // 5 kernels × 3 dtypes × (2 dense shapes + 1 offset case).
    assert_eq!(report.cases.len(), defs.len() * 3 * 3);
    for c in &report.cases {
        assert!(
            c.pass && c.error.is_none(),
            "{} {} {}x{} {:?}: {:?} {:?}",
            c.kernel,
            c.dtype,
            c.rows,
            c.width,
            c.layout,
            c.diff,
            c.error
        );
        assert_eq!(c.diff.max_rel, 0.0, "CPU against CPU must be identical");
        assert!(c.median_us.is_none());
        assert!(c.bytes > 0);
    }
    assert!(report.cases.iter().any(|c| c.layout == Layout::Offset));
    assert!(report.all_passed());
    assert!(md.contains("| add_rms_norm | bf16 | 7×576 | Offset |"), "{md}");
    assert!(md.contains("ALL PASSED"));
}

#[test]
fn compare_metrics() {
    let d = compare(&[1.0, 2.0, f32::NAN], &[1.0, 2.0, 3.0], false);
    assert_eq!((d.unwritten, d.max_rel), (1, 0.0));
    assert!(!d.passes(1e-4));
    let d = compare(&[1.0, 2.1], &[1.0, 2.0], false);
    assert!((d.max_rel - 0.05).abs() < 1e-6, "{d:?}");
    let d = compare(&[i32::MIN as f32, 5.0], &[4.0, 5.0], true);
    assert_eq!(d.unwritten, 1);
    let d = compare(&[1.0], &[f32::NAN], false);
    assert_eq!(d.ref_nonfinite, 1);
    let d = compare(&[f32::INFINITY], &[1.0], false);
    assert!(d.max_rel.is_infinite());
    assert_eq!(tolerance(DType::BF16), 1e-2);
}
