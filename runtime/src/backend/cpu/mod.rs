//! The CPU backend: kernels as actors on a worker pool, or on dedicated threads.
//!
//! It runs the same ring and control-block code the GPU backends use: a kernel's inbox
//! and host-bound output are [`crate::ring`] rings in host memory, its lifecycle goes
//! through a [`crate::control`] block, and the thread running it plays the device.

mod kernel;
mod pool;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use kernel::{
    EmitError, Emitter, ExclusiveLane, Handler, HandlerError, KernelConfig, KernelCore, Message,
    OutputConsumer, RecvFailure, SendFailure,
};
use pool::Pool;

use super::{CommandError, DrainSummary, Placement};
use crate::abi::State;
use crate::lifecycle;
use crate::ring::SlotRef;

/// Kernel ids fit the 16-bit sender field of a slot tag, below the host's id.
const MAX_KERNEL_ID: u32 = crate::abi::HOST_SENDER_ID - 1;

/// Resource limits of a runtime (seed 001's resource governance). `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Most bytes of ring memory (headers and slots of every kernel's rings) held at once.
    pub ring_bytes: Option<usize>,
    /// Most threads: pool workers plus one per live dedicated kernel.
    pub threads: Option<usize>,
}

/// The CPU backend: a worker pool and the kernels launched on it.
#[derive(Debug)]
pub struct CpuBackend {
    budget: Budget,
    pool: Arc<Pool>,
    kernels: Mutex<Vec<Arc<KernelCore>>>,
    dedicated: Mutex<Vec<JoinHandle<()>>>,
    next_id: Mutex<u32>,
}

/// Why a launch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// Too many kernels are alive at once.
    #[error(
        "{0} kernels are alive, the most one runtime holds: terminate some before launching more"
    )]
    TooManyKernels(usize),
    /// The launch would exceed the runtime's ring memory budget.
    #[error(
        "launching kernel `{name}` needs {needed} bytes of ring memory but {in_use} of the \
         {limit}-byte budget are in use: terminate kernels, shrink its capacity or slot size, \
         or raise RuntimeBuilder::ring_memory_budget"
    )]
    RingMemoryBudget {
        /// The kernel.
        name: String,
        /// Bytes its rings need.
        needed: usize,
        /// Bytes held by other kernels.
        in_use: usize,
        /// The budget.
        limit: usize,
    },
    /// A dedicated kernel would exceed the runtime's thread budget.
    #[error(
        "launching dedicated kernel `{name}` needs a thread but {in_use} of the {limit}-thread \
         budget are in use: use Placement::Pool, terminate a dedicated kernel, or raise \
         RuntimeBuilder::thread_budget"
    )]
    ThreadBudget {
        /// The kernel.
        name: String,
        /// Threads in use (workers and dedicated kernels).
        in_use: usize,
        /// The budget.
        limit: usize,
    },
    /// The operating system refused a thread for a dedicated kernel.
    #[error("could not start a thread for dedicated kernel `{name}`: {reason}")]
    Thread {
        /// The kernel.
        name: String,
        /// The OS error.
        reason: String,
    },
}

impl CpuBackend {
    /// Starts a backend with `workers` pool threads (at least one).
    pub fn new(workers: usize) -> Self {
        Self::with_budget(workers, Budget::default())
    }

    /// Starts a backend with `workers` pool threads and the given resource budget.
    pub fn with_budget(workers: usize, budget: Budget) -> Self {
        Self {
            pool: Pool::start(workers.max(1)),
            kernels: Mutex::new(Vec::new()),
            dedicated: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
            budget,
        }
    }

    /// Bytes of ring memory held by the kernels the backend holds (running, or stopped
    /// and still referenced).
    pub fn ring_bytes_in_use(&self) -> usize {
        self.held().iter().map(|k| k.ring_bytes()).sum()
    }

