//! The live dashboard (feature `dashboard`): snapshots of every group and kernel of every
//! backend, a bounded history of them sampled about once a second, and the page that
//! draws them (served by [`crate::MetricsServer`] beside `/metrics`).
//!
//! A snapshot reads what [`crate::Runtime::prometheus_text`] reads: each kernel's
//! control-block sample (the same `sample` call, the same latency recorders) and the
//! relays' counters. Nothing is added to the message path; the sampler thread only reads.
//!
//! The JSON is documented on [`crate::Runtime::serve_dashboard`].

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gyre_runtime::abi::State;
use gyre_runtime::metrics::KernelSample;
use serde::Serialize;

use crate::runtime::Services;
use crate::Error;

/// How often the sampler takes a snapshot into the history.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How many samples the history keeps (the oldest goes first): five minutes at one a
/// second.
pub(crate) const HISTORY_LEN: usize = 300;

/// The page, its script, and uPlot (MIT licence, shipped beside it).
pub(crate) mod assets {
    /// The dashboard page.
    pub(crate) const INDEX_HTML: &str = include_str!("../assets/dashboard.html");
    /// The page's script.
    pub(crate) const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
    /// uPlot 1.6.32 (<https://github.com/leeoniya/uPlot>), from the npm package's `dist/`.
    pub(crate) const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
    /// uPlot's stylesheet.
    pub(crate) const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");
    /// uPlot's licence (MIT), served at `/uplot/LICENSE`.
    pub(crate) const UPLOT_LICENSE: &str = include_str!("../assets/uplot/LICENSE");
}

/// The whole runtime at one moment (the JSON of `/api/snapshot`, and each sample of
/// `/api/history`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Snapshot {
    /// The sample's number in the history (a snapshot taken on request carries the
    /// number of the latest sample, whose rates it shows).
    pub(crate) seq: u64,
    /// Milliseconds since the Unix epoch.
    pub(crate) time_ms: u64,
    /// Milliseconds the rates (`*_per_second`) were measured over; `null` before the
    /// second sample.
    pub(crate) interval_ms: Option<u64>,
    pub(crate) runtime: RuntimeView,
    pub(crate) groups: Vec<GroupView>,
    pub(crate) relays: Vec<RelayView>,
}

/// Runtime-wide numbers.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RuntimeView {
    pub(crate) backend: &'static str,
    pub(crate) workers: usize,
    pub(crate) worker_utilisation: f64,
    pub(crate) threads: usize,
    pub(crate) kernels: usize,
    pub(crate) dead_letters: u64,
}

/// One group: its kernels and the routes between them.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct GroupView {
    pub(crate) name: String,
    pub(crate) backend: &'static str,
    pub(crate) device: Option<u32>,
    /// `backend` with the device where the backend numbers devices, e.g. `cuda:0`.
    pub(crate) label: String,
    pub(crate) kernels: Vec<KernelView>,
    pub(crate) edges: Vec<EdgeView>,
}

/// One kernel.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct KernelView {
    pub(crate) name: String,
    pub(crate) id: u32,
    pub(crate) state: &'static str,
    pub(crate) fault: Option<String>,
    pub(crate) received: u64,
    pub(crate) processed: u64,
    pub(crate) emitted: u64,
    pub(crate) stalls: u64,
    pub(crate) errors: u64,
    pub(crate) inbox_depth: u32,
    pub(crate) inbox_capacity: u32,
    pub(crate) inbox_utilisation: f64,
    pub(crate) heartbeat: u32,
    pub(crate) ring_bytes: usize,
    /// Processed per second over the last ten seconds (`gyre_kernel_throughput_per_second`).
    pub(crate) throughput: f64,
    pub(crate) latency_samples: Option<u64>,
    pub(crate) latency_p50_ns: Option<u64>,
    pub(crate) latency_p99_ns: Option<u64>,
    pub(crate) received_per_second: Option<f64>,
    pub(crate) processed_per_second: Option<f64>,
    pub(crate) emitted_per_second: Option<f64>,
    pub(crate) stalls_per_second: Option<f64>,
    pub(crate) errors_per_second: Option<f64>,
}

/// A route from kernel `from` to kernel `to` of the same group (indices into its
/// `kernels`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct EdgeView {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) per_second: Option<f64>,
}

