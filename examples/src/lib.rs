//! Sample gyre programs, as library modules so that tests can run them with small sizes
//! and check their results; the binaries in `examples/` run them with default sizes.
//!
//! The pattern examples each expose `run(...) -> Result<Outcome, gyre::Error>`, whose
//! `Outcome` holds what happened and prints a summary:
//! - [`fan_out`]: a router with one port per worker, round-robin or by key;
//! - [`scatter_gather`]: split jobs over workers, combine partials by job id (fan-in);
//! - [`request_reply`]: a two-stage pipeline answering async and blocking requests;
//! - [`coordinator_worker`]: a coordinator handing tasks to workers with bounded
//!   capacity, results coming back around a cycle;
//! - [`bsp`]: bulk-synchronous supersteps (connected components) with a barrier kernel.
//! - [`distributed`]: a pipeline split over two OS processes joined by the Zenoh bridge
//!   (`gyre-zenoh`), checking every record arrives once; on every backend.
//!
//! [`fan_out`], [`scatter_gather`], [`request_reply`] and the `pipeline` binary's
//! [`sensors`] run on every backend ([`backend`]: `--backend cpu|cuda-emulated|
//! wgpu-software|cuda|wgpu`); [`device`] holds the CUDA C and WGSL handlers that run their
//! stages on the GPU backends with the CPU closures' semantics, bit for bit.
//! `coordinator_worker` and `bsp` route in cycles, which device groups cannot run: they
//! stay on the CPU.
//!
//! [`progress`] draws a progress bar on stderr for the long ones (`idle_kernels`,
//! `distributed_pipeline`) when stderr is a terminal, and nothing otherwise.

pub mod backend;
pub mod bsp;
pub mod coordinator_worker;
pub mod device;
pub mod distributed;
pub mod fan_out;
pub mod idle;
pub mod progress;
pub mod request_reply;
pub mod rng;
pub mod scatter_gather;
pub mod sensors;
