//! The supervisor: applies kernels' fault policies and runs their background watchdogs.
//!
//! One thread per backend, started with the first kernel that needs it (a fault policy
//! other than `Report`, or a watchdog). It sleeps on a [`Signal`] until a kernel reports
//! a fault, a restart falls due, or a watchdog check is due; an idle runtime whose
//! kernels need no supervision has no supervisor thread at all.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::kernel::KernelCore;
use super::sched::FaultSink;
use crate::abi::State;
use crate::health::{FaultPolicy, HealthPolicy, RestartPolicy};
use crate::sync::{AtomicBool, Ordering};
use crate::wait::Signal;

#[derive(Debug, Default)]
struct Queue {
    faulted: Vec<Arc<KernelCore>>,
    watched: Vec<Weak<KernelCore>>,
}

/// Restarts dedicated kernels' threads; implemented by the backend.
pub(crate) type Respawn = Box<dyn Fn(&Arc<KernelCore>) -> Result<(), String> + Send + Sync>;

pub(crate) struct Supervisor {
    signal: Signal,
    queue: Mutex<Queue>,
    shutdown: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    respawn: Respawn,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

impl Supervisor {
    pub(crate) fn new(respawn: Respawn) -> Arc<Self> {
        Arc::new(Self {
            signal: Signal::new(),
            queue: Mutex::new(Queue::default()),
            shutdown: AtomicBool::new(false),
            thread: Mutex::new(None),
            respawn,
        })
    }

    fn ensure_thread(self: &Arc<Self>) {
        let mut thread = self.thread.lock();
        if thread.is_none() && !self.shutdown.load(Ordering::Acquire) {
            let me = Arc::downgrade(self);
            match std::thread::Builder::new()
                .name("gyre-supervisor".into())
                .spawn(move || run(&me))
            {
                Ok(handle) => *thread = Some(handle),
                Err(e) => tracing::error!(error = %e, "could not start the gyre supervisor"),
            }
        }
    }

    /// Takes `kernel` under supervision if its configuration asks for it.
    pub(crate) fn watch(self: &Arc<Self>, kernel: &Arc<KernelCore>) {
        let config = kernel.config();
        if config.fault_policy == FaultPolicy::Report && config.watchdog.is_none() {
            return;
        }
        self.queue.lock().watched.push(Arc::downgrade(kernel));
        self.ensure_thread();
        self.signal.notify();
    }

