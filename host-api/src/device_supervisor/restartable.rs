//! The launched group behind a device kernel's handles, which a restart replaces (see
//! the parent module's docs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use gyre_runtime::abi::{Command, State};
use gyre_runtime::backend::group::{GroupReport, Message, SendError};
use gyre_runtime::backend::seam::{Capabilities, DeviceGroup, OnOutput, Watch};
use gyre_runtime::backend::CommandError;
use gyre_runtime::health::{
    self, FaultPolicy, Health, HealthPolicy, HealthStatus, RestartBook, Watchdog,
};
use gyre_runtime::lifecycle::{self, Event};
use gyre_runtime::metrics::KernelSample;
use gyre_runtime::routing::{DeadLetter, DeadLetters};
use gyre_runtime::wait::Signal;

use super::{Supervisor, FAULT_CHECK};
use crate::backing::DeviceCore;
use crate::Error;

/// Launches a fresh group from the plan the group was launched from, on the same device.
pub(crate) type Relaunch = Box<dyn Fn() -> Result<Box<dyn DeviceGroup>, Error> + Send + Sync>;

/// What a kernel's spec asks of supervision (`KernelSpec::on_fault`, `::watchdog`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Supervision {
    pub(crate) fault_policy: FaultPolicy,
    pub(crate) watchdog: Option<Duration>,
}

/// One launched group: the first, or one a restart launched.
struct Generation {
    group: Box<dyn DeviceGroup>,
    /// Set (with `host_fault`) once the host decided the group faulted.
    faulted: AtomicBool,
    host_fault: Mutex<Option<String>>,
    /// Per kernel, set once this generation was retired and its host outputs all taken.
    outputs_done: Vec<AtomicBool>,
    /// Per kernel, whether its last stop left it without acknowledging (a stuck handler).
    abandoned: Vec<AtomicBool>,
    /// The generation that replaced this one.
    next: OnceLock<Box<Generation>>,
}

impl Generation {
    fn new(group: Box<dyn DeviceGroup>, n: usize) -> Self {
        Self {
            group,
            faulted: AtomicBool::new(false),
            host_fault: Mutex::new(None),
            outputs_done: (0..n).map(|_| AtomicBool::new(false)).collect(),
            abandoned: (0..n).map(|_| AtomicBool::new(false)).collect(),
            next: OnceLock::new(),
        }
    }

    fn host_faulted(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `fault_with`: who sees the
        // flag sees the reason.
        self.faulted.load(Ordering::Acquire)
    }

    fn fault(&self) -> Option<String> {
        if self.host_faulted() {
            return self.host_fault.lock().clone();
        }
        self.group.fault()
    }

    fn state(&self, k: usize) -> State {
        if self.host_faulted() {
            State::Faulted
        } else {
            self.group.state(k)
        }
    }
}

/// The restart bookkeeping of a group under [`FaultPolicy::Restart`].
#[derive(Debug, Default)]
struct RestartState {
    book: RestartBook,
    due: Option<Instant>,
}

/// A device group that can be restarted, behind the seam (see the module docs).
pub(crate) struct Restartable {
    first: Generation,
    names: Vec<String>,
    order: Vec<usize>,
    supervision: Vec<Supervision>,
    relaunch: Relaunch,
    command_timeout: Duration,
    restarts: AtomicU64,
    /// Set while a restart hands the queued messages to the new generation: other
    /// senders find the inbox full and wait, so that the queued messages go first.
    restarting: AtomicBool,
    /// Serialises restarts with each other and with stops.
    restart_lock: Mutex<()>,
    /// The supervisor's watchdog memory, per kernel.
    watchdogs: Mutex<Vec<Option<Watchdog>>>,
    restart_state: Mutex<RestartState>,
    /// Messages a restart could not hand to the new group, and what a terminate by the
    /// fault policy handed back.
    dead_letters: DeadLetters,
    /// The runtime's supervisor, once the group is registered.
    pub(super) supervisor: OnceLock<Supervisor>,
    /// Per kernel, what stopped generations handed back and no restart handed on yet
    /// (a relaunch that failed leaves it here for the next try).
    carried: Mutex<Vec<Carried>>,
}