/// A route between backends, carried through the host.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RelayView {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) from_backend: &'static str,
    pub(crate) to_backend: &'static str,
    pub(crate) forwarded: u64,
    pub(crate) per_second: Option<f64>,
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Launched => "Launched",
        State::Active => "Active",
        State::Paused => "Paused",
        State::Draining => "Draining",
        State::Terminated => "Terminated",
        State::Faulted => "Faulted",
    }
}

fn kernel_view(sample: KernelSample, fault: Option<String>) -> KernelView {
    let c = sample.counters;
    KernelView {
        name: sample.name,
        id: sample.id,
        state: state_name(sample.state),
        fault: if sample.state == State::Faulted {
            Some(fault.unwrap_or_else(|| "the kernel reported a fault".to_owned()))
        } else {
            None
        },
        received: c.received,
        processed: c.processed,
        emitted: c.emitted,
        stalls: c.stalls,
        errors: c.errors,
        inbox_depth: sample.inbox_depth,
        inbox_capacity: sample.inbox_capacity,
        inbox_utilisation: sample.inbox_utilisation,
        heartbeat: sample.heartbeat,
        ring_bytes: sample.ring_bytes,
        throughput: sample.throughput,
        latency_samples: sample.latency.map(|l| l.count),
        latency_p50_ns: sample.latency.map(|l| l.p50),
        latency_p99_ns: sample.latency.map(|l| l.p99),
        received_per_second: None,
        processed_per_second: None,
        emitted_per_second: None,
        stalls_per_second: None,
        errors_per_second: None,
    }
}

fn label(backend: &str, device: Option<u32>) -> String {
    device.map_or_else(|| backend.to_owned(), |d| format!("{backend}:{d}"))
}

/// The CPU kernels the Prometheus text covers, by group: the groups launched through a
/// builder, then each kernel launched alone as a group of one.
fn cpu_groups(services: &Services) -> Vec<GroupView> {
    let cpu = services.cpu.held_kernels();
    let by_id: HashMap<u32, usize> = cpu
        .iter()
        .enumerate()
        .map(|(i, k)| (k.kernel_id(), i))
        .collect();
    let mut grouped = vec![false; cpu.len()];
    let mut members: Vec<(String, Vec<usize>)> = Vec::new();
    {
        let mut groups = services.cpu_groups.lock();
        groups.retain(|(_, ids)| ids.iter().any(|id| by_id.contains_key(id)));
        for (name, ids) in groups.iter() {
            let held: Vec<usize> = ids.iter().filter_map(|id| by_id.get(id).copied()).collect();
            for &i in &held {
                grouped[i] = true;
            }
            members.push((name.clone(), held));
        }
    }
    // A CPU kernel launched alone is a group of one, named after it.
    for (i, k) in cpu.iter().enumerate() {
        if !grouped[i] {
            members.push((k.name().to_owned(), vec![i]));
        }
    }
    let mut groups = Vec::new();
    for (name, kernels) in members {
        let position: HashMap<u32, usize> = kernels
            .iter()
            .enumerate()
            .map(|(at, &i)| (cpu[i].kernel_id(), at))
            .collect();
        let mut edges = Vec::new();
        for (from, &i) in kernels.iter().enumerate() {
            for to in cpu[i].routes().into_iter().flatten() {
                if let Some(&to) = position.get(&to) {
                    edges.push(EdgeView {
                        from,
                        to,
                        per_second: None,
                    });
                }
            }
        }
        groups.push(GroupView {
            name,
            backend: "cpu",
            device: None,
            label: "cpu".to_owned(),
            kernels: kernels
                .iter()
                .map(|&i| kernel_view(cpu[i].sample(), cpu[i].fault()))
                .collect(),
            edges,
        });
    }
    groups
}