    /// The kernel registry, after forgetting kernels that are stopped and that nobody
    /// else holds (their rings are freed with them).
    fn held(&self) -> parking_lot::MutexGuard<'_, Vec<Arc<KernelCore>>> {
        let mut kernels = self.kernels.lock();
        kernels.retain(|k| Arc::strong_count(k) > 1 || !lifecycle::is_stopped(k.state()));
        kernels
    }

    /// Threads the backend runs: pool workers and the threads of live dedicated kernels.
    pub fn threads_in_use(&self) -> usize {
        self.pool.workers() + Self::dedicated_live(&self.held())
    }

    fn dedicated_live(kernels: &[Arc<KernelCore>]) -> usize {
        kernels
            .iter()
            .filter(|k| {
                k.config().placement == Placement::Dedicated && k.state() != State::Terminated
            })
            .count()
    }

    /// Number of pool threads.
    pub fn workers(&self) -> usize {
        self.pool.workers()
    }

    /// Share of pool time spent running kernels since start, in `0..=1`.
    pub fn utilisation(&self) -> f64 {
        self.pool.utilisation()
    }

    /// Launches a kernel in state `Launched` (resident, not yet processing).
    ///
    /// # Errors
    /// [`LaunchError`] when 65,534 kernels are alive or a dedicated thread cannot start.
    pub fn launch(
        &self,
        config: KernelConfig,
        handler: Box<dyn Handler>,
    ) -> Result<Arc<KernelCore>, LaunchError> {
        let mut kernels = self.held();
        if kernels.len() >= MAX_KERNEL_ID as usize {
            return Err(LaunchError::TooManyKernels(kernels.len()));
        }
        if let Some(limit) = self.budget.ring_bytes {
            let in_use: usize = kernels.iter().map(|k| k.ring_bytes()).sum();
            let needed = KernelCore::ring_bytes_for(&config);
            if in_use.saturating_add(needed) > limit {
                return Err(LaunchError::RingMemoryBudget {
                    name: config.name.clone(),
                    needed,
                    in_use,
                    limit,
                });
            }
        }
        if let (Some(limit), Placement::Dedicated) = (self.budget.threads, config.placement) {
            let in_use = self.pool.workers() + Self::dedicated_live(&kernels);
            if in_use >= limit {
                return Err(LaunchError::ThreadBudget {
                    name: config.name.clone(),
                    in_use,
                    limit,
                });
            }
        }
        let id = {
            let mut next = self.next_id.lock();
            loop {
                let id = *next;
                *next = (*next + 1) % MAX_KERNEL_ID;
                if !kernels.iter().any(|k| k.id() == id) {
                    break id;
                }
            }
        };
        let placement = config.placement;
        let name = config.name.clone();
        let kernel = Arc::new(KernelCore::new(id, config, handler, self.pool.clone()));
        if placement == Placement::Dedicated {
            let runner = kernel.clone();
            let handle = std::thread::Builder::new()
                .name(format!("gyre-{name}"))
                .spawn(move || runner.run_dedicated())
                .map_err(|e| LaunchError::Thread {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            let mut threads = self.dedicated.lock();
            threads.retain(|t| !t.is_finished());
            threads.push(handle);
        }
        tracing::info!(kernel = %name, id, ?placement, "kernel launched");
        kernels.push(kernel.clone());
        Ok(kernel)
    }

    /// The Prometheus text exposition of the backend and its kernels (see
    /// [`crate::metrics`]).
    pub fn prometheus_text(&self) -> String {
        let kernels: Vec<_> = self.held().iter().map(|k| k.sample()).collect();
        let runtime = crate::metrics::RuntimeSample {
            workers: self.workers(),
            worker_utilisation: self.utilisation(),
            threads: self.threads_in_use(),
            ring_bytes: kernels.iter().map(|k| k.ring_bytes).sum(),
        };
        crate::metrics::prometheus_text(&runtime, &kernels)
    }

    /// Every kernel the backend holds.
    pub fn kernels(&self) -> Vec<Arc<KernelCore>> {
        self.kernels.lock().clone()
    }

    /// Drains every kernel that is still running, sharing `timeout` (faulted ones are
    /// terminated), then stops the threads. `on_undelivered(kernel, is_input, message)`
    /// gets every message handed back. Returns each kernel with its outcome.
    pub fn shutdown(
        &self,
        timeout: Duration,
        on_undelivered: &mut dyn FnMut(&KernelCore, bool, SlotRef<'_>),
    ) -> Vec<(Arc<KernelCore>, Result<DrainSummary, CommandError>)> {
        let deadline = Instant::now() + timeout;
        let sink = std::cell::RefCell::new(on_undelivered);
        let mut results = Vec::new();
        for kernel in self.kernels() {
            let mut inputs = |s: SlotRef<'_>| (sink.borrow_mut())(&kernel, true, s);
            let mut outputs = |s: SlotRef<'_>| (sink.borrow_mut())(&kernel, false, s);
            let result = match kernel.state() {
                State::Terminated => continue,
                State::Faulted => kernel.terminate(&mut inputs, &mut outputs),
                _ => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    kernel.drain(left, &mut inputs, &mut outputs)
                }
            };
            results.push((kernel, result));
        }
        self.stop_threads();
        results
    }

    fn stop_threads(&self) {
        self.pool.stop();
        for kernel in self.kernels.lock().iter() {
            kernel.wake_thread();
        }
        let threads = std::mem::take(&mut *self.dedicated.lock());
        for handle in threads {
            let _ = handle.join();
        }
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