/// Queued messages and undelivered outputs (with their port) of one kernel.
type Carried = (Vec<Message>, Vec<(u32, Message)>);

impl std::fmt::Debug for Restartable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restartable")
            .field("group", &self.current().group)
            .field("restarts", &self.restarts())
            .finish_non_exhaustive()
    }
}

impl Restartable {
    /// Wraps a launched group.
    pub(crate) fn new(
        group: Box<dyn DeviceGroup>,
        names: Vec<String>,
        order: Vec<usize>,
        supervision: Vec<Supervision>,
        relaunch: Relaunch,
        command_timeout: Duration,
    ) -> Self {
        let n = names.len();
        Self {
            first: Generation::new(group, n),
            names,
            order,
            supervision,
            relaunch,
            command_timeout,
            restarts: AtomicU64::new(0),
            restarting: AtomicBool::new(false),
            restart_lock: Mutex::new(()),
            watchdogs: Mutex::new(vec![None; n]),
            restart_state: Mutex::new(RestartState::default()),
            dead_letters: DeadLetters::new(),
            supervisor: OnceLock::new(),
            carried: Mutex::new(vec![Carried::default(); n]),
        }
    }

    /// Registers the group with the runtime's supervisor, which watches it now if its
    /// kernels ask for a watchdog or a fault policy, else from its first restart on.
    pub(crate) fn attach(core: &Arc<DeviceCore>, supervisor: &Supervisor) {
        let _ = core.group.supervisor.set(supervisor.clone());
        if core.group.needs_supervision() {
            supervisor.watch(core);
        }
    }

    /// The current generation: the last of the chain.
    fn current(&self) -> &Generation {
        let mut g = &self.first;
        while let Some(next) = g.next.get() {
            g = next;
        }
        g
    }

    /// Every generation, first to current.
    fn generations(&self) -> impl Iterator<Item = &Generation> {
        std::iter::successors(Some(&self.first), |g| g.next.get().map(|b| &**b))
    }

    /// Moves the dead letters every generation of the group kept to the group's own list,
    /// which counts them; before the group adds one of its own, so they stay in order.
    fn absorb_dead_letters(&self) {
        for g in self.generations() {
            for letter in g.group.take_dead_letters() {
                self.dead_letters.push(letter);
            }
        }
    }

    /// The group's dead letters with what every generation kept gathered in (what a
    /// requester looks its failed requests up in).
    pub(crate) fn gathered_dead_letters(&self) -> &DeadLetters {
        self.absorb_dead_letters();
        &self.dead_letters
    }

    /// Dead letters the group ever kept, taken or not (what `Runtime::dead_letter_total`
    /// and the `gyre_runtime_dead_letters_total` metric add up).
    pub(crate) fn dead_letter_total(&self) -> u64 {
        self.absorb_dead_letters();
        self.dead_letters.total()
    }

    /// Restarts so far (by hand or by the fault policy).
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The runtime's supervisor, once the group is registered.
    pub(crate) fn supervisor(&self) -> Option<&Supervisor> {
        self.supervisor.get()
    }

    /// Whether the supervisor has anything to do for this group.
    pub(crate) fn needs_supervision(&self) -> bool {
        self.supervision
            .iter()
            .any(|s| s.watchdog.is_some() || s.fault_policy != FaultPolicy::Report)
    }

    /// Whether the last stop left kernel `k` without its acknowledgement (its handler
    /// did not return): what it holds on the device could not be handed back.
    pub(crate) fn abandoned(&self, k: usize) -> bool {
        self.current().abandoned[k].load(Ordering::Relaxed)
    }

