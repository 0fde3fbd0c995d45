//! The dashboard's JSON (feature `dashboard`): `/api/snapshot` says what
//! `prometheus_text()` says at the same moment, faults show with their reason, the page
//! and uPlot (with its licence) are served, the history fills about once a second, and
//! the sampler thread ends when the server is dropped. With feature `cuda` or `wgpu`,
//! one dashboard shows a runtime's CPU groups beside its device groups.
//!
//! Every client talks to 127.0.0.1 on a port the OS picked, with socket timeouts, so a
//! server that misbehaves fails a test rather than hanging it. The tests take turns
//! (`SERIAL`): one of them counts the process's sampler threads.
#![cfg(feature = "dashboard")]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gyre::{KernelSpec, Runtime};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::Value as Json;

#[path = "support/dashboard.rs"]
mod dash;
use dash::{faulted_kernel, get, get_json, group_of, kernel, FAULT_REASON};

/// The tests of this file take turns: the sampler test counts threads by name.
static SERIAL: Mutex<()> = Mutex::new(());

#[cfg(any(feature = "cuda", feature = "wgpu"))]
#[path = "support/backends.rs"]
mod backends;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
}

fn number(sample: &Sample) -> f64 {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{} has an unexpected type: {other:?}", sample.metric),
    }
}

/// The value of `metric` for the kernel with id `id`, with `extra` labels.
fn series(scrape: &Scrape, metric: &str, id: u64, extra: &[(&str, &str)]) -> Option<f64> {
    let id = id.to_string();
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.get("id") == Some(id.as_str())
                && extra.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(number)
}

/// Checks every number of every kernel of `snapshot` against the Prometheus text: the
/// counters, inbox gauges, ring bytes, state and latency quantiles.
#[allow(clippy::float_cmp)] // the same numbers, read from the same counters: exactly equal
fn assert_agrees(snapshot: &Json, text: &str) {
    let scrape = scrape(text);
    let mut kernels = 0u32;
    for g in snapshot["groups"].as_array().unwrap() {
        for k in g["kernels"].as_array().unwrap() {
            kernels += 1;
            let id = k["id"].as_u64().unwrap();
            let name = k["name"].as_str().unwrap();
            let backend = g["backend"].as_str().unwrap();
            let labels = [("kernel", name), ("backend", backend)];
            for (field, metric) in [
                ("received", "gyre_kernel_received_total"),
                ("processed", "gyre_kernel_processed_total"),
                ("emitted", "gyre_kernel_emitted_total"),
                ("stalls", "gyre_kernel_stalls_total"),
                ("errors", "gyre_kernel_errors_total"),
                ("inbox_depth", "gyre_kernel_inbox_depth"),
                ("inbox_utilisation", "gyre_kernel_inbox_utilisation"),
                ("ring_bytes", "gyre_kernel_ring_bytes"),
            ] {
                let exported = series(&scrape, metric, id, &labels)
                    .unwrap_or_else(|| panic!("no {metric} for {name} (id {id}) in:\n{text}"));
                assert_eq!(
                    k[field].as_f64().unwrap(),
                    exported,
                    "{name}.{field} against {metric}"
                );
            }
            let state = k["state"].as_str().unwrap().to_lowercase();
            assert_eq!(
                series(
                    &scrape,
                    "gyre_kernel_state",
                    id,
                    &[("state", &state), labels[0], labels[1]]
                ),
                Some(1.0),
                "{name} is {state} in the snapshot"
            );
            for (field, q) in [("latency_p50_ns", "0.5"), ("latency_p99_ns", "0.99")] {
                let exported = series(
                    &scrape,
                    "gyre_kernel_latency_seconds",
                    id,
                    &[("quantile", q), labels[0], labels[1]],
                );
                match k[field].as_u64() {
                    None => assert_eq!(exported, None, "{name}.{field} is null"),
                    Some(ns) => {
                        let seconds = exported.unwrap_or_else(|| panic!("no latency for {name}"));
                        assert!((seconds * 1e9 - ns as f64).abs() < 1.0, "{name}.{field}");
                    }
                }
            }
            assert_eq!(
                k["latency_samples"].as_f64(),
                series(&scrape, "gyre_kernel_latency_samples_total", id, &labels),
                "{name}.latency_samples"
            );
        }
    }
    let total = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gyre_runtime_kernels")
        .map(number);
    assert_eq!(
        total,
        Some(f64::from(kernels)),
        "every kernel is in the snapshot"
    );
    assert_eq!(
        snapshot["runtime"]["kernels"].as_u64(),
        Some(u64::from(kernels))
    );
}

