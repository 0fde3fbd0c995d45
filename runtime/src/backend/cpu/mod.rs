//! The CPU backend: kernels as actors on a worker pool, or on dedicated threads.
//!
//! It runs the same ring and control-block code the GPU backends use: a kernel's inbox
//! and host-bound output are [`crate::ring`] rings in host memory, its lifecycle goes
//! through a [`crate::control`] block, and the thread running it plays the device.

mod kernel;
mod pool;
mod sched;
mod supervisor;

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

pub use kernel::{
    Emitter, ExclusiveLane, Handler, KeptMessage, KernelConfig, KernelCore, OutputConsumer,
    PortTarget, RecvFailure, SendFailure,
};
use pool::Pool;

use super::{CommandError, Placement};
use crate::abi::State;
use crate::lifecycle;
use crate::routing::DeadLetters;

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
    pool: Arc<Pool<KernelCore>>,
    kernels: Mutex<Vec<Arc<KernelCore>>>,
    dedicated: Arc<Mutex<Vec<JoinHandle<()>>>>,
    next_id: Mutex<u32>,
    dead: Arc<DeadLetters>,
    supervisor: Arc<supervisor::Supervisor>,
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
    #[error(
        "could not start a thread for dedicated kernel `{name}`: {reason}; run it on the worker \
         pool (Placement::Pool) or terminate other dedicated kernels"
    )]
    Thread {
        /// The kernel.
        name: String,
        /// The OS error.
        reason: String,
    },
}

