//! Several CUDA devices in one runtime, on the host emulation's two devices
//! (`Backend::CudaEmulated`, ordinals 0 and 1): groups placed with
//! `GroupBuilder::device`, a route between devices relayed through the host and counted
//! as relayed, device labels in metrics and health, and the errors for an ordinal the
//! backend does not have. The driver path (`Backend::Cuda` on several GPUs) opens its
//! devices the same way but is not run here: no machine of this project's CI has two
//! GPUs. Skipped (with a message) when the emulation cannot run here (no g++), except
//! under `cargo xtask ci`, where that is a failure.
#![cfg(feature = "cuda")]
// The values compared are message counts: small integers, exact in f64.
#![allow(clippy::float_cmp)]

#[path = "../../runtime/tests/support/skip.rs"]
mod support;

use std::time::Duration;

use gyre::{Backend, Error, HealthPolicy, HealthStatus, KernelSpec, Runtime};
use prometheus_parse::{Scrape, Value};

const TIMEOUT: Duration = Duration::from_secs(30);

fn emulated() -> Option<Runtime> {
    match Runtime::builder()
        .backend(Backend::CudaEmulated)
        .workers(1)
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            support::skip("the multi-device tests on the emulation", &e);
            None
        }
    }
}

/// Adds one to a `u32`, in CUDA C.
const INC_CUDA: &str = r"
__device__ int inc_u32(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    gyre_u32 x = *(const gyre_u32 *)msg + 1u;
    return gyre_emit(ctx, 0u, &x, sizeof x);
}
";

/// Doubles a `u32`, in CUDA C.
const DOUBLE_CUDA: &str = r"
__device__ int double_u32(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    gyre_u32 x = *(const gyre_u32 *)msg * 2u;
    return gyre_emit(ctx, 0u, &x, sizeof x);
}
";

/// A kernel applying `function` of `source` to each `u32`, one message at a time, in
/// order. Its host output holds everything a test sends (the test receives afterwards).
fn kernel(name: &str, function: &str, source: &str) -> KernelSpec<u32, u32> {
    KernelSpec::<u32, u32>::new(name)
        .capacity(64)
        .host_output(1024)
        .cuda(function, source)
        .sequential()
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
}

fn value(sample: &prometheus_parse::Sample) -> f64 {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{} has an unexpected type: {other:?}", sample.metric),
    }
}

/// A pipeline split over emulated devices 0 and 1, the route between them relayed
/// through the host: every message arrives exactly once and in order, the relay counts
/// each, the kernels' series carry their device, and a shutdown with messages in flight
/// loses none (each is received or handed back in the report).
#[test]
fn a_pipeline_split_over_two_devices_is_relayed_exactly_once_in_order() {
    let Some(runtime) = emulated() else {
        return;
    };
    let mut first = runtime.group("first");
    first.device(0);
    let inc = first.add(kernel("inc", "inc_u32", INC_CUDA));
    let first = first.launch().unwrap();
    let mut second = runtime.group("second");
    second.device(1);
    let double = second.add(kernel("double", "double_u32", DOUBLE_CUDA));
    let second = second.launch().unwrap();
    assert_eq!(
        (first.backend(), first.device()),
        ("cuda-emulated", Some(0))
    );
    assert_eq!(
        (second.backend(), second.device()),
        ("cuda-emulated", Some(1))
    );
    let inc = first.kernel(inc).unwrap();
    let double = second.kernel(double).unwrap();
    assert_eq!(inc.device(), Some(0));
    assert_eq!(double.metrics().device, Some(1));

    runtime.connect(&inc, 0, &double).unwrap();
    assert!(
        matches!(inc.try_recv(), Err(Error::ReceiverTaken { .. })),
        "the relay holds the upstream's host output"
    );
    first.activate().unwrap();
    second.activate().unwrap();
    let expected = |x: u32| (x + 1) * 2;
    for x in 0..500 {
        inc.send(x).unwrap();
    }
    for x in 0..500 {
        assert_eq!(double.recv_timeout(TIMEOUT).unwrap(), expected(x));
    }
    assert!(double.try_recv().unwrap().is_none(), "nothing twice");
    assert_relayed_and_labelled(&runtime.prometheus_text());

    // Shut down with 300 messages somewhere between the devices: each comes out once,
    // received (in order) or handed back.
    for x in 500..800 {
        inc.send(x).unwrap();
    }
    let report = runtime.shutdown(TIMEOUT);
    let mut received = Vec::new();
    while let Ok(Some(y)) = double.try_recv() {
        received.push(y);
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "in order: {received:?}"
    );
    let mut inputs: Vec<u32> = received.iter().map(|y| y / 2 - 1).collect();
    inputs.extend(handed_back_inputs(&report));
    inputs.sort_unstable();
    assert_eq!(inputs, (500..800).collect::<Vec<_>>(), "{report:?}");
    assert_eq!(report.faulted().count(), 0, "{report:?}");
}