#[test]
fn the_snapshot_agrees_with_prometheus_text_taken_at_the_same_moment() {
    let _serial = serial();
    let rt = Runtime::builder().workers(2).build().unwrap();
    let server = rt.serve_dashboard(local()).unwrap();
    let flow = rt
        .pipeline::<u64>("flow")
        .stage(KernelSpec::<u64, u64>::new("double").cpu(|x, out| Ok(out.emit(x * 2)?)))
        .stage(KernelSpec::<u64, u64>::new("quarters").cpu(|x, out| {
            if x % 4 == 0 {
                out.emit(*x)?;
            }
            Ok(())
        }))
        .stage(KernelSpec::<u64, u64>::new("last").cpu(|x, out| Ok(out.emit(x + 1)?)))
        .launch()
        .unwrap();
    flow.activate().unwrap();
    for x in 0..2_000u64 {
        flow.send(x).unwrap();
    }
    for _ in 0..1_000 {
        flow.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    // Queued, never activated: a non-zero inbox depth that stays put.
    let parked = rt
        .launch(KernelSpec::<u64, u64>::new("parked").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    for x in 0..5 {
        parked.send(x).unwrap();
    }
    let _broken = faulted_kernel(&rt, "broken");
    // Quiescent: every message sent came back or waits in `parked`'s inbox.
    let snapshot = get_json(server.local_addr(), "/api/snapshot");
    let text = rt.prometheus_text();
    assert_agrees(&snapshot, &text);

    let group = group_of(&snapshot, "flow");
    assert_eq!(group["label"], "cpu");
    let names: Vec<_> = group["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert_eq!(names, ["double", "quarters", "last"]);
    let edges: Vec<_> = group["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["from"].as_u64().unwrap(), e["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(edges, [(0, 1), (1, 2)]);
    assert_eq!(kernel(&snapshot, "flow", "double")["processed"], 2_000);
    assert_eq!(kernel(&snapshot, "flow", "quarters")["emitted"], 1_000);
    assert_eq!(kernel(&snapshot, "flow", "last")["state"], "Active");
    // A kernel launched alone is a group of one.
    let parked = kernel(&snapshot, "parked", "parked");
    assert_eq!(parked["state"], "Launched");
    assert_eq!(parked["inbox_depth"], 5);
    assert_eq!(parked["fault"], Json::Null);
    let broken = kernel(&snapshot, "broken", "broken");
    assert_eq!(broken["state"], "Faulted");
    let reason = broken["fault"]
        .as_str()
        .expect("a faulted kernel has a reason");
    assert!(
        reason.contains(FAULT_REASON),
        "the fault says why: {reason}"
    );

    // The same server still serves /metrics as before.
    let metrics = get(server.local_addr(), "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .content_type
        .starts_with("text/plain; version=0.0.4"));
    assert!(metrics.body.contains("gyre_kernel_processed_total{"));
}

#[test]
fn the_page_its_script_and_uplot_with_its_licence_are_served() {
    let _serial = serial();
    let rt = Runtime::builder().workers(1).build().unwrap();
    let server = rt.serve_dashboard(local()).unwrap();
    let addr = server.local_addr();
    for (path, content_type, needle) in [
        ("/", "text/html", "gyre-test-state"),
        ("/dashboard", "text/html", "/uplot/uPlot.iife.min.js"),
        ("/dashboard.js", "text/javascript", "/api/snapshot"),
        ("/uplot/uPlot.iife.min.js", "text/javascript", "uPlot"),
        ("/uplot/uPlot.min.css", "text/css", ".uplot"),
        ("/uplot/LICENSE", "text/plain", "The MIT License"),
    ] {
        let answer = get(addr, path);
        assert_eq!(answer.status, 200, "{path}");
        assert!(
            answer.content_type.starts_with(content_type),
            "{path}: {}",
            answer.content_type
        );
        assert!(answer.body.contains(needle), "{path} has {needle}");
    }
    assert_eq!(get(addr, "/nothing-here").status, 404);
    // A metrics-only server has no dashboard.
    let metrics_only = rt.serve_metrics(local()).unwrap();
    assert_eq!(get(metrics_only.local_addr(), "/api/snapshot").status, 404);
    assert_eq!(get(metrics_only.local_addr(), "/").status, 404);
}

/// The threads of this process named like the dashboard's sampler.
#[cfg(target_os = "linux")]
fn sampler_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "gyre-dashboard")
        .count()
}

#[test]
fn the_history_fills_once_a_second_and_its_sampler_ends_with_the_server() {
    let _serial = serial();
    let rt = Runtime::builder().workers(1).build().unwrap();
    let echo = rt
        .launch(KernelSpec::<u64, u64>::new("echo").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    echo.activate().unwrap();
    #[cfg(target_os = "linux")]
    assert_eq!(sampler_threads(), 0, "no sampler before the server");
    let server = rt.serve_dashboard(local()).unwrap();
    let addr = server.local_addr();
    let started = Instant::now();
    let mut sent = 0u64;
    let history = loop {
        echo.send(sent).unwrap();
        echo.recv_timeout(Duration::from_secs(5)).unwrap();
        sent += 1;
        let history = get_json(addr, "/api/history");
        if history["samples"].as_array().unwrap().len() >= 3 {
            break history;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "three samples within 15 s: {history}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The sampler names its thread when it starts; it has, as it took samples.
    #[cfg(target_os = "linux")]
    assert_eq!(sampler_threads(), 1, "one sampler beside the server");
    assert_eq!(history["capacity"], 300);
    assert_eq!(history["interval_ms"], 1000);
    let samples = history["samples"].as_array().unwrap();
    let seqs: Vec<u64> = samples.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "numbered in order: {seqs:?}"
    );
    assert_eq!(
        samples[0]["interval_ms"],
        Json::Null,
        "the first sample has no rates"
    );
    let interval = samples[1]["interval_ms"]
        .as_u64()
        .expect("the second sample has rates");
    assert!(
        (900..=5_000).contains(&interval),
        "about a second apart: {interval} ms"
    );
    assert!(kernel(&samples[1], "echo", "echo")["processed_per_second"].is_number());
    let after = get_json(addr, &format!("/api/history?after={}", seqs[0]));
    assert!(after["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["seq"].as_u64() > Some(seqs[0])));

    let dropping = Instant::now();
    drop(server);
    assert!(
        dropping.elapsed() < Duration::from_secs(2),
        "the server and its sampler stop promptly: {:?}",
        dropping.elapsed()
    );
    #[cfg(target_os = "linux")]
    assert_eq!(
        sampler_threads(),
        0,
        "the sampler thread was joined with the server"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );
}

/// One runtime per device backend built here (the CUDA emulation, wgpu on a software
/// adapter), built with that backend: its dashboard shows a CPU group and a device
/// group side by side, labelled with their backends, and their numbers agree with the
/// Prometheus text.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
#[test]
fn cpu_and_device_groups_show_in_one_dashboard() {
    use gyre::builtins::{Builtin, Record};
    use gyre::Backend;

    let _serial = serial();
    let mut labels = Vec::new();
    for (name, rt) in backends::runtimes()
        .into_iter()
        .filter(|(n, _)| *n != "cpu")
    {
        let mut host = rt.group("host");
        host.backend(Backend::Cpu);
        host.add(
            KernelSpec::<Record, Record>::new("cpu-scale")
                .builtin(Builtin::Affine { a: 2.0, b: 0.0 }),
        );
        let host = host.launch().unwrap();
        host.activate().unwrap();
        let _device = scale_then_shift(rt.group("device"), 200).unwrap();
        let server = rt.serve_dashboard(local()).unwrap();
        let snapshot = get_json(server.local_addr(), "/api/snapshot");
        assert_agrees(&snapshot, &rt.prometheus_text());
        assert_eq!(group_of(&snapshot, "host")["label"], "cpu", "{name}");
        let on_device = group_of(&snapshot, "device");
        let label = on_device["backend"].as_str().unwrap().to_owned();
        assert_eq!(
            kernel(&snapshot, "device", "scale")["processed"],
            200,
            "{name}"
        );
        assert_eq!(
            kernel(&snapshot, "device", "shift")["emitted"],
            200,
            "{name}"
        );
        assert_eq!(on_device["edges"][0]["from"], 0);
        assert_eq!(on_device["edges"][0]["to"], 1);
        assert_eq!(kernel(&snapshot, "device", "scale")["state"], "Active");
        labels.push(label);
    }
    #[cfg(feature = "cuda")]
    if !labels.iter().any(|l| l == "cuda-emulated") {
        backends::skip::skip(
            "the CUDA emulation's dashboard",
            &"no cuda-emulated runtime built",
        );
    }
    #[cfg(feature = "wgpu")]
    if !labels.iter().any(|l| l == "wgpu") {
        backends::skip::skip("wgpu's dashboard", &"no wgpu runtime built");
    }
}

/// One CPU runtime with a CPU group, a group on the CUDA emulation and a group on wgpu
/// (a software adapter), each a two-stage pipeline that has carried 100 records: the
/// dashboard shows all three, labelled `cpu`, `cuda-emulated` and `wgpu`, with their
/// edges, and its numbers agree with the Prometheus text taken at the same moment.
#[cfg(all(feature = "cuda", feature = "wgpu"))]
#[test]
fn cpu_cuda_emulated_and_wgpu_groups_show_in_one_runtime() {
    use gyre::Backend;

    let _serial = serial();
    let rt = Runtime::builder().backend(Backend::Cpu).build().unwrap();
    let mut groups = Vec::new();
    for (name, backend) in [
        ("on-cpu", Backend::Cpu),
        ("on-cuda-emulated", Backend::CudaEmulated),
        ("on-wgpu", Backend::WgpuSoftware),
    ] {
        let mut g = rt.group(name);
        g.backend(backend);
        match scale_then_shift(g, 100) {
            Ok(group) => groups.push(group),
            Err(e) => {
                backends::skip::skip(&format!("the {name} group"), &e);
                return;
            }
        }
    }
    let server = rt.serve_dashboard(local()).unwrap();
    let snapshot = get_json(server.local_addr(), "/api/snapshot");
    assert_agrees(&snapshot, &rt.prometheus_text());
    for (name, label) in [
        ("on-cpu", "cpu"),
        ("on-cuda-emulated", "cuda-emulated"),
        ("on-wgpu", "wgpu"),
    ] {
        let g = group_of(&snapshot, name);
        assert_eq!(g["backend"], label, "{name}: {g}");
        assert_eq!(g["edges"][0]["from"], 0, "{name}");
        assert_eq!(g["edges"][0]["to"], 1, "{name}");
        assert_eq!(kernel(&snapshot, name, "scale")["processed"], 100, "{name}");
        assert_eq!(kernel(&snapshot, name, "shift")["emitted"], 100, "{name}");
        assert_eq!(
            kernel(&snapshot, name, "shift")["state"],
            "Active",
            "{name}"
        );
    }
    drop(server);
    drop(groups);
}

/// Launches `g` as `scale` (2x + 1) routed into `shift` (x − 1), activates it and carries
/// `n` records through it.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn scale_then_shift(mut g: gyre::GroupBuilder<'_>, n: u32) -> Result<gyre::Group, gyre::Error> {
    use gyre::builtins::{Builtin, Record};
    let scale = g.add(
        KernelSpec::<Record, Record>::new("scale")
            .no_host_output()
            .builtin(Builtin::Affine { a: 2.0, b: 1.0 }),
    );
    let shift = g.add(
        KernelSpec::<Record, Record>::new("shift").builtin(Builtin::Affine { a: 1.0, b: -1.0 }),
    );
    g.route(scale, 0, shift);
    let group = g.launch()?;
    group.activate()?;
    let (scale, shift) = (group.kernel(scale)?, group.kernel(shift)?);
    for i in 0..n {
        scale.send(Record {
            key: i,
            seq: i,
            value: i as f32,
            aux: 0,
        })?;
    }
    for _ in 0..n {
        shift.recv_timeout(Duration::from_secs(30))?;
    }
    Ok(group)
}