    /// Marks the current generation faulted from the host with `reason` (the first
    /// reason stays). Its kernels read `Faulted`; sends and commands fail with it.
    pub(crate) fn fault_with(&self, reason: &str) {
        let g = self.current();
        {
            let mut fault = g.host_fault.lock();
            if fault.is_some() || g.group.fault().is_some() {
                return;
            }
            *fault = Some(reason.to_owned());
        }
        // ORDERING: Release pairs with the Acquire in `Generation::host_faulted`.
        g.faulted.store(true, Ordering::Release);
        tracing::error!(kernels = ?self.names, %reason, "device group faulted by the host");
        g.group.progress().notify();
    }

    /// Whether any kernel of the current generation faulted.
    /// Whether the group is faulted (or being restarted) and its fault policy will
    /// restart it: receivers keep waiting instead of being told that nothing more will
    /// come, as on the CPU. False once the circuit is open; a host's stop is the
    /// caller's to check.
    pub(crate) fn restart_pending(&self) -> bool {
        // ORDERING: Acquire pairs with the Release stores in `restart`.
        if self.restarting.load(Ordering::Acquire) {
            return true;
        }
        self.supervision
            .iter()
            .any(|s| matches!(s.fault_policy, FaultPolicy::Restart(_)))
            && self.faulted()
            && !self.restart_state.lock().book.circuit_open
    }

    fn faulted(&self) -> bool {
        let g = self.current();
        g.host_faulted() || (0..self.names.len()).any(|k| g.group.state(k) == State::Faulted)
    }

    /// Stops generation `g` (terminate, or drain for `Some(timeout)` when it is not
    /// faulted) and records which kernels did not acknowledge.
    fn stop_generation(&self, g: &Generation, drain: Option<Duration>) -> GroupReport {
        let host_fault = g
            .host_faulted()
            .then(|| g.host_fault.lock().clone())
            .flatten();
        let mut report = match drain {
            Some(timeout) if host_fault.is_none() => g.group.drain(timeout),
            _ => g.group.terminate(),
        };
        for (k, entry) in report.kernels.iter_mut().enumerate() {
            let stuck = !lifecycle::is_stopped(entry.state);
            g.abandoned[k].store(stuck, Ordering::Relaxed);
            if host_fault.is_some() {
                entry.state = State::Faulted;
            }
        }
        if host_fault.is_some() {
            report.fault = host_fault;
        }
        // Waiters on an earlier generation's signal wake and look again.
        for g in self.generations() {
            g.group.progress().notify();
        }
        report
    }

