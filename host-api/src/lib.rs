//! # gyre
//!
//! Persistent "ring kernels": long-lived kernels that stay resident and loop over
//! lock-free rings of fixed-size messages, while the host launches them, feeds them,
//! receives from them, and drains or terminates them without losing a message.
//!
//! ```
//! use gyre::{KernelSpec, Runtime};
//! use std::time::Duration;
//!
//! let runtime = Runtime::builder().build()?;
//! let square = runtime.launch(KernelSpec::<f32, f32>::new("square").cpu(|x, out| Ok(out.emit(x * x)?)))?;
//! square.activate()?;
//! for i in 0..4 {
//!     square.send(i as f32)?;
//! }
//! let got: Vec<f32> = (0..4).map(|_| square.recv()).collect::<Result<_, _>>()?;
//! assert_eq!(got, [0.0, 1.0, 4.0, 9.0]);
//! let report = square.drain(Duration::from_secs(5))?;
//! assert!(report.undelivered.is_empty());
//! # Ok::<(), gyre::Error>(())
//! ```
//!
//! Semantics in one place:
//! - **Zero allocation per message**: `send` copies the message into its ring slot in
//!   place; the handler reads it from the slot; `emit` writes into the output slot.
//! - **Backpressure**: a full inbox blocks, fails or times out per [`Sender`] policy,
//!   always handing the message back; a full output ring (host output or a downstream
//!   kernel's inbox) makes the kernel stop taking input until it has room (counted as
//!   a stall), without blocking a worker thread.
//! - **Routing**: handlers emit to ports bound to the host, another kernel's inbox or the
//!   dead letters; [`Runtime::group`] and [`Runtime::pipeline`] launch routed kernels as
//!   one unit and drain them upstream first.
//! - **Lifecycle**: `Launched → Active ⇄ Paused → Draining → Terminated`, any live
//!   state `→ Faulted`. Commands are acknowledged by the kernel through its control block.
//! - **Nothing lost**: every message sent is processed or handed back in a report; a
//!   panicking handler faults only its kernel.
//!
//! ### Semantics
//!
//! **Draining with a faulted member.** A faulted kernel processes nothing more, so a drain
//! terminates it instead of failing: [`Group::drain`], [`Pipeline::drain`],
//! [`Runtime::shutdown`] and [`Kernel::drain`] drain every other kernel as usual and hand
//! back the faulted kernel's undelivered messages in its report entry (the message its
//! handler panicked on first), with its `fault` saying why ([`ShutdownReport::faulted`]
//! lists the faulted members); its entry has no `error`. That holds whenever it faults:
//! before the drain, while the drain runs, or in between. What it emitted to the host before
//! the fault stays receivable.
//!
//! **Stopping never hangs on a handler.** `terminate` returns within the command timeout,
//! `drain(t)`, a group drain and `Runtime::shutdown(t)` within `t` plus about a second and a
//! half, and dropping a runtime within its command timeout plus that, whatever a handler
//! does: a handler that does not return in time is abandoned (the report says so and hands
//! back the message in hand) and its thread is left behind.
//!
//! **Dropping a [`Runtime`]** stops it as [`Runtime::shutdown`] does, with the command
//! timeout: every kernel drains, upstream first; one that does not finish in time is
//! terminated. Nothing accepted is lost silently. Handles that outlive the runtime keep
//! what their kernel emitted receivable; `drain` or `terminate` on such a handle returns a
//! report with what the kernel did not deliver (once; not an error); a send fails with
//! [`Error::RuntimeGone`] and hands the message back. A kernel no handle holds is still
//! drained; what it could not deliver cannot reach anyone and is logged as a warning with
//! its count; call [`Runtime::shutdown`] to get it in a report instead. While a runtime
//! lives, a kernel whose handles were all dropped keeps running and is covered by
//! `shutdown`'s report (what it emitted to the host included).
//!
//! ## One API, every backend
//!
//! A [`KernelSpec`] carries an implementation per backend: [`KernelSpec::cpu`] (or
//! [`KernelSpec::cpu_factory`]), [`KernelSpec::cuda`], [`KernelSpec::wgsl`], and
//! [`KernelSpec::builtin`], which runs on every backend ([`builtins`]). A group runs on
//! one backend: the runtime's ([`RuntimeBuilder::backend`]) or the one
//! [`GroupBuilder::backend`] names; it uses each kernel's implementation for that backend,
//! and a kernel without one fails the launch with [`Error::NoImplementation`]. The
//! handles, reports and runtime-wide services are the same on every backend.
//!
//! ```
//! use gyre::builtins::{Builtin, Record};
//! use gyre::{Backend, KernelSpec, Runtime};
//!
//! fn clamp() -> KernelSpec<Record, Record> {
//!     KernelSpec::<Record, Record>::new("clamp")
//!         .cpu(|r, out| Ok(out.emit(Record { value: r.value.min(10.0), ..*r })?))
//!         .cuda("clamp", r"__device__ int clamp(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
//!             gyre_rec r = *(const gyre_rec *)msg; r.value = fminf(r.value, 10.0f);
//!             return gyre_emit(ctx, 0u, &r, sizeof r); }")
//!         .wgsl("clamp", r"fn clamp(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
//!             (*msg).w[2] = bitcast<u32>(min(bitcast<f32>((*msg).w[2]), 10.0));
//!             return gyre_emit(ctx, 0u, msg, 16u); }")
//! }
//!
//! // Backend::CudaEmulated, Backend::WgpuSoftware, Backend::Cuda, Backend::Wgpu: same code.
//! let runtime = Runtime::builder().backend(Backend::Cpu).build()?;
//! let pipeline = runtime
//!     .pipeline::<Record>("p")
//!     .stage(KernelSpec::new("scale").builtin(Builtin::Affine { a: 2.0, b: 1.0 }))
//!     .stage(clamp())
//!     .launch()?;
//! pipeline.activate()?;
//! pipeline.send(Record { key: 1, seq: 0, value: 3.0, aux: 0 })?;
//! assert_eq!(pipeline.recv()?.value, 7.0);
//! # Ok::<(), gyre::Error>(())
//! ```
//!
//! **CUDA** (feature `cuda`; [`Backend::Cuda`] for a GPU, [`Backend::CudaEmulated`] for the
//! host emulation, which develops and tests CUDA handlers without a GPU): the kernels of a
//! group are resident together in one cooperative grid, which keeps routes between them on
//! the device and guarantees every kernel makes progress. A resident grid raises no
//! interrupt, so while someone waits on a CUDA group one host thread watches its rings and
//! wakes the waiters; with nobody waiting it parks.
//!
//! **wgpu** (feature `wgpu`; [`Backend::Wgpu`] for a hardware adapter,
//! [`Backend::WgpuSoftware`] to allow software ones such as Mesa's lavapipe): WebGPU cannot
//! run a resident spin loop (no forward-progress guarantee between workgroups, no host
//! access to a buffer in use), so a wgpu group keeps its rings, control blocks and handler
//! state resident in device memory and runs in ticks: one submission uploads what the host
//! sent, dispatches every kernel of the group in topological order and copies the outputs
//! back; ticks run back to back while work is pending and stop when the group is idle.
//!
//! A device group runs as one unit: it drains and terminates as a whole, upstream first,
//! and its routes form no cycle. What a device backend cannot do (stop one kernel of a
//! larger group, restart, cycles, [`Runtime::connect`] after launch) answers
//! [`Error::Unsupported`], saying what to do instead. Pause and resume work per kernel
//! everywhere. The CPU worker pool is there whatever the backend: a runtime built for a
//! device still runs groups that ask for [`Backend::Cpu`].
//!
//! ## Seeing it run
//!
//! [`Runtime::prometheus_text`] renders every kernel of every backend as Prometheus text;
//! with feature `http`, [`Runtime::serve_metrics`] serves it at `/metrics`. With feature
//! `dashboard`, [`Runtime::serve_dashboard`] serves the same server plus a live dashboard
//! (`/`: every group as its DAG with live rates, kernel states and faults, time series
//! per kernel) and its JSON: `/api/snapshot` (the runtime now) and `/api/history` (a
//! sample a second, the last 300), described with an example on
//! [`Runtime::serve_dashboard`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod backing;
mod batch;
mod batch_emit;
pub mod builtins;
#[cfg(feature = "dashboard")]
mod dashboard;
mod device;
mod device_supervisor;
mod error;
mod gpu_common;
mod group;
#[cfg(feature = "http")]
mod http;
mod kernel;
mod pipeline;
mod receiver;
mod relay;
mod report;
mod request;
mod runtime;
mod sender;
mod services;
mod spec;
mod stop;
pub mod testing;

pub use batch::SendBatchError;
pub use batch_emit::BatchEmit;
pub use error::{Error, SendError};
pub use group::{Group, GroupBuilder, Stage};
pub use gyre_runtime::abi::State;
pub use gyre_runtime::backend::Placement;
pub use gyre_runtime::handler::{EmitError, HandlerError};
pub use gyre_runtime::health::{FaultPolicy, Health, HealthPolicy, HealthStatus, RestartPolicy};
pub use gyre_runtime::metrics::LatencySummary;
pub use gyre_runtime::routing::{DeadLetter, RouteError};
#[cfg(feature = "http")]
pub use http::MetricsServer;
pub use kernel::{Kernel, KernelMetrics};
pub use pipeline::{Pipeline, PipelineBuilder};
pub use receiver::Receiver;
pub use report::{
    DrainReport, GroupReport, KernelShutdown, RawMessage, Report, ShutdownReport, TerminateReport,
};
pub use request::Requester;
pub use runtime::{Backend, Runtime, RuntimeBuilder};
pub use sender::{Backpressure, ExclusiveSender, Sender};
pub use spec::{Emit, KernelSpec, Message};
