//! The worker pool that runs pooled kernels.
//!
//! A kernel with work is pushed once onto a FIFO run queue (its `scheduled` flag
//! guards against duplicates); a worker pops it, runs one turn (at most a quantum of
//! messages, for fairness) and requeues it at the back if it still has work. Idle workers
//! spin, yield, then park on a [`Signal`], so an idle runtime uses no CPU.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;

use super::sched::{Runnable, Turn};
use crate::sync::asym;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::wait::Signal;

/// Most kernels that go idle before the worker pays one heavy fence for all of them.
const IDLE_BATCH: usize = 256;

/// Spins on an empty run queue before a worker re-checks the kernels that went idle.
const RECHECK_SPINS: u32 = 2048;

/// The shared worker pool.
#[derive(Debug)]
pub(crate) struct Pool<K> {
    /// The run queue: lock-free, so a host thread waking thousands of kernels does not
    /// contend with the workers on a lock.
    queue: crossbeam_deque::Injector<Arc<K>>,
    signal: Signal,
    shutdown: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    workers: usize,
    /// Workers started to replace workers stuck in abandoned kernels, not yet retired:
    /// a stuck worker that comes back retires itself while this is positive.
    surplus: AtomicUsize,
    /// Nanoseconds workers spent running kernels, summed over workers.
    busy_ns: AtomicU64,
    started: Instant,
}

impl<K: Runnable> Pool<K> {
    pub(crate) fn start(workers: usize) -> Arc<Self> {
        let pool = Arc::new(Self {
            queue: crossbeam_deque::Injector::new(),
            signal: Signal::new(),
            shutdown: AtomicBool::new(false),
            threads: Mutex::new(Vec::with_capacity(workers)),
            workers,
            surplus: AtomicUsize::new(0),
            busy_ns: AtomicU64::new(0),
            started: Instant::now(),
        });
        for index in 0..workers {
            pool.spawn_worker(index)
                .expect("spawning a gyre worker thread failed");
        }
        pool
    }

