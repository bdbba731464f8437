//! Device selection on a machine without a GPU: `Device::auto` falls back to the CPU with a
//! reason, and asking for CUDA is a typed error, never a panic (cudarc would panic on a
//! missing libcuda if we let it).

use kiln_runtime::device::cuda_libs;
use kiln_runtime::{Device, DeviceError};

#[test]
fn auto_picks_cpu_without_a_driver() {
    let libs = cuda_libs::probe();
    let (dev, why) = Device::auto();
    println!("Device::auto(): {why}; libs: {libs:?}");
    assert!(!why.is_empty());
    if !libs.driver {
        assert!(dev.is_cpu(), "no libcuda here, so the CPU: {why}");
        assert!(why.starts_with("CPU"), "{why}");
    }
}

#[test]
fn cuda_without_libraries_is_an_error_not_a_panic() {
    let libs = cuda_libs::probe();
    match Device::cuda(0) {
        Ok(d) => assert!(libs.all_present(), "opened {d:?} without the libraries?"),
        Err(DeviceError::LibrariesMissing { missing }) => {
            assert!(!libs.all_present());
            assert!(!missing.is_empty());
        }
        Err(other) => assert!(libs.all_present(), "unexpected error with libraries missing: {other}"),
    }
}

#[test]
fn cpu_device_basics() {
    let d = Device::Cpu;
    assert_eq!(d.label(), "cpu");
    assert!(d.synchronize().is_ok());
    assert_eq!(d, Device::Cpu);
}
