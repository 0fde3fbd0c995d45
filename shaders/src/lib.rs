//! WGSL sources of gyre, embedded for the runtime's wgpu backend.
//!
//! For now this crate carries the ABI structs generated from `gyre_runtime::abi` by
//! `cargo xtask abi`. The device-side ring, the tick loop and the built-in kernels
//! arrive with the wgpu backend.

/// `gyre_abi.wgsl`: the ABI as WGSL structs and constants.
pub const GYRE_ABI_WGSL: &str = include_str!("../gyre_abi.wgsl");
