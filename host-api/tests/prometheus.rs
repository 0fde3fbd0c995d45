//! The Prometheus exposition parses and carries per-kernel series labelled by name, with
//! the values the control blocks hold.

// The values compared are message counts: small integers, exact in f64.
#![allow(clippy::float_cmp)]

use std::collections::HashMap;
use std::time::Duration;

use gyre::{KernelSpec, Placement, Runtime};
use prometheus_parse::{Scrape, Value};

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
}

fn value(scrape: &Scrape, metric: &str, kernel: &str) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("kernel") == Some(kernel))
        .unwrap_or_else(|| panic!("no {metric} for kernel {kernel}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric} has an unexpected type: {other:?}"),
    }
}

#[test]
fn exposition_parses_and_reports_each_kernel() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let evens = rt
        .launch(
            KernelSpec::<u64, u64>::new("evens")
                .placement(Placement::Dedicated)
                .cpu(|x, out| {
                    if x % 2 == 1 {
                        return Err(gyre::HandlerError("odd".into()));
                    }
                    Ok(out.emit(*x)?)
                }),
        )
        .unwrap();
    let idle = rt
        .launch(
            KernelSpec::<u64, u64>::new("idle")
                .capacity(8)
                .cpu(|x, out| Ok(out.emit(*x)?)),
        )
        .unwrap();
    evens.activate().unwrap();
    for i in 0..10 {
        evens.send(i).unwrap();
    }
    for _ in 0..5 {
        evens.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    for i in 0..3 {
        idle.send(i).unwrap();
    }
    // Counters are published at the end of a turn; wait for the last one.
    while evens.metrics().processed < 10 {
        std::thread::yield_now();
    }

    let text = rt.prometheus_text();
    let s = scrape(&text);
    assert_eq!(
        value(&s, "gyre_kernel_processed_total", "evens"),
        10.0,
        "{text}"
    );
    assert_eq!(value(&s, "gyre_kernel_emitted_total", "evens"), 5.0);
    assert_eq!(value(&s, "gyre_kernel_errors_total", "evens"), 5.0);
    assert_eq!(value(&s, "gyre_kernel_processed_total", "idle"), 0.0);
    assert_eq!(value(&s, "gyre_kernel_inbox_depth", "idle"), 3.0);
    assert!((value(&s, "gyre_kernel_inbox_utilisation", "idle") - 3.0 / 8.0).abs() < 1e-9);
    let states: HashMap<String, f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == "gyre_kernel_state" && x.labels.get("kernel") == Some("idle"))
        .map(|x| {
            let v = match x.value {
                Value::Gauge(v) | Value::Untyped(v) => v,
                ref other => panic!("state is a gauge, got {other:?}"),
            };
            (x.labels.get("state").unwrap().to_owned(), v)
        })
        .collect();
    assert_eq!(states.len(), 6);
    assert_eq!(states["launched"], 1.0);
    assert_eq!(states.values().sum::<f64>(), 1.0);
    let total = s
        .samples
        .iter()
        .find(|x| x.metric == "gyre_runtime_processed_total")
        .unwrap();
    assert!(
        matches!(total.value, Value::Counter(v) if v == 10.0),
        "{:?}",
        total.value
    );
    let kernels = s
        .samples
        .iter()
        .find(|x| x.metric == "gyre_runtime_kernels")
        .unwrap();
    assert!(
        matches!(kernels.value, Value::Gauge(v) if v == 2.0),
        "{:?}",
        kernels.value
    );
    // Every series carries a HELP text.
    assert!(
        s.docs.contains_key("gyre_kernel_processed_total"),
        "{:?}",
        s.docs.keys()
    );
}

#[test]
fn exposition_carries_latency_handler_time_throughput_and_dead_letters() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt
        .launch(KernelSpec::<u64, u64>::new("timed").cpu(|x, out| {
            if *x == 5 {
                return Err(gyre::HandlerError("five".into()));
            }
            // Measurable handler time.
            std::hint::black_box((0..200).sum::<u64>());
            Ok(out.emit(*x)?)
        }))
        .unwrap();
    k.activate().unwrap();
    // 128 sends: positions 63 and 127 are timed; 5 fails and is dead-lettered.
    for i in 0..128 {
        k.send(i).unwrap();
        if i != 5 {
            k.recv_timeout(Duration::from_secs(10)).unwrap();
        }
    }
    while k.metrics().processed < 128 {
        std::thread::yield_now();
    }
    let text = rt.prometheus_text();
    let s = scrape(&text);
    assert_eq!(
        value(&s, "gyre_kernel_latency_samples_total", "timed"),
        2.0,
        "{text}"
    );
    let quantiles: Vec<(String, f64)> = s
        .samples
        .iter()
        .filter(|x| x.metric == "gyre_kernel_latency_seconds")
        .map(|x| match x.value {
            Value::Gauge(v) => (x.labels.get("quantile").unwrap().to_owned(), v),
            ref other => panic!("latency: unexpected {other:?}"),
        })
        .collect();
    assert_eq!(quantiles.len(), 4, "p50, p90, p99, p999: {text}");
    assert!(
        quantiles.iter().all(|(_, v)| *v > 0.0 && *v < 10.0),
        "{quantiles:?}"
    );
    assert!(value(&s, "gyre_kernel_handler_microseconds_total", "timed") >= 0.0);
    assert!(
        value(&s, "gyre_kernel_throughput_per_second", "timed") > 0.0,
        "{text}"
    );
    let dead = s
        .samples
        .iter()
        .find(|x| x.metric == "gyre_runtime_dead_letters_total")
        .unwrap();
    assert!(
        matches!(dead.value, Value::Counter(v) if v == 1.0),
        "{:?}",
        dead.value
    );
}