impl CpuBackend {
    /// Starts a backend with `workers` pool threads and the given resource budget.
    pub fn with_budget(workers: usize, budget: Budget) -> Self {
        let dead = Arc::new(DeadLetters::new());
        let dedicated = Arc::new(Mutex::new(Vec::new()));
        let threads = dedicated.clone();
        let respawn: supervisor::Respawn = Box::new(move |kernel: &Arc<KernelCore>| {
            spawn_dedicated(&threads, kernel).map_err(|e| e.to_string())
        });
        Self {
            pool: Pool::start(workers.max(1)),
            kernels: Mutex::new(Vec::new()),
            dedicated,
            next_id: Mutex::new(0),
            budget,
            supervisor: supervisor::Supervisor::new(respawn),
            dead,
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

    /// The kernels the metrics cover: every kernel a handle still holds or that is not
    /// stopped (the ones [`Self::prometheus_text_with`] samples).
    pub fn held_kernels(&self) -> Vec<Arc<KernelCore>> {
        self.held().clone()
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
        let kernel = Arc::new(KernelCore::new(
            id,
            config,
            handler,
            self.pool.clone(),
            self.dead.clone(),
            self.supervisor.clone(),
        ));
        if placement == Placement::Dedicated {
            spawn_dedicated(&self.dedicated, &kernel)?;
        }
        self.supervisor.watch(&kernel);
        tracing::info!(kernel = %name, id, ?placement, "kernel launched");
        kernels.push(kernel.clone());
        Ok(kernel)
    }

    /// Restarts a terminated or faulted kernel with its configuration, handler and
    /// routes, in state `Launched`. A faulted kernel keeps the messages queued in its
    /// inbox (they are processed once it is activated again); the message its handler
    /// panicked on goes to the dead-letter sink with the fault as reason.
    ///
    /// # Errors
    /// [`CommandError`] when the kernel is not stopped, or it was abandoned with its
    /// handler still running.
    pub fn restart(&self, kernel: &Arc<KernelCore>) -> Result<(), CommandError> {
        let needs_thread = kernel.restart_in_place()?;
        if needs_thread {
            spawn_dedicated(&self.dedicated, kernel).map_err(|e| CommandError::Faulted {
                name: kernel.config().name.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// The runtime's dead-letter sink.
    pub fn dead_letters(&self) -> &Arc<DeadLetters> {
        &self.dead
    }

    /// The Prometheus text exposition of the backend and its kernels (see
    /// [`crate::metrics`]) with the samples of kernels of other backends (device groups
    /// of the same runtime) and their dead letters (ever kept) added: one exposition for
    /// the runtime.
    pub fn prometheus_text_with(
        &self,
        others: Vec<crate::metrics::KernelSample>,
        other_dead_letters: u64,
    ) -> String {
        let mut kernels: Vec<_> = self.held().iter().map(|k| k.sample()).collect();
        kernels.extend(others);
        let runtime = crate::metrics::RuntimeSample {
            workers: self.workers(),
            worker_utilisation: self.utilisation(),
            threads: self.threads_in_use(),
            ring_bytes: kernels.iter().map(|k| k.ring_bytes).sum(),
            dead_letters: self.dead.total() + other_dead_letters,
        };
        crate::metrics::prometheus_text(&runtime, &kernels)
    }

    /// Every kernel the backend holds.
    pub fn kernels(&self) -> Vec<Arc<KernelCore>> {
        self.kernels.lock().clone()
    }

    /// Every kernel the backend holds, upstream before downstream along their routes
    /// (kernels in a cycle in launch order): the order to drain them in.
    pub fn kernels_in_drain_order(&self) -> Vec<Arc<KernelCore>> {
        let kernels = self.kernels();
        let index: std::collections::HashMap<u32, usize> = kernels
            .iter()
            .enumerate()
            .map(|(i, k)| (k.id(), i))
            .collect();
        let mut edges = Vec::new();
        for (from, kernel) in kernels.iter().enumerate() {
            for to in kernel.routes().into_iter().flatten() {
                if let Some(&to) = index.get(&to) {
                    edges.push((from, to));
                }
            }
        }
        crate::routing::drain_order(kernels.len(), &edges)
            .into_iter()
            .map(|i| kernels[i].clone())
            .collect()
    }

    /// Stops the supervisor: fault policies and watchdogs no longer act (a runtime that
    /// shuts down stops it first, so no kernel is restarted behind its back).
    pub fn stop_supervision(&self) {
        self.supervisor
            .stop(std::time::Instant::now() + pool::JOIN_PATIENCE);
    }

    /// Stops the supervisor, the pool and the dedicated threads, and unbinds every
    /// route. Threads stuck in a handler are left behind after a short wait shared by
    /// all of them (about half a second), so this returns in bounded time whatever a
    /// handler does.
    ///
    /// From then on nothing runs the kernels: a later terminate or drain of one that is
    /// still live is carried out by the calling host thread (see [`KernelCore::terminate`]).
    pub fn stop_threads(&self) {
        let deadline = std::time::Instant::now() + pool::JOIN_PATIENCE;
        self.supervisor.stop(deadline);
        self.pool.stop(deadline);
        for kernel in self.kernels.lock().iter() {
            kernel.runner_stopped();
        }
        let threads = std::mem::take(&mut *self.dedicated.lock());
        pool::join_or_detach(threads, "dedicated kernel", deadline);
        // Routes between kernels hold them alive; a cycle of routes would leak.
        for kernel in self.kernels.lock().iter() {
            kernel.unbind_all();
        }
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Starts the thread of a dedicated kernel and keeps its handle in `threads`.
fn spawn_dedicated(
    threads: &Mutex<Vec<JoinHandle<()>>>,
    kernel: &Arc<KernelCore>,
) -> Result<(), LaunchError> {
    let runner = kernel.clone();
    let name = kernel.config().name.clone();
    kernel.set_thread_alive(true);
    let handle = std::thread::Builder::new()
        .name(format!("gyre-{name}"))
        .spawn(move || runner.run_dedicated())
        .map_err(|e| {
            kernel.set_thread_alive(false);
            LaunchError::Thread {
                name,
                reason: e.to_string(),
            }
        })?;
    let mut threads = threads.lock();
    threads.retain(|t| !t.is_finished());
    threads.push(handle);
    Ok(())
}
