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
