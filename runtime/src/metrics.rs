//! Metrics: what the control blocks say, exported as Prometheus text.
//!
//! Every counter comes from a kernel's control block (the words the kernel side writes,
//! widened to u64 by the host), not from host-side bookkeeping, so the same exporter
//! serves every backend. Rendering goes through the `metrics` facade into a
//! `metrics-exporter-prometheus` recorder made for the call: series of kernels that are
//! gone disappear, and nothing is installed as the process-global recorder.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, gauge, Label};
use metrics_exporter_prometheus::PrometheusBuilder;
use parking_lot::Mutex;

use crate::abi::State;
use crate::control::Counters;

/// One kernel's numbers at one moment.
#[derive(Clone, Debug)]
pub struct KernelSample {
    /// The kernel's name (label `kernel`).
    pub name: String,
    /// The backend it runs on (label `backend`): `cpu`, `cuda`, `cuda-emulated`, `wgpu`.
    pub backend: &'static str,
    /// The ordinal of the device it runs on (label `device`, present only when set): set
    /// on a backend that numbers its devices (CUDA), `None` on the CPU and wgpu.
    pub device: Option<u32>,
    /// The kernel's id (label `id`, which tells apart kernels of the same name).
    pub id: u32,
    /// Its state.
    pub state: State,
    /// Its counters, widened.
    pub counters: Counters<u64>,
    /// Messages waiting in its inbox.
    pub inbox_depth: u32,
    /// Slots of each of its inbox rings (the shared ring and the single-producer lane).
    pub inbox_capacity: u32,
    /// Fill level of its fuller inbox ring, `0..=1`: the one that makes senders wait.
    pub inbox_utilisation: f64,
    /// Its heartbeat word.
    pub heartbeat: u32,
    /// Bytes of ring memory it holds.
    pub ring_bytes: usize,
    /// Time spent in turns that handled messages, in nanoseconds; `None` on a backend
    /// that cannot measure it (a device without clocks in the control block): the
    /// series is then absent, never a zero.
    pub busy_ns: Option<u64>,
    /// Messages processed per second over the last [`THROUGHPUT_WINDOW`], measured on
    /// the host from the control block's `processed` counter (every backend).
    pub throughput: f64,
    /// End-to-end latency of what came back to the host through this kernel, if any
    /// was measured.
    pub latency: Option<LatencySummary>,
}

/// Nanoseconds on the runtime's monotonic clock (since the first call in the process):
/// what a timed message carries in its correlation id (see [`crate::abi::KIND_TIMED`]).
pub fn clock_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Nanoseconds on a clock that is cheap to read and ticks coarsely: Linux's
/// `CLOCK_MONOTONIC_COARSE` (a tick every few milliseconds, read without a system call
/// and without reading the time-stamp counter), elsewhere the precise clock.
///
/// Summing differences of it over many short intervals still estimates their total:
/// an interval shorter than a tick counts as a whole tick with the chance that it
/// straddles a tick boundary, so the expected sum is the true one. That is how a CPU
/// kernel's busy time is kept without two precise clock reads per turn (a turn of one
/// message costs less than one such read).
#[inline]
pub(crate) fn coarse_clock_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec; the clock id is a constant Linux
        // has had since 2.6.32.
        let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut now) } == 0;
        if ok {
            return now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        }
    }
    clock_ns()
}

/// One host-sent message in this many (by ring position, so no shared counter: the last
/// position of each run of this many, so a kernel that only ever gets a few messages
/// never allocates a histogram) is timed for the end-to-end latency histogram.
pub const LATENCY_SAMPLE_EVERY: u32 = 64;

/// How far back the sliding-window throughput looks.
pub const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