    /// Restarts the group: terminates what is left of the current generation, launches a
    /// fresh group from the same plan on the same device, activates its kernels and hands
    /// each kernel the messages that were queued for it (its host inbox, then what its
    /// upstream kernels had sent it), in their order and with their correlation ids,
    /// before any new send gets in. State words start from zero. A message the new group
    /// does not take within the command timeout, and an output the old group made but
    /// could not deliver, go to the dead letters.
    ///
    /// `host_stopped` is the group's stopped-by-the-host flag (cleared on success).
    pub(crate) fn restart(&self, host_stopped: &AtomicBool) -> Result<(), Error> {
        let _serial = self.restart_lock.lock();
        let old = self.current();
        if !self.faulted() {
            for &k in &self.order {
                let state = old.group.state(k);
                if !lifecycle::is_stopped(state) {
                    return Err(Error::Lifecycle {
                        kernel: self.names[k].clone(),
                        source: lifecycle::LifecycleError {
                            from: state,
                            event: Event::Restart,
                        },
                    });
                }
            }
        }
        // ORDERING: Release/Acquire pair with the loads in `try_send`: from here until
        // the queued messages are in, other senders find the group full.
        self.restarting.store(true, Ordering::Release);
        // The old group stops before the new one launches (a device may not hold both);
        // what it hands back is carried until a launch succeeds.
        let report = self.stop_generation(old, None);
        {
            let mut carried = self.carried.lock();
            for (k, entry) in report.kernels.into_iter().enumerate() {
                carried[k].0.extend(entry.undelivered);
                carried[k].1.extend(entry.undelivered_outputs);
            }
        }
        let fresh = match (self.relaunch)() {
            Ok(fresh) => fresh,
            Err(e) => {
                // ORDERING: Release pairs with the Acquire in `try_send`.
                self.restarting.store(false, Ordering::Release);
                for g in self.generations() {
                    g.group.progress().notify();
                }
                return Err(e);
            }
        };
        for &k in self.order.iter().rev() {
            if let Err(e) = fresh.command(k, Command::Activate) {
                tracing::warn!(kernel = %self.names[k], error = %e, "restarted kernel did not activate");
            }
        }
        let n = self.names.len();
        if old.next.set(Box::new(Generation::new(fresh, n))).is_err() {
            unreachable!("restarts serialise on restart_lock");
        }
        let new = self.current();
        let deadline = Instant::now() + self.command_timeout;
        let carried = std::mem::replace(&mut *self.carried.lock(), vec![Carried::default(); n]);
        for &k in &self.order {
            let (undelivered, outputs) = &carried[k];
            for m in undelivered {
                self.resend(new, k, m, deadline);
            }
            for (port, m) in outputs {
                self.absorb_dead_letters();
                self.dead_letters.push(letter(
                    &self.names[k],
                    format!("restart: output on port {port} the faulted group could not deliver"),
                    false,
                    m,
                ));
            }
        }
        self.restarts.fetch_add(1, Ordering::Relaxed);
        *self.watchdogs.lock() = vec![None; n];
        // Relaxed: the flag is a plain boolean of the group's handles.
        host_stopped.store(false, Ordering::Relaxed);
        // ORDERING: Release pairs with the Acquire in `try_send`.
        self.restarting.store(false, Ordering::Release);
        for g in self.generations() {
            g.group.progress().notify();
        }
        tracing::info!(kernels = ?self.names, restarts = self.restarts(), "device group restarted");
        Ok(())
    }

    /// Hands queued message `m` to kernel `k` of `g`, waiting for room until `deadline`;
    /// a dead letter if it does not go in.
    fn resend(&self, g: &Generation, k: usize, m: &Message, deadline: Instant) {
        let _watch = g.group.watch();
        let timeout = deadline.saturating_duration_since(Instant::now());
        let sent = gyre_runtime::backend::seam::send_within(g.group.progress(), timeout, || {
            g.group.try_send(k, &m.payload, m.corr)
        });
        if let Err(e) = sent {
            tracing::error!(kernel = %self.names[k], error = %e, "restart: a queued message did not go back in");
            self.absorb_dead_letters();
            self.dead_letters.push(letter(
                &self.names[k],
                format!("restart: the restarted group did not take it back: {e}"),
                true,
                m,
            ));
        }
    }

