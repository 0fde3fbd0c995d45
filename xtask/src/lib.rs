//! `cargo xtask`: the project chores cargo cannot do by itself.
//!
//! The binary (`src/main.rs`) dispatches subcommands; this library holds their logic
//! so that tests in `tests/` can call it.
//!
//! - [`abigen`]: generates `kernels/include/gyre_abi.h` and `shaders/gyre_abi.wgsl`
//!   from `gyre_runtime::abi`.
//! - [`ci`]: `setup` (installs what the tests need) and `ci` (runs every check).
//! - [`cuda`]: the CUDA compilers from PyPI (`ptxas`, `nvcc`, NVRTC, headers) that
//!   `setup` installs outside the repository, and the environment that exposes them.
//! - [`kernels`]: `kernels`, the built-ins module compiled ahead of time with `nvcc`
//!   for the `gyre-kernels` crate to embed.
//! - [`gpu`]: `gpu-validate`, the GPU-only tests and CUDA benchmarks on a machine with
//!   an NVIDIA GPU, with a report.

use std::path::{Path, PathBuf};

pub mod abigen;
pub mod ci;
pub mod cuda;
pub mod gpu;
pub mod kernels;

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a folder of the workspace root")
        .to_path_buf()
}
