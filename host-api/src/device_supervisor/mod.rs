//! Restart and watchdog for device groups, written once over the backend seam (CUDA,
//! the CUDA emulation and wgpu all get it).
//!
//! - [`Restartable`] is what a [`DeviceCore`] holds: the launched group behind the seam,
//!   which a restart replaces by a fresh group launched from the same plan. Handles keep
//!   working across restarts: every call goes to the current *generation*. Generations
//!   form a chain that only grows (a retired group is terminated, its outputs stay
//!   receivable until taken, and it is freed with the handles), so finding the current
//!   one is one acquire load per restart so far, and no lock is taken on the send or
//!   receive path.
//! - A host-decided fault ([`Restartable::fault_with`]: the watchdog, or
//!   [`crate::Group::fault_with`]) marks the current generation faulted from the host: its
//!   kernels read `Faulted`, sends and commands fail with the reason, and a stop
//!   terminates it (within the command timeout, whatever a stuck handler does: what a
//!   kernel that did not acknowledge still holds cannot be read back, and its report entry
//!   says `abandoned`).
//! - [`Supervisor`]: one thread per runtime, started with the first device group that
//!   asks for a watchdog or a fault policy (or the first restart), sleeping on a
//!   [`Signal`] until a watchdog check or a restart falls due; stopped (bounded join) by
//!   the runtime's shutdown or drop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use gyre_runtime::wait::Signal;

use crate::backing::DeviceCore;
use crate::Error;

mod restartable;
pub(crate) use restartable::{Relaunch, Restartable, Supervision};

/// The device groups' supervisor of one runtime (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct Supervisor {
    inner: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

#[derive(Debug, Default)]
struct Shared {
    signal: Signal,
    watched: Mutex<Vec<Weak<DeviceCore>>>,
    shutdown: AtomicBool,
    /// Set when a group joined or restarted (the loop looks again at once).
    news: AtomicBool,
    /// Set by the thread as it returns.
    done: AtomicBool,
    /// Notified by the thread as it returns.
    exited: Signal,
}

/// How long a stop waits for the supervisor's thread.
pub(crate) const JOIN_PATIENCE: Duration = Duration::from_millis(500);

/// How often the states of a group with a fault policy are looked at.
pub(super) const FAULT_CHECK: Duration = Duration::from_millis(20);

/// How often a waiter left on a retired generation's signal is nudged.
const STALE_NUDGE: Duration = Duration::from_millis(2);

impl Supervisor {
    /// Takes `core` under supervision (its watchdogs and fault policy), starting the
    /// thread if this is the first group that needs it.
    pub(crate) fn watch(&self, core: &Arc<DeviceCore>) {
        let weak = Arc::downgrade(core);
        {
            let mut watched = self.inner.watched.lock();
            if !watched.iter().any(|w| w.ptr_eq(&weak)) {
                watched.push(weak);
            }
        }
        // ORDERING: Release pairs with the Acquire in the loop's wake condition.
        self.inner.news.store(true, Ordering::Release);
        self.ensure_thread();
        self.inner.signal.notify();
    }

    fn ensure_thread(&self) {
        let mut thread = self.thread.lock();
        // ORDERING: Acquire pairs with the Release store in `stop`.
        if thread.is_some() || self.inner.shutdown.load(Ordering::Acquire) {
            return;
        }
        let shared = Arc::downgrade(&self.inner);
        match std::thread::Builder::new()
            .name("gyre-device-supervisor".into())
            .spawn(move || run(&shared))
        {
            Ok(handle) => *thread = Some(handle),
            Err(e) => tracing::error!(error = %e, "could not start the device supervisor"),
        }
    }

    /// Makes the supervisor look at its groups again now (after a host-decided fault).
    pub(crate) fn poke(&self) {
        // ORDERING: Release pairs with the Acquire in the loop's wake condition.
        self.inner.news.store(true, Ordering::Release);
        self.inner.signal.notify();
    }

    /// Stops supervising (no watchdog trips and no fault policy restarts from now on) and
    /// waits for the thread until `deadline`; a thread still inside a restart then is
    /// left to finish on its own.
    pub(crate) fn stop(&self, deadline: Instant) {
        // ORDERING: Release pairs with the Acquire loads in `run` and `ensure_thread`.
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.signal.notify();
        let Some(handle) = self.thread.lock().take() else {
            return;
        };
        let done = self.inner.exited.wait_until(Some(deadline), || {
            // ORDERING: Acquire pairs with the Release store as the thread returns.
            self.inner.done.load(Ordering::Acquire).then_some(())
        });
        if done.is_some() {
            let _ = handle.join();
        } else {
            tracing::warn!("the device supervisor is still inside a restart: left to finish");
        }
    }
}

/// Sets `done` and notifies as the supervisor's thread returns, however it returns.
struct Exit(Weak<Shared>);

impl Drop for Exit {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            // ORDERING: Release pairs with the Acquire in `Supervisor::stop`.
            shared.done.store(true, Ordering::Release);
            shared.exited.notify();
        }
    }
}

fn run(shared: &Weak<Shared>) {
    let _exit = Exit(shared.clone());
    loop {
        let Some(me) = shared.upgrade() else { return };
        // ORDERING: Acquire pairs with the Release store in `stop`.
        if me.shutdown.load(Ordering::Acquire) {
            return;
        }
        me.news.store(false, Ordering::Relaxed);
        let now = Instant::now();
        let groups: Vec<Arc<DeviceCore>> = {
            let mut watched = me.watched.lock();
            watched.retain(|w| w.strong_count() > 0);
            watched.iter().filter_map(Weak::upgrade).collect()
        };
        let mut wake_at = None::<Instant>;
        let mut soonest = |at: Instant| wake_at = Some(wake_at.map_or(at, |w: Instant| w.min(at)));
        for core in &groups {
            if let Some(at) = core.group.supervise(core, now) {
                soonest(at);
            }
            if core.group.stale_waiters() {
                core.group.nudge_stale_waiters();
                soonest(Instant::now() + STALE_NUDGE);
            }
        }
        drop(groups);
        me.signal.wait_until(wake_at, || {
            // ORDERING: Acquire pairs with the Release stores in `stop` and `watch`.
            (me.shutdown.load(Ordering::Acquire) || me.news.load(Ordering::Acquire)).then_some(())
        });
    }
}

/// Restarts the device group of `core` by hand (see [`Restartable::restart`]); the
/// supervisor then nudges waiters left on the retired group.
pub(crate) fn restart(core: &Arc<DeviceCore>) -> Result<(), Error> {
    // Relaxed: a plain boolean of the group's handles. A group of a runtime that is gone
    // stays stopped, as a CPU kernel does: a fresh launch would belong to no runtime, and
    // what it took would be lost with the last handle.
    if core.runtime_gone.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::RuntimeGone {
            kernel: core.names.first().cloned().unwrap_or_default(),
        });
    }
    core.group.restart(&core.stopped)?;
    if let Some(supervisor) = core.group.supervisor.get() {
        supervisor.watch(core);
    }
    Ok(())
}
