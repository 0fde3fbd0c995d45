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
//!
//! When `cargo xtask kernels` has compiled the built-ins module ahead of time with `nvcc`
//! (cubins for sm_80, sm_86, sm_89 and sm_90, and compute_90 PTX), the build embeds those
//! images ([`prebuilt`]), provided they were built from the current headers (see
//! `build.rs`). Without them, the runtime compiles the built-ins through NVRTC.

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

include!(concat!(env!("OUT_DIR"), "/prebuilt.rs"));

/// The architectures `cargo xtask kernels` builds cubins of the built-ins module for.
pub const PREBUILT_CUBIN_ARCHS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];

/// The virtual architecture of the prebuilt PTX of the built-ins module: the driver
/// compiles it at load time for any device of compute capability 9.0 or newer.
pub const PREBUILT_PTX_ARCH: &str = "compute_90";

/// The built-ins module compiled ahead of time for `arch`: a cubin for `"sm_80"`,
/// `"sm_86"`, `"sm_89"` or `"sm_90"`, PTX text for `"compute_90"`; `None` for any other
/// architecture, or when the build embedded no images (no `nvcc` ran, or the images were
/// stale).
///
/// Either is a valid `cuModuleLoadData` image (PTX once NUL-terminated).
pub fn prebuilt(arch: &str) -> Option<&'static [u8]> {
    PREBUILT
        .iter()
        .find(|&&(name, _)| name == arch)
        .map(|&(_, image)| image)
}

/// The architectures [`prebuilt`] has an image for (empty when none was embedded).
pub fn prebuilt_archs() -> &'static [&'static str] {
    PREBUILT_ARCHS
}

/// The CUDA C the embedded images were compiled from (the runtime's built-ins
/// translation unit when `cargo xtask kernels` ran); `None` when none is embedded. The
/// runtime uses the images only if this equals the source it would compile itself.
pub fn prebuilt_source() -> Option<&'static str> {
    PREBUILT_SOURCE
}
