//! gyre-runtime: the engine behind `gyre`.
//!
//! - [`abi`]: the memory contract shared with device code;
//! - [`ring`]: the lock-free ring over any memory;
//! - [`control`] and [`lifecycle`]: a kernel's control block and state machine;
//! - [`routing`]: ports, routes, topology checks and the dead-letter sink;
//! - [`backend`]: the backends (the CPU backend is always built) and the seam the
//!   public crate reaches them through;
//! - [`handler`]: what a CPU handler is written against (message, emitter, errors);
//! - [`builtins`]: the built-in kernels' descriptions and their CPU reference.
//!
//! Most users want the `gyre` crate, which wraps this one in a typed API.

pub mod abi;
#[cfg(not(loom))]
pub mod backend;
pub mod builtins;
pub mod control;
#[cfg(not(loom))]
pub mod handler;
#[cfg(not(loom))]
pub mod health;
pub mod lifecycle;
#[cfg(not(loom))]
pub mod metrics;
pub mod ring;
#[cfg(not(loom))]
pub mod routing;
mod sync;
#[cfg(not(loom))]
pub mod wait;
