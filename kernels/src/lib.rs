//! CUDA C sources of gyre, embedded for the runtime's compile path.
//!
//! For now this crate carries the ABI header generated from `gyre_runtime::abi` by
//! `cargo xtask abi`. The device-side ring, the persistent loop and the built-in kernels
//! arrive with the CUDA backend.

/// `include/gyre_abi.h`: the ABI as C, with `static_assert`s on every offset and size.
pub const GYRE_ABI_H: &str = include_str!("../include/gyre_abi.h");
