//! Metrics: what the control blocks say, exported as Prometheus text.
//!
//! Every counter comes from a kernel's control block (the words the kernel side writes,
//! widened to u64 by the host), not from host-side bookkeeping, so the same exporter
//! serves every backend. Rendering goes through the `metrics` facade into a
//! `metrics-exporter-prometheus` recorder made for the call: series of kernels that are
//! gone disappear, and nothing is installed as the process-global recorder.

use metrics::{counter, describe_counter, describe_gauge, gauge, Label};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::abi::State;
use crate::control::Counters;

/// One kernel's numbers at one moment.
#[derive(Clone, Debug)]
pub struct KernelSample {
    /// The kernel's name (label `kernel`).
    pub name: String,
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
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Launched => "launched",
        State::Active => "active",
        State::Paused => "paused",
        State::Draining => "draining",
        State::Terminated => "terminated",
        State::Faulted => "faulted",
    }
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
            let labels = vec![
                Label::new("kernel", k.name.clone()),
                Label::new("id", k.id.to_string()),
            ];
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
            for state in State::ALL {
                let mut with_state = labels.clone();
                with_state.push(Label::new("state", state_name(state)));
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
        counter!("gyre_runtime_processed_total")
            .absolute(kernels.iter().map(|k| k.counters.processed).sum());
    });
    handle.render()
}
