//! The CUDA backend: groups of kernels resident on an NVIDIA GPU as one cooperative grid,
//! talking to the host through rings in mapped pinned memory (feature `cuda`).
//!
//! Layers, bottom up:
//! - [`probe`]: finds libcuda and libnvrtc without letting cudarc panic;
//! - [`nvrtc`]: compiles CUDA C to PTX (and runs ptxas for checks);
//! - [`device`]: the [`device::Device`] trait the host side needs, with two
//!   implementations: [`driver::DriverDevice`] (a GPU, through cudarc) and
//!   [`emulated::EmulatedDevice`] (the same CUDA C compiled for the host with g++ and run
//!   in threads: an emulation, used by the conformance tests and for developing handlers
//!   without a GPU);
//! - [`plan`] and [`codegen`]: the launch descriptor and the generated group source;
//! - [`group`]: the host side of a launched group: send, receive, lifecycle commands,
//!   drain, terminate and the report.
//!
//! The design, the memory-ordering and forward-progress arguments, and the expected
//! numbers are in `runtime/docs/CUDA.md`.

pub mod codegen;
pub mod device;
pub mod driver;
pub mod emulated;
pub mod group;
pub mod nvrtc;
pub mod plan;
pub mod probe;
pub mod seam;

use std::sync::Arc;

pub use device::{Device, DeviceError};
pub use group::{
    CudaGroup, CudaKnobs, GroupError, GroupPlan, GroupReport, KernelPlan, Route, Target,
};

/// The first CUDA device, if this machine has a usable driver and device.
///
/// Never panics: a missing libcuda, a driver without devices, or a device that cannot
/// run gyre's persistent kernels (compute capability below 7.0, no cooperative launch,
/// no mapped host memory) comes back as [`DeviceError::Unavailable`] saying what is
/// missing.
///
/// # Errors
/// [`DeviceError::Unavailable`].
pub fn default_device() -> Result<Arc<dyn Device>, DeviceError> {
    device_at(0)
}

/// CUDA device `ordinal` (as the driver numbers them under `CUDA_VISIBLE_DEVICES`), if
/// this machine has a usable driver and that device. Never panics, as
/// [`default_device`]; an ordinal beyond the device count is
/// [`DeviceError::Unavailable`] naming it and how many devices the driver sees.
///
/// # Errors
/// [`DeviceError::Unavailable`].
pub fn device_at(ordinal: u32) -> Result<Arc<dyn Device>, DeviceError> {
    probe::load_driver()?;
    let ordinal = usize::try_from(ordinal)
        .map_err(|_| DeviceError::Unavailable(format!("CUDA device {ordinal} does not exist")))?;
    Ok(Arc::new(driver::DriverDevice::new(ordinal)?))
}

/// Emulated device 0 (g++ on the host: not a GPU).
///
/// # Errors
/// [`DeviceError::Unavailable`] when no C++20 compiler runs.
pub fn emulated_device() -> Result<Arc<dyn Device>, DeviceError> {
    emulated_device_at(0)
}

/// Emulated device `ordinal`, below [`emulated::EMULATED_DEVICES`] (g++ on the host: not
/// a GPU). Each call makes a separate device.
///
/// # Errors
/// [`DeviceError::Unavailable`] when the ordinal is out of range (the message says how
/// many the emulation has) or no C++20 compiler runs.
pub fn emulated_device_at(ordinal: u32) -> Result<Arc<dyn Device>, DeviceError> {
    Ok(Arc::new(emulated::EmulatedDevice::with_ordinal(ordinal)?))
}