/// Reads every kernel of every backend, grouped, from the same samples the Prometheus
/// text is made of. Rates are left unset.
fn gather(services: &Services, backend: &'static str) -> Snapshot {
    let mut groups = cpu_groups(services);
    for d in services.devices() {
        let fault = d.group.fault();
        let kernels = (0..d.names.len())
            .map(|k| {
                let mut sample = d.group.sample(k);
                sample.latency = d.latency[k].summary();
                kernel_view(sample, fault.clone())
            })
            .collect();
        groups.push(GroupView {
            name: d.name.clone(),
            backend: d.group.backend(),
            device: d.group.device(),
            label: label(d.group.backend(), d.group.device()),
            kernels,
            edges: d
                .edges
                .iter()
                .map(|&(from, to)| EdgeView {
                    from,
                    to,
                    per_second: None,
                })
                .collect(),
        });
    }
    let relays = services
        .relays
        .lock()
        .iter()
        .map(|r| RelayView {
            from: r.from.clone(),
            to: r.to.clone(),
            from_backend: r.from_backing.backend(),
            to_backend: r.to_backing.backend(),
            forwarded: r.forwarded(),
            per_second: None,
        })
        .collect();
    let kernels = groups.iter().map(|g| g.kernels.len()).sum();
    Snapshot {
        seq: 0,
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        interval_ms: None,
        runtime: RuntimeView {
            backend,
            workers: services.cpu.workers(),
            worker_utilisation: services.cpu.utilisation(),
            threads: services.cpu.threads_in_use(),
            kernels,
            dead_letters: services.dead_letter_total(),
        },
        groups,
        relays,
    }
}

/// The key a kernel keeps from one sample to the next.
fn kernel_key(group: &GroupView, k: &KernelView) -> (String, String, u32) {
    (group.name.clone(), k.name.clone(), k.id)
}

/// Sets `now`'s rates from the counters of `before`, taken `interval` earlier.
fn set_rates(now: &mut Snapshot, before: &Snapshot, interval: Duration) {
    let seconds = interval.as_secs_f64();
    if seconds <= 0.0 {
        return;
    }
    now.interval_ms = Some(interval.as_millis() as u64);
    let old: HashMap<_, &KernelView> = before
        .groups
        .iter()
        .flat_map(|g| g.kernels.iter().map(move |k| (kernel_key(g, k), k)))
        .collect();
    let rate = |new: u64, old: u64| Some(new.saturating_sub(old) as f64 / seconds);
    for g in &mut now.groups {
        let keys: Vec<_> = g.kernels.iter().map(|k| kernel_key(g, k)).collect();
        for (k, key) in g.kernels.iter_mut().zip(keys) {
            let Some(o) = old.get(&key) else { continue };
            k.received_per_second = rate(k.received, o.received);
            k.processed_per_second = rate(k.processed, o.processed);
            k.emitted_per_second = rate(k.emitted, o.emitted);
            k.stalls_per_second = rate(k.stalls, o.stalls);
            k.errors_per_second = rate(k.errors, o.errors);
        }
        // An edge's rate: the downstream kernel's intake when the edge is its only way
        // in, else the upstream kernel's output when the edge is its only way out (the
        // counters are per kernel, not per route).
        let ins = |to: usize| g.edges.iter().filter(|e| e.to == to).count();
        let outs = |from: usize| g.edges.iter().filter(|e| e.from == from).count();
        let rates: Vec<Option<f64>> = g
            .edges
            .iter()
            .map(|e| {
                if ins(e.to) == 1 {
                    g.kernels[e.to].received_per_second
                } else if outs(e.from) == 1 {
                    g.kernels[e.from].emitted_per_second
                } else {
                    None
                }
            })
            .collect();
        for (e, r) in g.edges.iter_mut().zip(rates) {
            e.per_second = r;
        }
    }
    for r in &mut now.relays {
        if let Some(o) = before
            .relays
            .iter()
            .find(|o| o.from == r.from && o.to == r.to)
        {
            r.per_second = rate(r.forwarded, o.forwarded);
        }
    }
}

/// The history and what a snapshot needs, shared by the server and the sampler.
#[derive(Debug)]
pub(crate) struct Dashboard {
    services: Arc<Services>,
    backend: &'static str,
    history: parking_lot::Mutex<History>,
}

#[derive(Debug, Default)]
struct History {
    samples: VecDeque<(Instant, Arc<Snapshot>)>,
    taken: u64,
}

impl Dashboard {
    pub(crate) fn new(services: Arc<Services>, backend: &'static str) -> Self {
        Self {
            services,
            backend,
            history: parking_lot::Mutex::new(History::default()),
        }
    }

    /// Takes one sample into the history (the sampler calls it once a second).
    pub(crate) fn sample(&self) {
        let now = Instant::now();
        let mut snapshot = gather(&self.services, self.backend);
        let mut history = self.history.lock();
        if let Some((then, before)) = history.samples.back() {
            set_rates(&mut snapshot, before, now.saturating_duration_since(*then));
        }
        history.taken += 1;
        snapshot.seq = history.taken;
        if history.samples.len() == HISTORY_LEN {
            history.samples.pop_front();
        }
        history.samples.push_back((now, Arc::new(snapshot)));
    }

