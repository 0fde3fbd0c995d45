//! The backends a cross-backend test runs on here: the CPU always, the CUDA emulation
//! with feature `cuda`, wgpu (software adapters allowed) with feature `wgpu`. A device
//! backend that does not build here is skipped loudly, and fails under `cargo xtask ci`.
//! Included by path from the test crates that need it.

use gyre::{Backend, Runtime};

#[path = "../../../runtime/tests/support/skip.rs"]
pub mod skip;

/// A runtime for every backend this build and machine have, with its name.
pub fn runtimes() -> Vec<(&'static str, Runtime)> {
    let mut all = vec![(
        "cpu",
        Runtime::builder()
            .backend(Backend::Cpu)
            .workers(2)
            .build()
            .expect("the CPU backend always builds"),
    )];
    let wanted: &[(&str, Backend)] = &[
        #[cfg(feature = "cuda")]
        ("cuda-emulated", Backend::CudaEmulated),
        #[cfg(feature = "wgpu")]
        ("wgpu-software", Backend::WgpuSoftware),
    ];
    for &(name, backend) in wanted {
        match Runtime::builder().backend(backend).workers(1).build() {
            Ok(runtime) => all.push((name, runtime)),
            Err(e) => skip::skip(&format!("the {name} backend"), &e),
        }
    }
    all
}
