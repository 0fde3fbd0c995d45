//! CUDA C sources of gyre, embedded for the runtime's compile path.
//!
//! - `gyre_abi.h`: the ABI, generated from `gyre_runtime::abi` by `cargo xtask abi`;
//! - `ring.cuh`: the device side of the ring protocol;
//! - `persistent.cuh`: the resident loop of a group and the handler interface;
//! - `builtins.cuh`: the built-in kernels;
//! - `gyre_emu.h`, `gyre_emu_launch.h`: the shim that compiles all of it for the host
//!   (the emulated device: threads, not a GPU).
//!
//! The runtime hands these to NVRTC by name, so device code needs no files on disk.

/// `include/gyre_abi.h`: the ABI as C, with `static_assert`s on every offset and size.
pub const GYRE_ABI_H: &str = include_str!("../include/gyre_abi.h");

/// `include/ring.cuh`: acquire/release primitives per scope, consumer and producer side.
pub const RING_CUH: &str = include_str!("../include/ring.cuh");

/// `include/persistent.cuh`: the resident loop, the launch descriptor, `gyre_emit`.
pub const PERSISTENT_CUH: &str = include_str!("../include/persistent.cuh");

/// `include/builtins.cuh`: echo, affine map, filter, windowed aggregate, histogram,
/// scatter and gather.
pub const BUILTINS_CUH: &str = include_str!("../include/builtins.cuh");

/// `include/gyre_emu.h`: the host shim for the CUDA builtins (emulation only).
pub const GYRE_EMU_H: &str = include_str!("../include/gyre_emu.h");

/// `include/gyre_emu_launch.h`: the emulated cooperative launch (emulation only).
pub const GYRE_EMU_LAUNCH_H: &str = include_str!("../include/gyre_emu_launch.h");

/// Every header by the name sources include it with.
pub const HEADERS: [(&str, &str); 6] = [
    ("gyre_abi.h", GYRE_ABI_H),
    ("ring.cuh", RING_CUH),
    ("persistent.cuh", PERSISTENT_CUH),
    ("builtins.cuh", BUILTINS_CUH),
    ("gyre_emu.h", GYRE_EMU_H),
    ("gyre_emu_launch.h", GYRE_EMU_LAUNCH_H),
];

/// `examples/moving_average.cu`: an example user handler (a moving average per key),
/// compiled in CI through the runtime's NVRTC path.
pub const EXAMPLE_MOVING_AVERAGE_CU: &str = include_str!("../examples/moving_average.cu");
