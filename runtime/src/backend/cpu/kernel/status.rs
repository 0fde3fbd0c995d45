//! What a CPU kernel reports about itself: identity, state, counters, samples, health and
//! the supervisor's view of it.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{KernelConfig, KernelCore, RestartState, NOT_IN_HAND};
use crate::abi::State;
use crate::control::Counters;
use crate::sync::Ordering;

impl KernelCore {
    /// The kernel's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The kernel's configuration.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// Bytes of ring memory (headers and slots) a kernel of `config` holds: its inbox,
    /// its single-producer lane (same layout) and its host-bound output.
    pub fn ring_bytes_for(config: &KernelConfig) -> usize {
        2 * config.inbox.region_bytes() + config.outbox.map_or(0, |o| o.region_bytes())
    }

    /// The kernel's numbers now, for metrics.
    pub fn sample(&self) -> crate::metrics::KernelSample {
        let counters = self.counters();
        crate::metrics::KernelSample {
            busy_ns: Some(self.busy_ns()),
            throughput: self
                .throughput
                .rate(std::time::Instant::now(), counters.processed),
            latency: self.latency.summary(),
            name: self.config.name.clone(),
            backend: "cpu",
            device: None,
            id: self.id,
            state: self.state(),
            counters,
            inbox_depth: self.inbox_len(),
            inbox_capacity: self.config.inbox.capacity(),
            inbox_utilisation: f64::from(self.inbox.len().max(self.lane.len()))
                / f64::from(self.config.inbox.capacity()),
            heartbeat: self.heartbeat(),
            ring_bytes: self.ring_bytes(),
        }
    }

    /// The kernel's health under `policy`, judged against what the previous call saw
    /// (the watchdog's memory lives in the kernel).
    pub fn health(&self, policy: &crate::health::HealthPolicy) -> crate::health::Health {
        let mut health = Self::evaluate_with(&self.watchdog, &self.sample(), policy);
        let restarts = self.restart_state.lock();
        if restarts.book.circuit_open {
            health.status = crate::health::HealthStatus::Unhealthy;
            health.reasons.push(format!(
                "kernel `{}`'s circuit is open: it faulted again after {} restarts in a row; restart it by hand",
                self.config.name, restarts.book.in_a_row
            ));
        }
        health
    }

    fn evaluate_with(
        memory: &Mutex<Option<crate::health::Watchdog>>,
        sample: &crate::metrics::KernelSample,
        policy: &crate::health::HealthPolicy,
    ) -> crate::health::Health {
        let now = std::time::Instant::now();
        let mut watchdog = memory.lock();
        let watchdog = watchdog.get_or_insert_with(|| crate::health::Watchdog::new(sample, now));
        crate::health::evaluate(sample, policy, watchdog, now)
    }

    /// The health as the supervisor's background watchdog sees it (its own memory).
    pub(crate) fn watchdog_health(
        &self,
        policy: &crate::health::HealthPolicy,
    ) -> crate::health::Health {
        Self::evaluate_with(&self.supervisor_watchdog, &self.sample(), policy)
    }

    /// Records `reason` as the kernel's fault when it has none yet.
    pub(crate) fn note_fault(&self, reason: &str) {
        self.fault.lock().get_or_insert_with(|| reason.to_owned());
    }

    pub(crate) fn restart_state(&self) -> &Mutex<RestartState> {
        &self.restart_state
    }

    /// Asks the supervisor to apply the fault policy (after a watchdog termination).
    pub(crate) fn request_supervised_restart(self: &Arc<Self>) {
        self.supervisor.report_fault(self.clone());
    }

    /// Tells receivers waiting for a restart that none will come (the circuit opened):
    /// they look at the kernel's state again.
    pub(crate) fn restart_abandoned(&self) {
        self.outbox_items.notify();
    }

    /// Whether the kernel is faulted, or was terminated by its watchdog, and its fault
    /// policy will restart it (receivers keep waiting instead of being told that nothing
    /// more will come).
    pub(super) fn restart_pending(&self) -> bool {
        // ORDERING: Acquire pairs with the Release store in `terminate_for_restart`.
        if self.restart_due.load(Ordering::Acquire) {
            return true;
        }
        matches!(
            self.config.fault_policy,
            crate::health::FaultPolicy::Restart(_)
        ) && self.state() == State::Faulted
            && !self.restart_state.lock().book.circuit_open
    }

    /// The runtime's dead-letter sink this kernel sends to.
    pub fn dead_letters(&self) -> &Arc<crate::routing::DeadLetters> {
        &self.dead
    }

    /// Restarts over the kernel's life, by its fault policy or by hand.
    pub fn restarts(&self) -> u64 {
        self.restart_state.lock().total
    }

    /// Bytes of ring memory this kernel holds.
    pub fn ring_bytes(&self) -> usize {
        Self::ring_bytes_for(&self.config)
    }

    /// The state the kernel last published.
    ///
    /// A kernel abandoned by a terminate (its handler never returned) reads as
    /// `Terminated`: the host took its rings over without the kernel's acknowledgement.
    pub fn state(&self) -> State {
        if self.local.abandoned.load(Ordering::Relaxed) {
            return State::Terminated;
        }
        self.control.state()
    }

    /// Records one end-to-end latency (nanoseconds) of something that came back to the
    /// host through this kernel.
    pub fn record_latency(&self, ns: u64) {
        self.latency.record(ns);
    }

    /// The latency histogram's quantiles, if anything was recorded.
    pub fn latency(&self) -> Option<crate::metrics::LatencySummary> {
        self.latency.summary()
    }

    /// Whether a handler is running now (racy).
    pub fn is_busy(&self) -> bool {
        self.local.in_hand.load(Ordering::Relaxed) != NOT_IN_HAND
    }

    /// Whether emits wait in a port's stash for room downstream (racy: a kernel in the
    /// middle of a turn counts as having some).
    pub fn has_stashed(&self) -> bool {
        self.exec
            .try_lock()
            .is_none_or(|exec| !exec.stash.is_empty())
    }

    /// Whether a terminate gave up on this kernel's handler (see [`KernelCore::state`]).
    pub fn is_abandoned(&self) -> bool {
        self.local.abandoned.load(Ordering::Relaxed)
    }

    /// Nanoseconds the kernel spent in turns that handled messages (handler calls and
    /// the ring work around them).
    pub fn busy_ns(&self) -> u64 {
        self.local.busy_ns.load(Ordering::Relaxed)
    }

    /// The fault message, if the kernel faulted.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().clone()
    }

    /// The kernel's counters, widened to u64.
    pub fn counters(&self) -> Counters<u64> {
        self.control.counters()
    }

    /// The heartbeat word.
    pub fn heartbeat(&self) -> u32 {
        self.control.status().heartbeat
    }

    /// Messages waiting in the inbox (racy gauge).
    pub fn inbox_len(&self) -> u32 {
        self.inbox.len() + self.lane.len()
    }

    /// Payload bytes of an inbox slot.
    pub fn inbox_payload_bytes(&self) -> usize {
        self.config.inbox.payload_bytes() as usize
    }
}