    /// The runtime now, with the rates of the latest sample.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = gather(&self.services, self.backend);
        let history = self.history.lock();
        if let Some((_, latest)) = history.samples.back() {
            snapshot.seq = latest.seq;
            snapshot.interval_ms = latest.interval_ms;
            let rates: HashMap<_, &KernelView> = latest
                .groups
                .iter()
                .flat_map(|g| g.kernels.iter().map(move |k| (kernel_key(g, k), k)))
                .collect();
            for g in &mut snapshot.groups {
                let keys: Vec<_> = g.kernels.iter().map(|k| kernel_key(g, k)).collect();
                for (k, key) in g.kernels.iter_mut().zip(keys) {
                    if let Some(o) = rates.get(&key) {
                        k.received_per_second = o.received_per_second;
                        k.processed_per_second = o.processed_per_second;
                        k.emitted_per_second = o.emitted_per_second;
                        k.stalls_per_second = o.stalls_per_second;
                        k.errors_per_second = o.errors_per_second;
                    }
                }
                if let Some(old) = latest.groups.iter().find(|o| o.name == g.name) {
                    for e in &mut g.edges {
                        e.per_second = old
                            .edges
                            .iter()
                            .find(|o| o.from == e.from && o.to == e.to)
                            .and_then(|o| o.per_second);
                    }
                }
            }
            for r in &mut snapshot.relays {
                r.per_second = latest
                    .relays
                    .iter()
                    .find(|o| o.from == r.from && o.to == r.to)
                    .and_then(|o| o.per_second);
            }
        }
        snapshot
    }

    /// `/api/snapshot`'s body.
    pub(crate) fn snapshot_json(&self) -> String {
        serde_json::to_string(&self.snapshot()).unwrap_or_else(|e| {
            format!("{{\"error\":\"the snapshot could not be serialised: {e}\"}}")
        })
    }

    /// `/api/history`'s body: the samples numbered above `after`, oldest first.
    pub(crate) fn history_json(&self, after: u64) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            interval_ms: u64,
            capacity: usize,
            samples: Vec<&'a Snapshot>,
        }
        let history = self.history.lock();
        let body = Body {
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            capacity: HISTORY_LEN,
            samples: history
                .samples
                .iter()
                .map(|(_, s)| &**s)
                .filter(|s| s.seq > after)
                .collect(),
        };
        serde_json::to_string(&body).unwrap_or_else(|e| {
            format!("{{\"error\":\"the history could not be serialised: {e}\"}}")
        })
    }
}

/// The thread that samples the runtime into the history; stopped and joined when
/// dropped.
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// The thread's name (what `/proc/self/task/*/comm` shows).
    pub(crate) const THREAD_NAME: &'static str = "gyre-dashboard";

    pub(crate) fn start(dashboard: Arc<Dashboard>) -> Result<Self, Error> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(Self::THREAD_NAME.into())
            .spawn(move || loop {
                dashboard.sample();
                match stopped.recv_timeout(SAMPLE_INTERVAL) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // Told to stop, or the server is gone.
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| {
                Error::Launch(format!(
                    "could not start the dashboard's sampler thread: {e}"
                ))
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // Disconnecting wakes the thread at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the dashboard's sampler thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_samples_up_to_its_bound() {
        let runtime = crate::Runtime::builder().workers(1).build().unwrap();
        let dashboard = Dashboard::new(runtime.services().clone(), "cpu");
        for _ in 0..HISTORY_LEN + 10 {
            dashboard.sample();
        }
        let history: serde_json::Value = serde_json::from_str(&dashboard.history_json(0)).unwrap();
        let seqs: Vec<u64> = history["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs.len(), HISTORY_LEN);
        assert_eq!(seqs[0], 11, "the oldest ten went first");
        assert_eq!(*seqs.last().unwrap(), (HISTORY_LEN + 10) as u64);
        let after: serde_json::Value =
            serde_json::from_str(&dashboard.history_json(HISTORY_LEN as u64 + 8)).unwrap();
        assert_eq!(after["samples"].as_array().unwrap().len(), 2);
    }
}