/// The relay `inc` → `double` counted 500 messages from device 0 to device 1, and each
/// kernel's series carries its device.
fn assert_relayed_and_labelled(text: &str) {
    let parsed = scrape(text);
    let relay = parsed
        .samples
        .iter()
        .find(|s| s.metric == "gyre_relay_forwarded_total")
        .unwrap_or_else(|| panic!("the relay is not in the metrics:\n{text}"));
    for (label, want) in [
        ("from", "inc"),
        ("to", "double"),
        ("from_backend", "cuda-emulated"),
        ("to_backend", "cuda-emulated"),
        ("from_device", "0"),
        ("to_device", "1"),
    ] {
        assert_eq!(relay.labels.get(label), Some(want), "{label}:\n{text}");
    }
    assert_eq!(value(relay), 500.0, "{text}");
    for (kernel, device) in [("inc", "0"), ("double", "1")] {
        let processed = parsed
            .samples
            .iter()
            .find(|s| {
                s.metric == "gyre_kernel_processed_total" && s.labels.get("kernel") == Some(kernel)
            })
            .unwrap_or_else(|| panic!("no series for {kernel}:\n{text}"));
        assert_eq!(processed.labels.get("device"), Some(device), "{text}");
        assert_eq!(value(processed), 500.0, "{text}");
    }
}

/// The inputs of the `inc` → `double` pipeline whose messages `report` hands back.
fn handed_back_inputs(report: &gyre::ShutdownReport) -> Vec<u32> {
    let mut inputs = Vec::new();
    for k in &report.kernels {
        // Handed back before the upstream handled them (inputs), or after (its outputs,
        // the downstream's inputs), or the downstream's outputs.
        let (undelivered, outputs): (Vec<u32>, Vec<u32>) = (
            k.undelivered
                .iter()
                .map(gyre::RawMessage::read::<u32>)
                .collect(),
            k.undelivered_outputs
                .iter()
                .map(gyre::RawMessage::read::<u32>)
                .collect(),
        );
        match k.kernel.as_str() {
            "inc" => {
                inputs.extend(&undelivered);
                inputs.extend(outputs.iter().map(|y| y - 1));
            }
            "double" => {
                inputs.extend(undelivered.iter().map(|y| y - 1));
                inputs.extend(outputs.iter().map(|y| y / 2 - 1));
            }
            _ => inputs.extend(undelivered.iter().map(|y| y - 1)), // the relay's
        }
    }
    inputs
}

/// Two groups with kernels of the same name on the two devices are kept apart: each
/// handles its own messages, and metrics and health tell them apart by device.
#[test]
fn metrics_and_health_name_each_kernels_device() {
    let Some(runtime) = emulated() else {
        return;
    };
    let mut groups = Vec::new();
    for device in [0, 1] {
        let mut g = runtime.group(format!("on-{device}"));
        g.device(device);
        let stage = g.add(kernel("same", "inc_u32", INC_CUDA));
        let group = g.launch().unwrap();
        let kernel = group.kernel(stage).unwrap();
        groups.push((group, kernel));
    }
    // Device 0 runs; device 1's kernel stays launched (not active) with a message waiting.
    groups[0].0.activate().unwrap();
    groups[0].1.send(10).unwrap();
    groups[1].1.send(20).unwrap();
    assert_eq!(groups[0].1.recv_timeout(TIMEOUT).unwrap(), 11);
    assert!(groups[1].1.try_recv().unwrap().is_none());

    let text = runtime.prometheus_text();
    let parsed = scrape(&text);
    let depth = |device: &str| {
        parsed
            .samples
            .iter()
            .find(|s| {
                s.metric == "gyre_kernel_inbox_depth"
                    && s.labels.get("kernel") == Some("same")
                    && s.labels.get("device") == Some(device)
            })
            .map_or_else(|| panic!("no series for device {device}:\n{text}"), value)
    };
    assert_eq!((depth("0"), depth("1")), (0.0, 1.0), "{text}");

    // Every waiting message is over this threshold: the reason names the device.
    let policy = HealthPolicy {
        inbox_threshold: 0.0,
        ..HealthPolicy::default()
    };
    let health = runtime.health(&policy);
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    assert_eq!(health.reasons.len(), 1, "{health:?}");
    assert!(
        health.reasons[0].contains("kernel `same` (on cuda-emulated device 1)"),
        "{health:?}"
    );
    groups[1].0.activate().unwrap();
    assert_eq!(groups[1].1.recv_timeout(TIMEOUT).unwrap(), 21);
    let report = runtime.shutdown(TIMEOUT);
    assert_eq!(report.undelivered_count(), 0, "{report:?}");
}

