//! Health: is a kernel doing its job? Evaluated from the same control-block words the
//! metrics read, so it works the same on every backend.
//!
//! A kernel is
//! - **Unhealthy** when it faulted, or when its heartbeat has not moved for longer than
//!   the watchdog timeout while it has messages to process (a stuck handler);
//! - **Degraded** when its inbox is fuller than a threshold, or when more than a given
//!   share of the messages handled since the previous evaluation failed;
//! - **Healthy** otherwise.
//!
//! The watchdog is evaluated when health is asked for: each evaluation compares the
//! heartbeat with the value and time seen by the previous one.

use std::time::{Duration, Instant};

use crate::abi::State;
use crate::lifecycle;
use crate::metrics::KernelSample;

/// Thresholds of the health evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthPolicy {
    /// How long a heartbeat may stand still while work is pending (default 1 s).
    pub watchdog: Duration,
    /// Inbox fill level, `0..=1`, above which a kernel is degraded (default 0.8).
    pub inbox_threshold: f64,
    /// Share of failed messages, `0..=1`, above which a kernel is degraded (default 0.1).
    pub error_rate: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            watchdog: Duration::from_secs(1),
            inbox_threshold: 0.8,
            error_rate: 0.1,
        }
    }
}

/// The verdict, worst first when ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthStatus {
    /// Faulted or stuck.
    Unhealthy,
    /// Working, but under pressure.
    Degraded,
    /// Working.
    Healthy,
}

/// A verdict with its reasons (empty when healthy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The verdict.
    pub status: HealthStatus,
    /// Why, one sentence per finding.
    pub reasons: Vec<String>,
    /// Whether the watchdog found the heartbeat standing still while messages wait.
    pub stalled: bool,
}

/// What the watchdog remembers between evaluations of one kernel.
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    heartbeat: u32,
    since: Instant,
    processed: u64,
    errors: u64,
}

impl Watchdog {
    /// A watchdog that has seen `sample` at `now`.
    pub fn new(sample: &KernelSample, now: Instant) -> Self {
        Self {
            heartbeat: sample.heartbeat,
            since: now,
            processed: sample.counters.processed,
            errors: sample.counters.errors,
        }
    }
}

/// Evaluates `sample` at `now` against `policy`, updating `watchdog`.
pub fn evaluate(
    sample: &KernelSample,
    policy: &HealthPolicy,
    watchdog: &mut Watchdog,
    now: Instant,
) -> Health {
    let mut unhealthy = Vec::new();
    let mut degraded = Vec::new();
    let mut stalled = false;
    // A kernel on a numbered device is named with it: several devices may run kernels of
    // the same name.
    let who = match sample.device {
        Some(device) => format!(
            "kernel `{}` (on {} device {device})",
            sample.name, sample.backend
        ),
        None => format!("kernel `{}`", sample.name),
    };
    if sample.state == State::Faulted {
        unhealthy.push(format!("{who} faulted"));
    }
    if sample.heartbeat != watchdog.heartbeat {
        watchdog.heartbeat = sample.heartbeat;
        watchdog.since = now;
    } else if lifecycle::processes_messages(sample.state) && sample.inbox_depth > 0 {
        let still = now.saturating_duration_since(watchdog.since);
        if still > policy.watchdog {
            stalled = true;
            unhealthy.push(format!(
                "{who} has {} messages waiting but its heartbeat has not moved for {still:.1?} \
                 (watchdog {:?}): its handler may be stuck; terminate it to get its messages back",
                sample.inbox_depth, policy.watchdog
            ));
        }
    } else {
        // Idle or not processing: a still heartbeat is expected; restart the clock.
        watchdog.since = now;
    }
    let fill = sample.inbox_utilisation;
    if fill > policy.inbox_threshold {
        degraded.push(format!(
            "the inbox of {who} is {:.0}% full (threshold {:.0}%)",
            fill * 100.0,
            policy.inbox_threshold * 100.0
        ));
    }
    let handled = sample.counters.processed.saturating_sub(watchdog.processed);
    let failed = sample.counters.errors.saturating_sub(watchdog.errors);
    watchdog.processed = sample.counters.processed;
    watchdog.errors = sample.counters.errors;
    if handled > 0 && failed as f64 / handled as f64 > policy.error_rate {
        degraded.push(format!(
            "{who} failed {failed} of the {handled} messages handled since the last check \
             (threshold {:.0}%)",
            policy.error_rate * 100.0
        ));
    }
    let status = if !unhealthy.is_empty() {
        HealthStatus::Unhealthy
    } else if !degraded.is_empty() {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    unhealthy.extend(degraded);
    Health {
        status,
        reasons: unhealthy,
        stalled,
    }
}

/// What the runtime does when a kernel faults (a panicking handler, a device error, or
/// its watchdog finding the heartbeat stalled while messages wait).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultPolicy {
    /// Report only (the default): the kernel stays `Faulted`, its health says why, and
    /// the host decides (terminate to collect its messages, or restart it).
    #[default]
    Report,
    /// Terminate it at once; every message it holds goes to the dead-letter sink with
    /// the fault as reason.
    Terminate,
    /// Restart it with exponential backoff, and open the circuit (leave it faulted,
    /// unhealthy) after too many faults in a row.
    Restart(RestartPolicy),
}

/// How [`FaultPolicy::Restart`] restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts in a row before the circuit opens (the kernel then stays faulted).
    pub max_restarts: u32,
    /// Wait before the first restart; doubled for each further one in a row.
    pub initial_backoff: Duration,
    /// Longest wait between restarts.
    pub max_backoff: Duration,
    /// A kernel that runs this long after a restart without faulting starts counting
    /// from zero again.
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The circuit breaker's book of one restartable unit (a CPU kernel, a device group):
/// restarts in a row and whether the circuit opened. Written once for every backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestartBook {
    /// Restarts in a row (from zero again after `reset_after` without a fault).
    pub in_a_row: u32,
    /// When the last restart happened.
    pub last_restart: Option<Instant>,
    /// The circuit opened: no more restarts until one by hand.
    pub circuit_open: bool,
}

impl RestartBook {
    /// The wait before the next restart under `policy`, or `None` when the circuit is
    /// open or opens now (`max_restarts` in a row reached).
    pub fn next_backoff(&mut self, policy: &RestartPolicy) -> Option<Duration> {
        if self.circuit_open {
            return None;
        }
        if self
            .last_restart
            .is_some_and(|t| t.elapsed() >= policy.reset_after)
        {
            self.in_a_row = 0;
        }
        if self.in_a_row >= policy.max_restarts {
            self.circuit_open = true;
            return None;
        }
        Some(policy.backoff(self.in_a_row))
    }

    /// Counts a restart made at `now`.
    pub fn record(&mut self, now: Instant) {
        self.in_a_row += 1;
        self.last_restart = Some(now);
    }
}

impl RestartPolicy {
    /// The wait before restart number `attempt` (0-based) in a row.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_backoff)
    }
}