    fn spawn_worker(self: &Arc<Self>, index: usize) -> std::io::Result<()> {
        let worker = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("gyre-worker-{index}"))
            .spawn(move || worker.work())?;
        self.threads.lock().push(handle);
        Ok(())
    }

    /// Starts a worker in place of one stuck in a handler that a terminate abandoned, so
    /// the other kernels keep their share of the pool. The stuck worker retires when
    /// its handler returns. Dedicated kernels need nothing: their thread is their own.
    pub(crate) fn replace_stuck_worker(self: &Arc<Self>, placement: crate::backend::Placement) {
        if placement != crate::backend::Placement::Pool || self.is_shut_down() {
            return;
        }
        self.surplus.fetch_add(1, Ordering::Relaxed);
        let index = self.threads.lock().len();
        if let Err(e) = self.spawn_worker(index) {
            self.surplus.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(error = %e, "could not start a worker to replace a stuck one");
        }
    }

    pub(crate) fn push(&self, kernel: Arc<K>) {
        if self.is_shut_down() {
            // No worker will run it; the runtime is being dropped.
            return;
        }
        self.queue.push(kernel);
        self.signal.notify();
    }

    fn pop(&self) -> Option<Arc<K>> {
        loop {
            match self.queue.steal() {
                crossbeam_deque::Steal::Success(kernel) => return Some(kernel),
                crossbeam_deque::Steal::Empty => return None,
                crossbeam_deque::Steal::Retry => std::hint::spin_loop(),
            }
        }
    }

    fn work(&self) {
        // Kernels that went idle and still need the re-check after a heavy fence: one
        // fence (a `membarrier` system call, a few microseconds) serves a batch of them,
        // so a runtime whose kernels each get one message at a time (round-robin over
        // thousands) does not pay a system call per message. The batch is checked when it
        // is full, and when the queue stayed empty for a moment (before the worker starts
        // to back off), so a message that raced a kernel going idle waits at most that
        // long.
        let mut went_idle: Vec<Arc<K>> = Vec::with_capacity(IDLE_BATCH);
        // Time spent running kernels is read at the edges of busy periods, not per turn.
        let mut busy_since: Option<Instant> = None;
        loop {
            if let Some(kernel) = self.pop() {
                busy_since.get_or_insert_with(Instant::now);
                let turn = kernel.run_scheduled();
                if kernel.is_abandoned() && self.retire_one() {
                    // This worker was stuck in the abandoned kernel and was replaced.
                    Self::recheck(&mut went_idle);
                    self.add_busy(busy_since.take());
                    return;
                }
                if turn == Turn::WentIdle {
                    went_idle.push(kernel);
                    if went_idle.len() == IDLE_BATCH {
                        Self::recheck(&mut went_idle);
                    }
                }
                continue;
            }
            if !went_idle.is_empty() {
                // More work usually comes within a few hundred nanoseconds; wait that long
                // before paying for the fence.
                for _ in 0..RECHECK_SPINS {
                    if self.has_queued() {
                        break;
                    }
                    std::hint::spin_loop();
                }
                if !self.has_queued() {
                    Self::recheck(&mut went_idle);
                }
                continue;
            }
            self.add_busy(busy_since.take());
            if self.is_shut_down() {
                return;
            }
            self.signal.wait_until(None, || {
                (self.has_queued() || self.is_shut_down()).then_some(())
            });
        }
    }

    fn add_busy(&self, since: Option<Instant>) {
        if let Some(since) = since {
            self.busy_ns
                .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    fn recheck(went_idle: &mut Vec<Arc<K>>) {
        if went_idle.is_empty() {
            return;
        }
        // ORDERING: heavy fence between each kernel's `scheduled = false` store (in
        // `run_scheduled`) and the loads in its `has_work`; pairs with the light fence in
        // `KernelCore::wake` (Dekker).
        asym::heavy();
        for kernel in went_idle.drain(..) {
            kernel.recheck_idle();
        }
    }

    /// Takes one retirement, if a replacement worker was started.
    fn retire_one(&self) -> bool {
        self.surplus
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Whether some kernel waits in the run queue (racy).
    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Number of worker threads.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// Share of worker time spent running kernels since the pool started, in `0..=1`.
    pub(crate) fn utilisation(&self) -> f64 {
        let wall = self.started.elapsed().as_nanos() as f64 * self.workers.max(1) as f64;
        if wall == 0.0 {
            return 0.0;
        }
        (self.busy_ns.load(Ordering::Relaxed) as f64 / wall).min(1.0)
    }

    /// Stops the workers and joins them, waiting for them until `deadline` (see
    /// [`join_or_detach`]). Kernels still queued are not run.
    pub(crate) fn stop(&self, deadline: Instant) {
        // ORDERING: Release pairs with the Acquire load in `is_shut_down`.
        self.shutdown.store(true, Ordering::Release);
        self.signal.notify();
        let threads = std::mem::take(&mut *self.threads.lock());
        join_or_detach(threads, "worker", deadline);
        while self.pop().is_some() {}
    }
}

/// How long stopping a backend waits for its threads (workers, dedicated kernels and the
/// supervisor together) before leaving the busy ones behind. A thread that is not inside
/// a handler ends within microseconds of being told; one that is still busy after this
/// is stuck in a handler that a terminate abandoned.
pub(crate) const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Joins `threads`, except the calling thread and threads still busy at `deadline`
/// (stuck in a handler that never returns): those are detached, with a warning, so
/// stopping a runtime never hangs on user code.
pub(crate) fn join_or_detach(threads: Vec<JoinHandle<()>>, what: &str, deadline: Instant) {
    let me = std::thread::current().id();
    for handle in threads {
        if handle.thread().id() == me {
            continue;
        }
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if handle.is_finished() {
            // A thread that panicked already reported it; nothing to add.
            let _ = handle.join();
        } else {
            tracing::warn!(
                thread = handle.thread().name().unwrap_or("?"),
                "a gyre {what} thread is still inside a handler; leaving it behind"
            );
        }
    }
}
