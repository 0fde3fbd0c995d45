//! One process, two bridges over loopback TCP: the protocol's guarantees.

mod common;

use std::time::{Duration, Instant};

use gyre::{KernelSpec, Runtime};
use gyre_zenoh::{BridgeError, ExportOptions, LinkHealth, LinkOptions};

#[test]
fn messages_cross_once_in_order_and_the_drain_confirms() {
    let (a, b, _) = common::pair();
    let key = common::key("once");
    let remote_rt = Runtime::builder().build().unwrap();
    let stage2 = remote_rt
        .launch(KernelSpec::<u64, u64>::new("stage2").cpu(|x, out| Ok(out.emit(x * 2)?)))
        .unwrap();
    stage2.activate().unwrap();
    let mut results = stage2.receiver().unwrap();
    let export = a
        .export::<u64>(&key, stage2.sender(), ExportOptions::default())
        .unwrap();

    let local_rt = Runtime::builder().build().unwrap();
    let stage1 = local_rt
        .launch(KernelSpec::<u64, u64>::new("stage1").cpu(|x, out| Ok(out.emit(x + 1)?)))
        .unwrap();
    stage1.activate().unwrap();
    let link = b
        .link(&key, stage1.receiver().unwrap(), LinkOptions::default())
        .unwrap();
    const N: u64 = 20_000;
    let feeder = {
        let tx = stage1.sender();
        std::thread::spawn(move || {
            for i in 0..N {
                tx.send_with_corr(i, i + 7).unwrap();
            }
        })
    };
    let mut got = Vec::with_capacity(N as usize);
    while got.len() < N as usize {
        got.push(
            results
                .recv_with_corr_timeout(Duration::from_secs(10))
                .unwrap(),
        );
    }
    for (i, (v, corr)) in got.iter().enumerate() {
        assert_eq!(
            *v,
            (i as u64 + 1) * 2,
            "message {i} out of order or changed"
        );
        assert_eq!(*corr, i as u64 + 7, "correlation id of message {i}");
    }
    feeder.join().unwrap();
    stage1.drain(Duration::from_secs(5)).unwrap();
    let report = link.drain(Duration::from_secs(5));
    assert!(report.finished, "{report:?}");
    assert!(report.undelivered.is_empty());
    assert_eq!(report.metrics.sent, N);
    assert_eq!(report.metrics.acknowledged, N);
    assert!(export.wait_finished(1, Duration::from_secs(5)));
    let m = export.metrics();
    assert_eq!((m.received, m.delivered, m.consumed), (N, N, N), "{m:?}");
    assert!(
        results.try_recv().unwrap().is_none(),
        "nothing more than sent"
    );
}

/// One message at a time, each answered before the next: an idle link on a CPU kernel
/// sends from the kernel's emit (without waking its thread), and nothing is lost,
/// repeated or reordered on that path; then a burst goes through the link thread's
/// batches, and a drain still confirms everything.
#[test]
fn an_idle_link_sends_from_the_emit_and_a_burst_from_its_thread() {
    let (a, b, _) = common::pair();
    let key = common::key("inline");
    let remote_rt = Runtime::builder().build().unwrap();
    let echo = common::identity(&remote_rt, "echo");
    echo.activate().unwrap();
    let mut results = echo.receiver().unwrap();
    let export = a
        .export::<u64>(&key, echo.sender(), ExportOptions::default())
        .unwrap();
    let local_rt = Runtime::builder().build().unwrap();
    let source = common::identity(&local_rt, "source");
    source.activate().unwrap();
    let link = b
        .link(&key, source.receiver().unwrap(), LinkOptions::default())
        .unwrap();
    const ONE_AT_A_TIME: u64 = 200;
    for i in 0..ONE_AT_A_TIME {
        // Idle for longer than the link's inline threshold (50 µs) before each send.
        std::thread::sleep(Duration::from_micros(200));
        source.send_with_corr(i, i + 100).unwrap();
        let (v, corr) = results
            .recv_with_corr_timeout(Duration::from_secs(10))
            .unwrap();
        assert_eq!((v, corr), (i, i + 100), "message {i}");
    }
    let inline = link.metrics().inline_frames;
    assert!(
        inline > 0,
        "no frame went inline over {ONE_AT_A_TIME} idle sends: {:?}",
        link.metrics()
    );
    const BURST: u64 = 5_000;
    let tx = source.sender();
    let feeder = std::thread::spawn(move || {
        for i in ONE_AT_A_TIME..ONE_AT_A_TIME + BURST {
            tx.send_with_corr(i, i + 100).unwrap();
        }
    });
    for i in ONE_AT_A_TIME..ONE_AT_A_TIME + BURST {
        let got = results
            .recv_with_corr_timeout(Duration::from_secs(10))
            .unwrap();
        assert_eq!(got, (i, i + 100), "message {i} of the burst");
    }
    feeder.join().unwrap();
    source.drain(Duration::from_secs(5)).unwrap();
    let report = link.drain(Duration::from_secs(5));
    assert!(report.finished, "{report:?}");
    assert!(report.undelivered.is_empty());
    let m = &report.metrics;
    assert_eq!(
        (m.sent, m.acknowledged),
        (ONE_AT_A_TIME + BURST, ONE_AT_A_TIME + BURST)
    );
    assert!(
        m.inline_frames < ONE_AT_A_TIME + BURST / 4,
        "the burst should travel mostly in the thread's batches: {m:?}"
    );
    assert!(export.wait_finished(1, Duration::from_secs(5)));
    assert!(
        results.try_recv().unwrap().is_none(),
        "nothing more than sent"
    );
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Frame {
    x: f32,
    y: f32,
}

#[test]
fn a_type_mismatch_is_an_error_at_link_time_naming_both_sides() {
    let (a, b, _) = common::pair();
    let key = common::key("mismatch");
    let rt = Runtime::builder().build().unwrap();
    let sink = common::identity(&rt, "sink");
    sink.activate().unwrap();
    let export = a
        .export::<u64>(&key, sink.sender(), ExportOptions::default())
        .unwrap();
    let src = rt
        .launch(KernelSpec::<Frame, Frame>::new("src").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    let err = b
        .link(&key, src.receiver().unwrap(), LinkOptions::default())
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BridgeError::TypeMismatch { .. }), "{text}");
    assert!(
        text.contains("Frame") && text.contains("u64"),
        "names both types: {text}"
    );
    assert!(text.contains("8 bytes"), "{text}");
    let m = export.metrics();
    assert_eq!(m.refused_links, 1);
    assert!(m.last_refusal.unwrap().contains("Frame"));
}