    /// One supervisor round for this group: the watchdogs, then the fault policy.
    /// Returns when it wants to be looked at again.
    pub(super) fn supervise(&self, core: &DeviceCore, now: Instant) -> Option<Instant> {
        // Relaxed: a host's stop is final for the fault policy (as on the CPU).
        if core.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let mut next = None::<Instant>;
        let g = self.current();
        if !self.faulted() {
            let mut watchdogs = self.watchdogs.lock();
            for (k, supervision) in self.supervision.iter().enumerate() {
                let Some(timeout) = supervision.watchdog else {
                    continue;
                };
                let sample = g.group.sample(k);
                let dog = watchdogs[k].get_or_insert_with(|| Watchdog::new(&sample, now));
                let policy = HealthPolicy {
                    watchdog: timeout,
                    ..HealthPolicy::default()
                };
                if health::evaluate(&sample, &policy, dog, now).stalled {
                    drop(watchdogs);
                    self.fault_with(&format!(
                        "watchdog: kernel `{}`'s heartbeat stood still for more than {timeout:?} \
                         while messages waited (its handler may be stuck)",
                        self.names[k]
                    ));
                    break;
                }
                let check = now + timeout / 4;
                next = Some(next.map_or(check, |n| n.min(check)));
            }
        }
        if self.faulted() {
            if let Some(at) = self.apply_fault_policy(core, now) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        let policy = self
            .supervision
            .iter()
            .any(|s| s.fault_policy != FaultPolicy::Report);
        // Relaxed: as above.
        let stopped = core.stopped.load(Ordering::Relaxed);
        if policy && !stopped && !self.restart_state.lock().book.circuit_open {
            // A device raises no interrupt when a kernel faults: look at the states again.
            let at = Instant::now() + FAULT_CHECK;
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// The fault policy of the faulted group: the first kernel's that is not `Report`.
    fn apply_fault_policy(&self, core: &DeviceCore, now: Instant) -> Option<Instant> {
        let policy = self
            .supervision
            .iter()
            .map(|s| s.fault_policy)
            .find(|p| *p != FaultPolicy::Report)?;
        match policy {
            FaultPolicy::Report => None,
            FaultPolicy::Terminate => {
                let why = DeviceGroup::fault(self).unwrap_or_else(|| "faulted".into());
                let report = crate::group::device_stop(core, crate::stop::Stop::Terminate);
                self.absorb_dead_letters();
                for entry in report.kernels {
                    for m in entry.undelivered {
                        self.dead_letters.push(DeadLetter {
                            kernel: entry.kernel.clone(),
                            reason: format!("terminated by its fault policy: {why}"),
                            is_input: true,
                            routed: false,
                            tag: 0,
                            corr: crate::spec::split(m.corr),
                            payload: m.bytes,
                        });
                    }
                }
                None
            }
            FaultPolicy::Restart(policy) => {
                let mut state = self.restart_state.lock();
                if state.book.circuit_open {
                    return None;
                }
                let due = if let Some(due) = state.due {
                    due
                } else {
                    let Some(wait) = state.book.next_backoff(&policy) else {
                        tracing::error!(kernels = ?self.names, restarts = state.book.in_a_row, "circuit open: the device group faulted again after its last allowed restart; it stays faulted");
                        drop(state);
                        // Receivers that waited for the restart learn that none comes.
                        self.current().group.progress().notify();
                        return None;
                    };
                    let due = now + wait;
                    state.due = Some(due);
                    due
                };
                if due > now {
                    return Some(due);
                }
                state.due = None;
                state.book.record(now);
                drop(state);
                match self.restart(&core.stopped) {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(kernels = ?self.names, error = %e, "device group restart failed; trying again later");
                        Some(now + policy.backoff(self.restart_state.lock().book.in_a_row))
                    }
                }
            }
        }
    }

    /// Whether a retired generation has a waiter that a restart may have left waiting on
    /// its signal (the supervisor nudges it).
    pub(super) fn stale_waiters(&self) -> bool {
        self.generations()
            .filter(|g| g.next.get().is_some())
            .any(|g| g.group.progress().has_waiters())
    }

    pub(super) fn nudge_stale_waiters(&self) {
        for g in self.generations().filter(|g| g.next.get().is_some()) {
            g.group.progress().notify();
        }
    }

    /// The health of kernel `k` with the host's findings added.
    fn health_of(&self, k: usize, policy: &HealthPolicy) -> Health {
        let g = self.current();
        let mut health = g.group.health(k, policy);
        if let (true, Some(reason)) = (g.host_faulted(), g.fault()) {
            health.status = HealthStatus::Unhealthy;
            health
                .reasons
                .insert(0, format!("kernel `{}` faulted: {reason}", self.names[k]));
        }
        if self.restart_state.lock().book.circuit_open {
            health.status = HealthStatus::Unhealthy;
            health.reasons.push(format!(
                "the group faulted again after {} restarts: its circuit is open and it stays \
                 faulted (restart it by hand, `Group::restart`)",
                self.restarts()
            ));
        }
        health
    }
}

/// Callers use the group through the seam's trait (as they used the boxed group before).
impl std::ops::Deref for Restartable {
    type Target = dyn DeviceGroup;

    fn deref(&self) -> &Self::Target {
        self
    }
}

fn letter(kernel: &str, reason: String, is_input: bool, m: &Message) -> DeadLetter {
    DeadLetter {
        kernel: kernel.to_owned(),
        reason,
        is_input,
        routed: false,
        tag: m.tag,
        corr: m.corr,
        payload: m.payload.clone(),
    }
}

impl DeviceGroup for Restartable {
    fn backend(&self) -> &'static str {
        self.first.group.backend()
    }

    fn device(&self) -> Option<u32> {
        // A restart relaunches on the same device.
        self.first.group.device()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            restart: true,
            ..self.first.group.capabilities()
        }
    }