/// Quantiles of a latency histogram, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// An HDR histogram of latencies (1 ns to 1 hour, 2 significant digits: quantiles within
/// 1 %), shared by the threads that record into it. Allocated on the first record (it is
/// tens of KB), so the thousands of kernels that never see a latency cost nothing.
#[derive(Debug, Default)]
pub struct LatencyRecorder {
    histogram: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one latency in nanoseconds (clamped into the histogram's range).
    pub fn record(&self, ns: u64) {
        self.histogram
            .lock()
            .get_or_insert_with(|| {
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 2)
                    .expect("static histogram bounds are valid")
            })
            .saturating_record(ns.max(1));
    }

    /// The quantiles so far, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        let h = self.histogram.lock();
        let h = h.as_ref().filter(|h| !h.is_empty())?;
        Some(LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }

    /// Forgets everything recorded.
    pub fn reset(&self) {
        *self.histogram.lock() = None;
    }
}

/// A sliding window of (time, processed) readings, for throughput.
#[derive(Debug)]
pub struct ThroughputWindow {
    readings: Mutex<VecDeque<(Instant, u64)>>,
}

impl ThroughputWindow {
    /// A window whose first reading is `0` processed at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            readings: Mutex::new(VecDeque::from([(start, 0)])),
        }
    }

    /// Adds a reading and returns messages per second since the oldest reading still
    /// inside the window (or the newest one just outside it, so a rare reader still
    /// gets a rate).
    pub fn rate(&self, now: Instant, processed: u64) -> f64 {
        let mut readings = self.readings.lock();
        while readings.len() > 1
            && readings
                .get(1)
                .is_some_and(|&(t, _)| now.saturating_duration_since(t) > THROUGHPUT_WINDOW)
        {
            readings.pop_front();
        }
        if readings.len() >= 64 {
            // Keep the window small: drop a middle reading.
            let middle = readings.len() / 2;
            readings.remove(middle);
        }
        readings.push_back((now, processed));
        let (t0, p0) = readings[0];
        let seconds = now.saturating_duration_since(t0).as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        processed.saturating_sub(p0) as f64 / seconds
    }
}

/// The runtime's own numbers at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuntimeSample {
    /// Worker threads of the pool.
    pub workers: usize,
    /// Share of worker time spent running kernels since start, `0..=1`.
    pub worker_utilisation: f64,
    /// Threads in use: workers and dedicated kernels.
    pub threads: usize,
    /// Bytes of ring memory held by all kernels.
    pub ring_bytes: usize,
    /// Messages ever sent to the dead-letter sink.
    pub dead_letters: u64,
}

fn describe() {
    describe_counter!(
        "gyre_kernel_received_total",
        "Messages a kernel took from its inboxes."
    );
    describe_counter!(
        "gyre_kernel_processed_total",
        "Messages whose handler returned."
    );
    describe_counter!("gyre_kernel_emitted_total", "Messages a kernel emitted.");
    describe_counter!(
        "gyre_kernel_stalls_total",
        "Times a kernel found an output ring full."
    );
    describe_counter!(
        "gyre_kernel_errors_total",
        "Messages whose handler reported an error."
    );
    describe_gauge!(
        "gyre_kernel_inbox_depth",
        "Messages waiting in a kernel's inbox."
    );
    describe_gauge!(
        "gyre_kernel_inbox_utilisation",
        "Fill level of a kernel's fuller inbox ring (shared ring or single-producer lane)."
    );
    describe_gauge!("gyre_kernel_heartbeat", "A kernel's heartbeat word.");
    describe_gauge!(
        "gyre_kernel_ring_bytes",
        "Bytes of ring memory a kernel holds."
    );
    describe_gauge!(
        "gyre_kernel_state",
        "1 for the state a kernel is in, 0 for the others."
    );
    describe_counter!(
        "gyre_kernel_handler_microseconds_total",
        "Time a kernel spent in turns that handled messages (handler calls and ring work)."
    );
    describe_gauge!(
        "gyre_kernel_throughput_per_second",
        "Messages processed per second over a sliding window of 10 s."
    );
    describe_gauge!(
        "gyre_kernel_latency_seconds",
        "End-to-end latency quantiles (HDR histogram) of requests and host-sent messages that came back through this kernel."
    );
    describe_counter!(
        "gyre_kernel_latency_samples_total",
        "Latencies recorded into a kernel's histogram."
    );
    describe_counter!(
        "gyre_runtime_dead_letters_total",
        "Messages sent to the dead-letter sink."
    );
    describe_gauge!("gyre_runtime_kernels", "Kernels the runtime holds.");
    describe_gauge!("gyre_runtime_workers", "Worker threads of the pool.");
    describe_gauge!(
        "gyre_runtime_worker_utilisation",
        "Share of worker time spent in kernels."
    );
    describe_gauge!(
        "gyre_runtime_threads",
        "Threads in use: workers and dedicated kernels."
    );
    describe_gauge!(
        "gyre_runtime_ring_bytes",
        "Bytes of ring memory held by all kernels."
    );
    describe_counter!(
        "gyre_runtime_processed_total",
        "Messages processed by all kernels."
    );
}