    /// Stops supervising: no fault policy or watchdog acts from now on. Waits for the
    /// supervisor's thread until `deadline` (see [`super::pool::join_or_detach`]).
    pub(crate) fn stop(&self, deadline: Instant) {
        // ORDERING: Release pairs with the Acquire loads in `run` and `ensure_thread`.
        self.shutdown.store(true, Ordering::Release);
        self.signal.notify();
        if let Some(handle) = self.thread.lock().take() {
            super::pool::join_or_detach(vec![handle], "supervisor", deadline);
        }
    }
}

impl FaultSink<KernelCore> for Supervisor {
    fn report_fault(&self, kernel: Arc<KernelCore>) {
        if kernel.config().fault_policy == FaultPolicy::Report {
            return;
        }
        self.queue.lock().faulted.push(kernel);
        self.signal.notify();
    }
}

/// A restart that falls due at a time.
struct Due {
    at: Instant,
    kernel: Arc<KernelCore>,
}

fn run(me: &Weak<Supervisor>) {
    let mut due: Vec<Due> = Vec::new();
    rounds(me, &mut due);
    for d in due {
        d.kernel
            .drop_requeued("the runtime stopped before the kernel's restart");
    }
}

fn rounds(me: &Weak<Supervisor>, due: &mut Vec<Due>) {
    let mut next_watch = Instant::now();
    loop {
        let Some(sup) = me.upgrade() else { return };
        if sup.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Watchdogs.
        let now = Instant::now();
        let mut watch_period = None::<Duration>;
        if now >= next_watch {
            let watched: Vec<_> = {
                let mut queue = sup.queue.lock();
                queue.watched.retain(|w| w.strong_count() > 0);
                queue.watched.iter().filter_map(Weak::upgrade).collect()
            };
            for kernel in &watched {
                if let Some(timeout) = kernel.config().watchdog {
                    watch_period = Some(watch_period.map_or(timeout, |p| p.min(timeout)) / 4);
                    check_watchdog(kernel, timeout);
                }
            }
            next_watch = now + watch_period.unwrap_or(Duration::from_secs(1));
        }
        // Faults reported since the last round.
        let faulted = std::mem::take(&mut sup.queue.lock().faulted);
        for kernel in faulted {
            on_fault(&kernel, due);
        }
        // Restarts that fell due.
        let now = Instant::now();
        let (ready, later): (Vec<Due>, Vec<Due>) = due.drain(..).partition(|d| d.at <= now);
        *due = later;
        for d in ready {
            restart(&sup, &d.kernel, due);
        }
        let wake_at = due.iter().map(|d| d.at).chain([next_watch]).min();
        sup.signal.wait_until(wake_at, || {
            (sup.shutdown.load(Ordering::Acquire) || !sup.queue.lock().faulted.is_empty())
                .then_some(())
        });
    }
}

fn check_watchdog(kernel: &Arc<KernelCore>, timeout: Duration) {
    // Faulted or abandoned already, or tripped before (its terminate may still be
    // waiting for the handler): one trip per fault.
    if kernel.state() == State::Faulted || kernel.is_abandoned() || kernel.fault().is_some() {
        return;
    }
    let health = kernel.watchdog_health(&HealthPolicy {
        watchdog: timeout,
        ..HealthPolicy::default()
    });
    if !health.stalled {
        return;
    }
    let reason =
        format!("watchdog: heartbeat stood still for more than {timeout:?} while messages waited");
    tracing::error!(kernel = %kernel.config().name, %reason, "watchdog tripped");
    kernel.note_fault(&reason);
    if kernel.config().fault_policy != FaultPolicy::Report {
        // Terminating waits up to the command timeout for the stuck handler, then takes
        // the rings over; done aside so other kernels' restarts stay on time.
        let kernel = kernel.clone();
        let policy = kernel.config().fault_policy;
        let reported = std::thread::Builder::new()
            .name("gyre-watchdog".into())
            .spawn(move || {
                let why = kernel.fault().unwrap_or_default();
                let reason = format!(
                    "kernel `{}` terminated by its watchdog: {why}",
                    kernel.config().name
                );
                if matches!(policy, FaultPolicy::Restart(_)) {
                    kernel.terminate_for_restart(&reason);
                    kernel.request_supervised_restart();
                } else {
                    kernel.terminate_to_dead_letters(&reason);
                }
            });
        if let Err(e) = reported {
            tracing::error!(error = %e, "could not start a watchdog action thread");
        }
    }
}

fn on_fault(kernel: &Arc<KernelCore>, due: &mut Vec<Due>) {
    match kernel.config().fault_policy {
        FaultPolicy::Report => {}
        FaultPolicy::Terminate => {
            let why = kernel.fault().unwrap_or_else(|| "faulted".into());
            kernel.terminate_to_dead_letters(&format!(
                "kernel `{}` terminated by its fault policy: {why}",
                kernel.config().name
            ));
        }
        FaultPolicy::Restart(policy) => schedule_restart(kernel, &policy, due),
    }
}

fn schedule_restart(kernel: &Arc<KernelCore>, policy: &RestartPolicy, due: &mut Vec<Due>) {
    let mut state = kernel.restart_state().lock();
    let Some(wait) = state.book.next_backoff(policy) else {
        tracing::error!(
            kernel = %kernel.config().name,
            restarts = state.book.in_a_row,
            "circuit open: the kernel faulted again after its last allowed restart; it stays faulted"
        );
        drop(state);
        kernel.drop_requeued("its circuit opened");
        kernel.restart_abandoned();
        return;
    };
    tracing::warn!(kernel = %kernel.config().name, ?wait, attempt = state.book.in_a_row + 1, "restart scheduled");
    due.push(Due {
        at: Instant::now() + wait,
        kernel: kernel.clone(),
    });
}

fn restart(sup: &Supervisor, kernel: &Arc<KernelCore>, due: &mut Vec<Due>) {
    let FaultPolicy::Restart(policy) = kernel.config().fault_policy else {
        return;
    };
    if !crate::lifecycle::is_stopped(kernel.state()) || kernel.is_stopped_by_host() {
        // Restarted meanwhile, or drained or terminated by the host: a host's stop is
        // final (a drain of a group with a faulted member must not bring it back).
        kernel.drop_requeued("the kernel was restarted or stopped by hand first");
        return;
    }
    let restarted = kernel.restart_in_place();
    {
        let mut state = kernel.restart_state().lock();
        state.book.record(Instant::now());
    }
    let outcome = restarted.map_err(|e| e.to_string()).and_then(|needs_thread| {
        if needs_thread {
            (sup.respawn)(kernel)?;
        }
        // A kernel that faults again at once reports that fault itself; it is not a
        // failed restart.
        if let Err(e) = kernel.set_active(true) {
            tracing::debug!(kernel = %kernel.config().name, error = %e, "restarted kernel did not stay active");
        }
        Ok(())
    });
    match outcome {
        Ok(()) => {
            tracing::info!(kernel = %kernel.config().name, "kernel restarted by its fault policy");
        }
        Err(e) => {
            tracing::warn!(kernel = %kernel.config().name, error = %e, "restart failed; trying again later");
            schedule_restart(kernel, &policy, due);
        }
    }
}
