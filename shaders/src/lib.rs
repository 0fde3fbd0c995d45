//! WGSL sources of gyre, embedded for the runtime's wgpu backend.
//!
//! For now this crate carries the ABI structs generated from `gyre_runtime::abi` by
//! `cargo xtask abi`. The device-side ring, the tick loop and the built-in kernels
//! arrive with the wgpu backend.

/// `gyre_abi.wgsl`: the ABI as WGSL structs and constants.
pub const GYRE_ABI_WGSL: &str = include_str!("../gyre_abi.wgsl");

/// `builtins.wgsl`: the built-in kernels' WGSL handlers (`gyre_builtin_echo`, ...), with
/// the semantics of `gyre_runtime::builtins`. Concatenated after the tick loop.
pub const BUILTINS_WGSL: &str = include_str!("builtins.wgsl");

/// `src/tick.wgsl`: one tick of a kernel (commands, batch, handler dispatch, emits, drain
/// rule), the device side of the ring protocol in WGSL, and the handler interface.
pub const TICK_WGSL: &str = include_str!("tick.wgsl");
