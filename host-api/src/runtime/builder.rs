//! [`RuntimeBuilder`]: the backend, workers, budget and timeouts of a runtime.

use std::sync::Arc;
use std::time::Duration;

use gyre_runtime::backend::seam::cpu::{Budget, CpuBackend};

use super::Runtime;
use crate::backend::{choose, Backend};
use crate::services::Services;
use crate::Error;

/// Builds a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    pub(super) backend: Backend,
    pub(super) workers: Option<usize>,
    pub(super) command_timeout: Duration,
    pub(super) budget: Budget,
    pub(super) device: u32,
}

impl RuntimeBuilder {
    /// The backend to use (default [`Backend::Auto`]).
    #[must_use]
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The device the runtime's CUDA backend opens for its groups (default 0): its
    /// ordinal as the driver numbers devices under `CUDA_VISIBLE_DEVICES` for
    /// [`Backend::Cuda`], 0 or 1 for [`Backend::CudaEmulated`]. A group may still run on
    /// another device ([`crate::GroupBuilder::device`]). Only CUDA numbers its devices:
    /// any other ordinal than 0 with another backend fails the build.
    ///
    /// ```
    /// use gyre::{Backend, Error, Runtime};
    /// match Runtime::builder().backend(Backend::Cuda).device(1).build() {
    ///     Ok(runtime) => assert_eq!(runtime.backend_name(), "cuda"),
    ///     // No driver, or fewer than two devices: the reason says how many there are.
    ///     Err(Error::BackendUnavailable { reason, .. }) => eprintln!("{reason}"),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok::<(), gyre::Error>(())
    /// ```
    #[must_use]
    pub fn device(mut self, ordinal: u32) -> Self {
        self.device = ordinal;
        self
    }

    /// Worker threads of the CPU pool (default: available cores).
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers.max(1));
        self
    }

    /// How long lifecycle calls (activate, deactivate, terminate) wait for a kernel to
    /// acknowledge before reporting it unresponsive (default 10 s).
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Most bytes of ring memory (every kernel's ring headers and slots) the runtime holds
    /// at once; a launch that would exceed it is refused with [`Error::OverBudget`].
    /// Unlimited by default.
    #[must_use]
    pub fn ring_memory_budget(mut self, bytes: usize) -> Self {
        self.budget.ring_bytes = Some(bytes);
        self
    }

    /// Most threads the runtime runs: pool workers plus one per live dedicated kernel; a
    /// dedicated launch that would exceed it is refused with [`Error::OverBudget`].
    /// Unlimited by default.
    #[must_use]
    pub fn thread_budget(mut self, threads: usize) -> Self {
        self.budget.threads = Some(threads);
        self
    }

    /// Starts the runtime.
    ///
    /// Never panics, whatever the backend: a missing driver or device is an error.
    ///
    /// ```
    /// let runtime = gyre::Runtime::builder().backend(gyre::Backend::Auto).build()?;
    /// // A hardware GPU when one is present (and its feature is built), else the CPU.
    /// assert!(["cpu", "cuda", "wgpu"].contains(&runtime.backend_name()));
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when the backend asked for cannot run here: a CUDA
    /// backend in a gyre built without feature `cuda` (or a wgpu backend without feature
    /// `wgpu`), no usable CUDA driver or device for [`Backend::Cuda`] (the reason says
    /// what is missing), no C++ compiler for [`Backend::CudaEmulated`], no hardware
    /// adapter for [`Backend::Wgpu`] or no adapter at all for [`Backend::WgpuSoftware`]
    /// (the reason is the adapter error); a device ordinal ([`RuntimeBuilder::device`])
    /// the backend does not have (the reason says how many it has).
    pub fn build(self) -> Result<Runtime, Error> {
        let chosen = choose(self.backend, self.device)?;
        let workers = self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let cpu = Arc::new(CpuBackend::with_budget(workers, self.budget));
        let place = chosen.place();
        Ok(Runtime {
            services: Arc::new(Services {
                cpu: cpu.clone(),
                devices: parking_lot::Mutex::new(Vec::new()),
                relays: parking_lot::Mutex::new(Vec::new()),
                cpu_groups: parking_lot::Mutex::new(Vec::new()),
                supervisor: crate::device_supervisor::Supervisor::default(),
            }),
            cpu,
            place,
            other_devices: crate::backend::OtherDevices::default(),
            stopped: false,
            command_timeout: self.command_timeout,
            backend_name: chosen.name,
        })
    }
}
