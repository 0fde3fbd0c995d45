//! The batch form of a CPU handler (`KernelSpec::cpu_batch`): inputs in order with their
//! correlation ids, batches bounded by the quantum, errors and panics accounted for the
//! whole batch, and a stuck batch handed back by a terminate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre::{FaultPolicy, KernelSpec, Placement, RestartPolicy, Runtime, State};

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes[..8].try_into().unwrap())
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_batch_handler_answers_every_input_in_order_with_its_correlation_id() {
    for placement in [Placement::Pool, Placement::Dedicated] {
        let rt = Runtime::builder().workers(1).build().unwrap();
        let largest = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (seen_largest, seen_calls) = (largest.clone(), calls.clone());
        let k = rt
            .launch(
                KernelSpec::<u64, u64>::new("doubler")
                    .placement(placement)
                    .capacity(1024)
                    .host_output(1024)
                    .quantum(32)
                    .cpu_batch(move |inputs, out| {
                        seen_largest.fetch_max(inputs.len(), Ordering::Relaxed);
                        seen_calls.fetch_add(1, Ordering::Relaxed);
                        for (i, x) in inputs.iter().enumerate() {
                            out.emit(i, x * 2)?;
                        }
                        Ok(())
                    }),
            )
            .unwrap();
        // Queued before activation, so the first turns find full batches.
        let count = 1000u64;
        for x in 0..count {
            k.send_with_corr(x, 1_000_000 + x).unwrap();
        }
        k.activate().unwrap();
        for x in 0..count {
            let (y, corr) = k.recv_with_corr_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!((y, corr), (x * 2, 1_000_000 + x), "{placement:?}");
        }
        let largest = largest.load(Ordering::Relaxed);
        assert!(
            (2..=32).contains(&largest),
            "{placement:?}: largest batch {largest}, quantum 32"
        );
        assert!(
            calls.load(Ordering::Relaxed) < count as usize,
            "{placement:?}: one call per batch, not per message"
        );
        let report = k.drain(Duration::from_secs(5)).unwrap();
        assert!(report.undelivered.is_empty(), "{placement:?}");
        assert_eq!(report.processed, count, "{placement:?}");
    }
}

#[test]
fn a_batch_error_sends_the_whole_batch_to_the_dead_letters() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("picky")
                .quantum(8)
                .cpu_batch(|inputs, out| {
                    if inputs.contains(&13) {
                        return Err(gyre::HandlerError("13 is in this batch".into()));
                    }
                    for (i, x) in inputs.iter().enumerate() {
                        out.emit(i, *x)?;
                    }
                    Ok(())
                }),
        )
        .unwrap();
    for x in 0..40u64 {
        k.send_with_corr(x, x + 500).unwrap();
    }
    k.activate().unwrap();
    let report = k.drain(Duration::from_secs(10)).unwrap();
    let mut got: Vec<u64> = Vec::new();
    while let Ok(Some(y)) = k.try_recv() {
        got.push(y);
    }
    got.extend(report.undelivered_outputs.iter().copied());
    let letters = rt.take_dead_letters();
    let dead: Vec<(u64, u64)> = letters
        .iter()
        .map(|d| {
            assert!(
                d.is_input && d.reason.contains("13 is in this batch"),
                "{d:?}"
            );
            (
                read_u64(&d.payload),
                u64::from(d.corr[0]) | u64::from(d.corr[1]) << 32,
            )
        })
        .collect();
    assert!(dead.iter().any(|&(x, _)| x == 13), "{dead:?}");
    assert!(
        dead.len() <= 8,
        "at most one batch of the quantum: {dead:?}"
    );
    for &(x, corr) in &dead {
        assert_eq!(corr, x + 500, "a dead letter keeps its correlation id");
    }
    // Every message exactly once: answered or dead-lettered, in order.
    let mut all: Vec<u64> = got
        .iter()
        .copied()
        .chain(dead.iter().map(|d| d.0))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert_eq!(k.metrics().errors, dead.len() as u64);
}

#[test]
fn a_restart_dead_letters_the_batch_its_handler_panicked_on() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("fragile-batch")
                .quantum(4)
                .on_fault(FaultPolicy::Restart(RestartPolicy {
                    max_restarts: 5,
                    initial_backoff: Duration::from_millis(5),
                    max_backoff: Duration::from_millis(50),
                    reset_after: Duration::from_secs(60),
                }))
                .cpu_batch(|inputs, out| {
                    assert!(!inputs.contains(&9), "cannot take 9");
                    for (i, x) in inputs.iter().enumerate() {
                        out.emit(i, *x)?;
                    }
                    Ok(())
                }),
        )
        .unwrap();
    for x in 0..20u64 {
        k.send(x).unwrap();
    }
    match k.activate() {
        Ok(()) | Err(gyre::Error::Faulted { .. }) => {}
        Err(e) => panic!("activate: {e}"),
    }
    let mut got = Vec::new();
    let mut dead = Vec::new();
    wait_for("every message answered or dead-lettered", || {
        while let Ok(Some(y)) = k.try_recv() {
            got.push(y);
        }
        dead.extend(rt.take_dead_letters().iter().map(|d| read_u64(&d.payload)));
        got.len() + dead.len() >= 20
    });
    assert_eq!(k.restarts(), 1);
    assert!(dead.contains(&9), "{dead:?}");
    assert!(dead.len() <= 4, "one batch of the quantum: {dead:?}");
    let mut all: Vec<u64> = got.iter().chain(&dead).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<_>>(), "each message once");
    assert_eq!(k.state(), State::Active);
}