/// An ordinal the backend does not have is a clear error naming it and how many devices
/// there are, from a group and from the runtime builder; only CUDA numbers its devices.
#[test]
fn an_ordinal_out_of_range_is_a_clear_error() {
    let Some(runtime) = emulated() else {
        return;
    };
    let mut g = runtime.group("too-far");
    g.device(2);
    g.add(kernel("inc", "inc_u32", INC_CUDA));
    match g.launch() {
        Err(Error::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, "cuda-emulated");
            assert!(
                reason.contains("emulated CUDA device 2 does not exist")
                    && reason.contains("2 devices"),
                "{reason}"
            );
        }
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
    match Runtime::builder()
        .backend(Backend::CudaEmulated)
        .device(7)
        .build()
    {
        Err(Error::BackendUnavailable { reason, .. }) => {
            assert!(reason.contains("device 7"), "{reason}");
        }
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
    // The runtime's default device can be device 1.
    let on_one = Runtime::builder()
        .backend(Backend::CudaEmulated)
        .device(1)
        .workers(1)
        .build()
        .unwrap();
    let k = on_one.launch(kernel("inc", "inc_u32", INC_CUDA)).unwrap();
    assert_eq!(k.device(), Some(1));
    // The CPU has no device ordinals but 0.
    let mut cpu = runtime.group("cpu");
    cpu.backend(Backend::Cpu).device(1);
    cpu.add(KernelSpec::<u32, u32>::new("c").cpu(|x, out| Ok(out.emit(*x)?)));
    match cpu.launch() {
        Err(Error::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, "cpu");
            assert!(reason.contains("only the CUDA backends"), "{reason}");
        }
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
    match Runtime::builder().backend(Backend::Cpu).device(1).build() {
        Err(Error::BackendUnavailable { backend, .. }) => assert_eq!(backend, "cpu"),
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
}

/// On the driver path an ordinal beyond the device count names the ordinal and the
/// count. Where there is no driver (this project's CI) the probe's own reason comes
/// first and the ordinal is not reached: only the error's kind is checked then.
#[test]
fn the_driver_names_a_missing_device_and_the_count() {
    match Runtime::builder().backend(Backend::Cuda).device(64).build() {
        Ok(_) => panic!("no machine has 65 CUDA devices"),
        Err(Error::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            if reason.contains("does not exist") {
                assert!(
                    reason.contains("CUDA device 64 does not exist")
                        && reason.contains("device(s) visible"),
                    "{reason}"
                );
            } else {
                // No driver or no device here: the probe says which, before any ordinal.
                eprintln!("no CUDA driver here, the ordinal is not reached: {reason}");
                assert!(!reason.is_empty());
            }
        }
        Err(other) => panic!("expected BackendUnavailable, got {other:?}"),
    }
}

/// A chain over three groups (device 0 → device 1 → device 0), its relays connected
/// downstream first: a shutdown drains each group only after everything upstream of it
/// was delivered, so every message comes out of the last group, none handed back.
#[test]
fn a_shutdown_drains_a_chain_of_devices_upstream_first() {
    let Some(runtime) = emulated() else {
        return;
    };
    let mut kernels = Vec::new();
    let mut groups = Vec::new();
    for (i, device) in [0, 1, 0].into_iter().enumerate() {
        let mut g = runtime.group(format!("stage-{i}"));
        g.device(device);
        let stage = g.add(kernel(&format!("inc-{i}"), "inc_u32", INC_CUDA));
        let group = g.launch().unwrap();
        kernels.push(group.kernel(stage).unwrap());
        groups.push(group);
    }
    runtime.connect(&kernels[1], 0, &kernels[2]).unwrap();
    runtime.connect(&kernels[0], 0, &kernels[1]).unwrap();
    for group in &groups {
        group.activate().unwrap();
    }
    for x in 0..300 {
        kernels[0].send(x).unwrap();
    }
    let report = runtime.shutdown(TIMEOUT);
    let mut received = Vec::new();
    while let Ok(Some(y)) = kernels[2].try_recv() {
        received.push(y);
    }
    assert_eq!(report.undelivered_count(), 0, "{report:?}");
    assert_eq!(received, (3..303).collect::<Vec<_>>());
}
