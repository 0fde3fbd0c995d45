//! gyre's built-in kernels, which run on every backend: give one to
//! [`crate::KernelSpec::builtin`]. Their device functions run on CUDA and wgpu, their
//! Rust reference on the CPU, with the same float operations.
//!
//! ```
//! use gyre::builtins::{Builtin, Record};
//! use gyre::{KernelSpec, Runtime};
//!
//! let runtime = Runtime::builder().build()?;
//! let scale = runtime.launch(
//!     KernelSpec::<Record, Record>::new("scale").builtin(Builtin::Affine { a: 2.0, b: 1.0 }),
//! )?;
//! scale.activate()?;
//! scale.send(Record { key: 7, seq: 0, value: 3.0, aux: 0 })?;
//! assert_eq!(scale.recv()?.value, 7.0);
//! # Ok::<(), gyre::Error>(())
//! ```

pub use gyre_runtime::builtins::{Aggregate, Builtin, Histogram, Record, PARAM_WORDS};