#[test]
fn a_link_to_nothing_says_so_within_its_connect_timeout() {
    let (_a, b, _) = common::pair();
    let rt = Runtime::builder().build().unwrap();
    let src = common::identity(&rt, "src");
    let started = Instant::now();
    let err = b
        .link(
            &common::key("nobody"),
            src.receiver().unwrap(),
            LinkOptions {
                connect_timeout: Duration::from_millis(300),
                ..LinkOptions::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, BridgeError::NoExport { .. }), "{err}");
    assert!(err.to_string().contains("start the receiving side first"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_slow_remote_consumer_stalls_the_upstream_kernel_with_bounded_memory() {
    let (a, b, _) = common::pair();
    let key = common::key("slow");
    let rt = Runtime::builder().build().unwrap();
    let slow = rt
        .launch(
            KernelSpec::<u64, u64>::new("slow")
                .capacity(64)
                .cpu(|x, out| {
                    std::thread::sleep(Duration::from_micros(200));
                    Ok(out.emit(*x)?)
                }),
        )
        .unwrap();
    slow.activate().unwrap();
    let mut results = slow.receiver().unwrap();
    let export = a
        .export::<u64>(
            &key,
            slow.sender(),
            ExportOptions {
                window: Some(32),
                ..ExportOptions::default()
            },
        )
        .unwrap();
    let fast = rt
        .launch(
            KernelSpec::<u64, u64>::new("fast")
                .capacity(64)
                .cpu(|x, out| Ok(out.emit(*x)?)),
        )
        .unwrap();
    fast.activate().unwrap();
    let link = b
        .link(&key, fast.receiver().unwrap(), LinkOptions::default())
        .unwrap();
    const N: u64 = 3_000;
    let mut max_in_flight = 0;
    let mut got = Vec::new();
    let mut sent = 0;
    while got.len() < N as usize {
        while sent < N && fast.try_send(sent).is_ok() {
            sent += 1;
        }
        max_in_flight = max_in_flight.max(link.metrics().in_flight);
        while let Some(v) = results.try_recv().unwrap() {
            got.push(v);
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    assert!(got.iter().copied().eq(0..N), "every message once, in order");
    let m = link.metrics();
    assert!(m.credit_stalls > 0, "the link ran out of credit: {m:?}");
    assert!(
        fast.metrics().stalls > 0,
        "the upstream kernel stalled on its full output"
    );
    assert!(max_in_flight <= 32, "in flight {max_in_flight} > window 32");
    assert!(
        export.metrics().pending_high_water <= 32,
        "{:?}",
        export.metrics()
    );
    fast.drain(Duration::from_secs(5)).unwrap();
    let report = link.drain(Duration::from_secs(5));
    assert!(
        report.finished && report.undelivered.is_empty(),
        "{report:?}"
    );
}

#[test]
fn an_export_that_comes_back_gets_everything_its_predecessor_had_not_taken() {
    let (a, b, _) = common::pair();
    let key = common::key("restart");
    let rt = Runtime::builder().build().unwrap();
    let src = common::identity(&rt, "src");
    src.activate().unwrap();
    // The first incarnation takes nothing: its kernel stays paused (never activated).
    let first = rt
        .launch(
            KernelSpec::<u64, u64>::new("first")
                .capacity(64)
                .cpu(|x, out| Ok(out.emit(*x)?)),
        )
        .unwrap();
    let export = a
        .export::<u64>(&key, first.sender(), ExportOptions::default())
        .unwrap();
    let link = b
        .link(
            &key,
            src.receiver().unwrap(),
            LinkOptions {
                silence: Duration::from_millis(300),
                ..LinkOptions::default()
            },
        )
        .unwrap();
    for i in 0..50u64 {
        src.send(i).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while export.metrics().delivered < 50 {
        assert!(Instant::now() < deadline, "{:?}", export.metrics());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(link.metrics().acknowledged, 0, "nothing was taken");
    drop(export);
    drop(first.terminate().unwrap()); // its process "died" with 50 messages in its ring
    let second = common::identity(&rt, "second");
    second.activate().unwrap();
    let mut out = second.receiver().unwrap();
    let _export = a
        .export::<u64>(&key, second.sender(), ExportOptions::default())
        .unwrap();
    for i in 50..100u64 {
        src.send(i).unwrap();
    }
    let got: Vec<u64> = (0..100)
        .map(|_| out.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert!(got.iter().copied().eq(0..100), "{got:?}");
    let m = link.metrics();
    assert!(m.retransmitted >= 50 && m.reconnects >= 1, "{m:?}");
    src.drain(Duration::from_secs(5)).unwrap();
    assert!(link.drain(Duration::from_secs(5)).finished);
}

#[test]
fn with_the_export_gone_past_the_link_timeout_terminate_hands_back_everything_unacknowledged() {
    let (a, b, _) = common::pair();
    let key = common::key("gone");
    let rt = Runtime::builder().build().unwrap();
    let src = common::identity(&rt, "src");
    src.activate().unwrap();
    let parked = common::identity(&rt, "parked");
    let export = a
        .export::<u64>(&key, parked.sender(), ExportOptions::default())
        .unwrap();
    let link = b
        .link(
            &key,
            src.receiver().unwrap(),
            LinkOptions {
                silence: Duration::from_millis(200),
                link_timeout: Duration::from_millis(800),
                ..LinkOptions::default()
            },
        )
        .unwrap();
    for i in 0..40u64 {
        src.send_with_corr(i, 1000 + i).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while link.metrics().sent < 40 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(export);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(link.health(), LinkHealth::Failed { .. }) {
        assert!(Instant::now() < deadline, "{:?}", link.health());
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = link.terminate();
    assert!(report.failure.unwrap().contains("link timeout"));
    let back: Vec<(u64, u64)> = report.undelivered;
    assert_eq!(back, (0..40).map(|i| (i, 1000 + i)).collect::<Vec<_>>());
}

#[test]
fn the_bridge_works_from_a_current_thread_async_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b, _) = common::pair();
        let key = common::key("async");
        let gyre_rt = Runtime::builder().build().unwrap();
        let sink = common::identity(&gyre_rt, "sink");
        sink.activate().unwrap();
        let export = a
            .export::<u64>(&key, sink.sender(), ExportOptions::default())
            .unwrap();
        let src = common::identity(&gyre_rt, "src");
        src.activate().unwrap();
        let link = b
            .link(&key, src.receiver().unwrap(), LinkOptions::default())
            .unwrap();
        for i in 0..100u64 {
            src.send_async(i).await.unwrap();
        }
        for i in 0..100u64 {
            assert_eq!(sink.recv_async().await.unwrap(), i);
        }
        src.drain(Duration::from_secs(5)).unwrap();
        assert!(link.drain(Duration::from_secs(5)).finished);
        drop(export);
        drop((a, b));
    });
}

#[test]
fn a_second_export_of_a_key_is_refused_and_the_key_is_free_again_once_closed() {
    let (a, b, _) = common::pair();
    let key = common::key("taken");
    let rt = Runtime::builder().build().unwrap();
    let k1 = common::identity(&rt, "k1");
    let first = a
        .export::<u64>(&key, k1.sender(), ExportOptions::default())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    // The other session learns of the first export's token once they are connected.
    let err = loop {
        match b.export::<u64>(&key, k1.sender(), ExportOptions::default()) {
            Err(e) => break e,
            Ok(second) => {
                drop(second);
                assert!(
                    Instant::now() < deadline,
                    "the second export was never refused"
                );
            }
        }
    };
    assert!(matches!(err, BridgeError::KeyTaken { .. }), "{err}");
    assert!(err.to_string().contains("its own key"));
    let err = a
        .export::<u64>(&key, k1.sender(), ExportOptions::default())
        .unwrap_err();
    assert!(matches!(err, BridgeError::KeyTaken { .. }), "{err}");
    drop(first.close());
    b.export::<u64>(&key, k1.sender(), ExportOptions::default())
        .expect("free once the first export closed");
}