    fn kernel_id(&self, k: usize) -> u32 {
        self.current().group.kernel_id(k)
    }

    #[inline]
    fn try_send(&self, k: usize, payload: &[u8], corr: [u32; 2]) -> Result<(), SendError> {
        let g = self.current();
        // ORDERING: Acquire pairs with the Release stores in `restart`.
        if self.restarting.load(Ordering::Acquire) {
            return Err(SendError::Full {
                kernel: self.names[k].clone(),
            });
        }
        if g.host_faulted() {
            return Err(SendError::Faulted(g.fault().unwrap_or_default()));
        }
        g.group.try_send(k, payload, corr)
    }

    #[inline]
    fn try_recv_with(&self, k: usize, f: &mut OnOutput<'_>) -> bool {
        let mut g = &self.first;
        loop {
            let Some(next) = g.next.get() else {
                return g.group.try_recv_with(k, f);
            };
            // A retired generation: terminated, so what is in its outbox is all that will
            // come from it; taken before anything of the next one.
            if !g.outputs_done[k].load(Ordering::Relaxed) {
                if g.group.try_recv_with(k, f) {
                    return true;
                }
                g.outputs_done[k].store(true, Ordering::Relaxed);
            }
            g = next;
        }
    }

    fn progress(&self) -> &Signal {
        self.current().group.progress()
    }

    fn watch(&self) -> Watch<'_> {
        self.current().group.watch()
    }

    fn state(&self, k: usize) -> State {
        self.current().state(k)
    }

    fn fault(&self) -> Option<String> {
        let g = self.current();
        g.fault().or_else(|| {
            (0..self.names.len())
                .find(|&k| g.group.state(k) == State::Faulted)
                .map(|k| {
                    format!(
                        "kernel `{}` faulted on the device: its handler returned \
                         GYRE_FAULT_KERNEL (or it read a command it does not know)",
                        self.names[k]
                    )
                })
        })
    }

    fn command(&self, k: usize, command: Command) -> Result<State, CommandError> {
        let g = self.current();
        if g.host_faulted() {
            return Err(CommandError::Faulted {
                name: self.names[k].clone(),
                reason: g.fault().unwrap_or_default(),
            });
        }
        g.group.command(k, command)
    }

    fn drain(&self, timeout: Duration) -> GroupReport {
        let _serial = self.restart_lock.lock();
        self.stop_generation(self.current(), Some(timeout))
    }

    fn terminate(&self) -> GroupReport {
        let _serial = self.restart_lock.lock();
        self.stop_generation(self.current(), None)
    }

    fn sample(&self, k: usize) -> KernelSample {
        let g = self.current();
        let mut sample = g.group.sample(k);
        if g.host_faulted() {
            sample.state = State::Faulted;
        }
        sample
    }

    fn health(&self, k: usize, policy: &HealthPolicy) -> Health {
        self.health_of(k, policy)
    }

    fn take_dead_letters(&self) -> Vec<DeadLetter> {
        self.absorb_dead_letters();
        self.dead_letters.take()
    }
}