/// Renders the Prometheus text exposition (version 0.0.4) of a runtime and its kernels.
pub fn prometheus_text(runtime: &RuntimeSample, kernels: &[KernelSample]) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        for k in kernels {
            let mut labels = vec![
                Label::new("kernel", k.name.clone()),
                Label::new("id", k.id.to_string()),
                Label::new("backend", k.backend),
            ];
            if let Some(device) = k.device {
                labels.push(Label::new("device", device.to_string()));
            }
            let c = &k.counters;
            counter!("gyre_kernel_received_total", labels.clone()).absolute(c.received);
            counter!("gyre_kernel_processed_total", labels.clone()).absolute(c.processed);
            counter!("gyre_kernel_emitted_total", labels.clone()).absolute(c.emitted);
            counter!("gyre_kernel_stalls_total", labels.clone()).absolute(c.stalls);
            counter!("gyre_kernel_errors_total", labels.clone()).absolute(c.errors);
            gauge!("gyre_kernel_inbox_depth", labels.clone()).set(f64::from(k.inbox_depth));
            gauge!("gyre_kernel_inbox_utilisation", labels.clone()).set(k.inbox_utilisation);
            gauge!("gyre_kernel_heartbeat", labels.clone()).set(f64::from(k.heartbeat));
            gauge!("gyre_kernel_ring_bytes", labels.clone()).set(k.ring_bytes as f64);
            if let Some(busy) = k.busy_ns {
                counter!("gyre_kernel_handler_microseconds_total", labels.clone())
                    .absolute(busy / 1_000);
            }
            gauge!("gyre_kernel_throughput_per_second", labels.clone()).set(k.throughput);
            if let Some(l) = &k.latency {
                counter!("gyre_kernel_latency_samples_total", labels.clone()).absolute(l.count);
                for (q, ns) in [
                    ("0.5", l.p50),
                    ("0.9", l.p90),
                    ("0.99", l.p99),
                    ("0.999", l.p999),
                ] {
                    let mut with_q = labels.clone();
                    with_q.push(Label::new("quantile", q));
                    gauge!("gyre_kernel_latency_seconds", with_q).set(ns as f64 / 1e9);
                }
            }
            for state in State::ALL {
                let mut with_state = labels.clone();
                with_state.push(Label::new("state", crate::lifecycle::state_name(state)));
                gauge!("gyre_kernel_state", with_state).set(if state == k.state {
                    1.0
                } else {
                    0.0
                });
            }
        }
        gauge!("gyre_runtime_kernels").set(kernels.len() as f64);
        gauge!("gyre_runtime_workers").set(runtime.workers as f64);
        gauge!("gyre_runtime_worker_utilisation").set(runtime.worker_utilisation);
        gauge!("gyre_runtime_threads").set(runtime.threads as f64);
        gauge!("gyre_runtime_ring_bytes").set(runtime.ring_bytes as f64);
        counter!("gyre_runtime_dead_letters_total").absolute(runtime.dead_letters);
        counter!("gyre_runtime_processed_total")
            .absolute(kernels.iter().map(|k| k.counters.processed).sum());
    });
    handle.render()
}
