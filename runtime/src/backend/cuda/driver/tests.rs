//! Unit tests of the driver device that need no GPU.

use super::*;

#[test]
fn opening_a_device_without_a_driver_is_unavailable_not_a_panic() {
    match DriverDevice::new(0) {
        Ok(device) => eprintln!("CUDA device present: {}", device.describe()),
        Err(DeviceError::Unavailable(message)) => {
            assert!(!message.is_empty());
            eprintln!("no CUDA device (as expected without a GPU): {message}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn ranges_are_checked_without_overflow() {
    assert!(DriverDevice::check_range("c", 0, 8, 8).is_ok());
    assert!(DriverDevice::check_range("c", 8, 0, 8).is_ok());
    assert!(DriverDevice::check_range("c", 1, 8, 8).is_err());
    assert!(DriverDevice::check_range("c", usize::MAX, 2, 8).is_err());
}