#[test]
fn a_terminate_hands_back_the_batch_of_a_stuck_handler() {
    let rt = Runtime::builder()
        .workers(2)
        .command_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("stuck-batch")
                .quantum(8)
                .cpu_batch(|inputs, out| {
                    for (i, x) in inputs.iter().enumerate() {
                        out.emit(i, *x)?;
                    }
                    if inputs.contains(&20) {
                        loop {
                            std::thread::park();
                        }
                    }
                    Ok(())
                }),
        )
        .unwrap();
    k.activate().unwrap();
    for x in 0..40u64 {
        k.send(x).unwrap();
    }
    let mut got = Vec::new();
    wait_for("the outputs before the stuck batch", || {
        while let Ok(Some(y)) = k.try_recv() {
            got.push(y);
        }
        got.contains(&20)
    });
    let report = k.terminate().unwrap();
    assert!(report.abandoned, "{report:?}");
    while let Ok(Some(y)) = k.try_recv() {
        got.push(y);
    }
    got.extend(report.undelivered_outputs.iter().copied());
    // The stuck batch comes back whole (its outputs were delivered too: at least once),
    // and so does everything queued behind it; nothing is lost.
    let back = report.undelivered.clone();
    assert!(back.contains(&20), "{back:?}");
    let mut all: Vec<u64> = got.iter().chain(&back).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    assert!(back.windows(2).all(|w| w[0] < w[1]), "in order: {back:?}");
}

#[test]
fn emit_all_answers_each_input_through_a_full_downstream_in_order() {
    // Stage 1 maps batches with one run per batch into stage 2's lane, whose small ring
    // fills: the rest of a run waits in the stash and goes on in order.
    let rt = Runtime::builder().workers(2).build().unwrap();
    let mut g = rt.group("runs");
    let first = g.add(
        KernelSpec::<u64, u64>::new("square")
            .capacity(256)
            .quantum(64)
            .no_host_output()
            .cpu_batch(|inputs, out| {
                let squares: Vec<u64> = inputs.iter().map(|x| x * x).collect();
                Ok(out.emit_all(&squares)?)
            }),
    );
    let second = g.add(
        KernelSpec::<u64, u64>::new("plus-one")
            .capacity(8)
            .host_output(4096)
            .cpu_batch(|inputs, out| {
                let next: Vec<u64> = inputs.iter().map(|x| x + 1).collect();
                Ok(out.emit_all(&next)?)
            }),
    );
    g.route(first, 0, second);
    let group = g.launch().unwrap();
    let head = group.kernel::<u64, u64>(first).unwrap();
    let tail = group.kernel::<u64, u64>(second).unwrap();
    group.activate().unwrap();
    let count = 3000u64;
    for x in 0..count {
        head.send_with_corr(x, x + 7).unwrap();
    }
    for x in 0..count {
        let (y, corr) = tail
            .recv_with_corr_timeout(Duration::from_secs(10))
            .unwrap();
        assert_eq!((y, corr), (x * x + 1, x + 7));
    }
    assert!(
        head.metrics().stalls > 0,
        "the small downstream ring filled"
    );
    let report = group.drain(Duration::from_secs(5));
    assert_eq!(report.undelivered_count(), 0, "{report:?}");
}

/// What a handler emitted before it got stuck reaches the host through a downstream
/// kernel: the emit woke the downstream consumer then, not at the end of the turn (which
/// never comes). For one-message handlers and for a batch answered with `emit_all`.
#[test]
fn what_a_stuck_handler_emitted_is_not_held_back() {
    for batch in [false, true] {
        let rt = Runtime::builder()
            .workers(2)
            .command_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let mut g = rt.group("stuck");
        let spec = KernelSpec::<u64, u64>::new("stuck").no_host_output();
        let spec = if batch {
            spec.cpu_batch(|inputs, out| {
                out.emit_all(inputs)?;
                loop {
                    std::thread::park();
                }
            })
        } else {
            spec.cpu(|x, out| {
                out.emit(*x)?;
                loop {
                    std::thread::park();
                }
            })
        };
        let first = g.add(spec);
        let second =
            g.add(KernelSpec::<u64, u64>::new("relay").cpu(|x, out| Ok(out.emit(*x + 1)?)));
        g.route(first, 0, second);
        let group = g.launch().unwrap();
        let head = group.kernel::<u64, u64>(first).unwrap();
        let tail = group.kernel::<u64, u64>(second).unwrap();
        // Queued before activation: the batch handler gets all three in one batch (a run
        // through `emit_run`); the one-message handler emits the first and gets stuck.
        for x in [41, 42, 43] {
            head.send(x).unwrap();
        }
        group.activate().unwrap();
        let expected: &[u64] = if batch { &[42, 43, 44] } else { &[42] };
        for &y in expected {
            assert_eq!(
                tail.recv_timeout(Duration::from_secs(5)).unwrap(),
                y,
                "batch {batch}"
            );
        }
        drop(group.terminate());
    }
}
