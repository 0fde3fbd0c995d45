//! Fault policies: restart with backoff, the circuit breaker, terminate, and the
//! background watchdog.

use std::time::{Duration, Instant};

use gyre::{FaultPolicy, HealthStatus, KernelSpec, Placement, RestartPolicy, Runtime, State};

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn policy(max_restarts: u32) -> FaultPolicy {
    FaultPolicy::Restart(RestartPolicy {
        max_restarts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        reset_after: Duration::from_secs(60),
    })
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes[..8].try_into().unwrap())
}

#[test]
fn restart_policy_restarts_and_keeps_the_queue() {
    for placement in [Placement::Pool, Placement::Dedicated] {
        let rt = Runtime::builder().workers(1).build().unwrap();
        let k = rt
            .launch(
                KernelSpec::<u64, u64>::new("fragile")
                    .placement(placement)
                    .on_fault(policy(5))
                    .cpu(|x, out| {
                        assert!(x % 10 != 7, "cannot take {x}");
                        Ok(out.emit(*x)?)
                    }),
            )
            .unwrap();
        // Queued before activation: a send racing a fault (before its restart) is refused.
        for x in 0..30 {
            k.send(x).unwrap();
        }
        match k.activate() {
            Ok(()) | Err(gyre::Error::Faulted { .. }) => {}
            Err(e) => panic!("activate: {e}"),
        }
        let got: Vec<u64> = (0..27)
            .map(|_| k.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        let expected: Vec<u64> = (0..30).filter(|x| x % 10 != 7).collect();
        assert_eq!(got, expected, "{placement:?}");
        assert_eq!(k.restarts(), 3);
        let dead: Vec<u64> = rt
            .take_dead_letters()
            .iter()
            .map(|d| read_u64(&d.payload))
            .collect();
        assert_eq!(dead, [7, 17, 27]);
        assert_eq!(k.state(), State::Active);
        let report = k.drain(Duration::from_secs(5)).unwrap();
        assert!(report.undelivered.is_empty());
    }
}

#[test]
fn the_circuit_opens_after_too_many_restarts_in_a_row() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("doomed")
                .on_fault(policy(2))
                .cpu(|x, _| panic!("never works ({x})")),
        )
        .unwrap();
    // Queue everything before the first fault: a send racing a fault would be refused.
    for x in 0..5 {
        k.send(x).unwrap();
    }
    // The first message faults the kernel at once: the activation may see that fault
    // before its own acknowledgement.
    match k.activate() {
        Ok(()) | Err(gyre::Error::Faulted { .. }) => {}
        Err(e) => panic!("activate: {e}"),
    }
    wait_for("the circuit to open", || {
        k.health()
            .reasons
            .iter()
            .any(|r| r.contains("circuit is open"))
    });
    assert_eq!(k.restarts(), 2);
    assert_eq!(k.state(), State::Faulted);
    assert_eq!(k.health().status, HealthStatus::Unhealthy);
    // Three faults: three poison messages went to the dead letters... the third one is
    // still in the inbox of the faulted kernel; terminate hands it back.
    assert_eq!(rt.take_dead_letters().len(), 2);
    let report = k.terminate().unwrap();
    assert_eq!(report.undelivered, [2, 3, 4]);
}

#[test]
fn terminate_policy_sends_everything_to_the_dead_letters() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("strict")
                .on_fault(FaultPolicy::Terminate)
                .cpu(|x, out| {
                    assert!(*x != 3, "bad {x}");
                    Ok(out.emit(*x)?)
                }),
        )
        .unwrap();
    k.deactivate().unwrap();
    for x in 0..6 {
        k.send(x).unwrap();
    }
    // It may fault on 3 (and be terminated) before `activate` reads its state back.
    if let Err(e) = k.activate() {
        assert!(
            matches!(
                e,
                gyre::Error::Faulted { .. } | gyre::Error::Terminated { .. }
            ),
            "{e}"
        );
    }
    wait_for("the policy to terminate", || k.state() == State::Terminated);
    // The state flips when the kernel acknowledges; the supervisor collects right after.
    let mut letters = Vec::new();
    wait_for("the dead letters", || {
        letters.extend(rt.take_dead_letters());
        letters.len() >= 6
    });
    let mut dead: Vec<(bool, u64)> = letters
        .iter()
        .map(|d| (d.is_input, read_u64(&d.payload)))
        .collect();
    dead.sort_unstable();
    // Outputs 0..3 emitted but not received, inputs 3 (the poison) to 5.
    assert_eq!(
        dead,
        [
            (false, 0),
            (false, 1),
            (false, 2),
            (true, 3),
            (true, 4),
            (true, 5)
        ]
    );
}

#[test]
fn the_background_watchdog_terminates_a_stuck_kernel() {
    let rt = Runtime::builder()
        .workers(2)
        .command_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("sleepy")
                .watchdog(Duration::from_millis(100))
                .on_fault(FaultPolicy::Terminate)
                .cpu(|x, out| {
                    if *x == 2 {
                        loop {
                            std::thread::park();
                        }
                    }
                    Ok(out.emit(*x)?)
                }),
        )
        .unwrap();
    k.activate().unwrap();
    for x in 0..4 {
        k.send(x).unwrap();
    }
    let started = Instant::now();
    wait_for("the watchdog", || k.state() == State::Terminated);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(k.fault().unwrap().contains("watchdog"), "{:?}", k.fault());
    let mut letters = Vec::new();
    wait_for("the dead letters", || {
        letters.extend(rt.take_dead_letters());
        letters.len() >= 4
    });
    let mut dead: Vec<(bool, u64)> = letters
        .iter()
        .map(|d| (d.is_input, read_u64(&d.payload)))
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, [(false, 0), (false, 1), (true, 2), (true, 3)]);
    assert!(
        k.fault().unwrap().contains("command timeout"),
        "{:?}",
        k.fault()
    );
}

#[test]
fn a_handler_factory_gives_a_restarted_kernel_fresh_state() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("counting")
                .on_fault(policy(3))
                .cpu_factory(|| {
                    let mut seen = 0u64;
                    move |x: &u64, out: &mut gyre::Emit<'_, '_, u64>| {
                        seen += 1;
                        assert!(*x != 3, "three is poison");
                        Ok(out.emit(x * 100 + seen)?)
                    }
                }),
        )
        .unwrap();
    // Queued before activation: a send racing the fault (before its restart) is refused.
    for x in [1, 2, 3, 4] {
        k.send(x).unwrap();
    }
    match k.activate() {
        Ok(()) | Err(gyre::Error::Faulted { .. }) => {}
        Err(e) => panic!("activate: {e}"),
    }
    let got: Vec<u64> = (0..3)
        .map(|_| k.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    // Before the fault the count reached 3; the restarted handler counts from 1 again.
    assert_eq!(got, [101, 202, 401]);
    assert_eq!(k.restarts(), 1);
}

/// A handler stuck for longer than the command timeout, then back: the watchdog trips,
/// its terminate gives up on the handler and hands the message in hand to the
/// dead-letter sink, and the fault policy restarts the kernel once the handler returns,
/// with the messages queued behind it put back first (they went to the dead letters
/// too, where a panic's restart keeps them). Every message comes out once, as an output
/// or a dead letter (the message in hand was dead-lettered a second time when the
/// returning handler's emit was refused), and the restarted
/// kernel runs new messages (it was left terminated in about a third of the runs: the
/// returning thread let go of the kernel without acknowledging the terminate, and the
/// restarted kernel applied it). Both placements, with other kernels keeping the pool
/// busy, a few rounds each.
#[test]
fn a_watchdog_restart_of_a_handler_stuck_for_a_while_loses_and_repeats_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const STUCK_ON: u64 = 5;
    for placement in [Placement::Pool, Placement::Dedicated] {
        for round in 0..3 {
            let rt = Runtime::builder()
                .workers(2)
                .command_timeout(Duration::from_millis(200))
                .build()
                .unwrap();
            let stuck_once = Arc::new(AtomicBool::new(true));
            let once = Arc::clone(&stuck_once);
            let k = rt
                .launch(
                    KernelSpec::<u64, u64>::new("sleepy")
                        .placement(placement)
                        .watchdog(Duration::from_millis(50))
                        .on_fault(policy(10))
                        .cpu(move |x, out| {
                            if *x == STUCK_ON && once.swap(false, Ordering::Relaxed) {
                                // Past the watchdog and the command timeout after it.
                                std::thread::sleep(Duration::from_millis(600));
                            }
                            Ok(out.emit(*x)?)
                        }),
                )
                .unwrap();
            let busy: Vec<_> = (0..4)
                .map(|i| {
                    let b = rt
                        .launch(
                            KernelSpec::<u64, u64>::new(format!("busy{i}"))
                                .cpu(|x, out| Ok(out.emit(*x)?)),
                        )
                        .unwrap();
                    b.activate().unwrap();
                    b
                })
                .collect();
            k.activate().unwrap();
            for x in 0..10 {
                k.send(x).unwrap();
            }
            // Keep the other kernels' turns queued until well after the handler returns.
            let mut outputs = Vec::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(900) {
                for b in &busy {
                    while b.try_send(1).is_ok() {}
                    while let Ok(Some(_)) = b.try_recv() {}
                }
                while let Ok(Some(x)) = k.try_recv() {
                    outputs.push(x);
                }
                std::thread::yield_now();
            }
            wait_for("the supervised restart", || {
                k.restarts() == 1 && k.state() == State::Active
            });
            for x in 100..110 {
                k.send(x).unwrap();
            }
            wait_for("the restarted kernel's outputs", || {
                while let Ok(Some(x)) = k.try_recv() {
                    outputs.push(x);
                }
                outputs.last() == Some(&109)
            });
            let dead: Vec<u64> = rt
                .take_dead_letters()
                .iter()
                .filter(|d| d.kernel == "sleepy")
                .map(|d| read_u64(&d.payload))
                .collect();
            // Only the message in hand is given up on; what was queued behind it runs
            // after the restart, in order, before what came later (it all went to the
            // dead letters).
            assert_eq!(
                dead,
                [STUCK_ON],
                "{placement:?} round {round}: (outputs {outputs:?})"
            );
            assert_eq!(
                outputs,
                (0..10)
                    .filter(|&x| x != STUCK_ON)
                    .chain(100..110)
                    .collect::<Vec<u64>>(),
                "{placement:?} round {round}: each other message once, in order"
            );
            assert_eq!(k.restarts(), 1, "{placement:?} round {round}");
            rt.shutdown(Duration::from_secs(1));
        }
    }
}

/// A request whose message a handler fails on ends with `Error::DeadLettered` and the
/// handler's reason, blocking or async (on a current-thread executor), instead of waiting
/// for a reply that never comes (`request()` hung for good); so does one whose handler
/// panics under a restart policy (the restart dead-letters it). Later requests are
/// answered, and the dead letter is still there for `take_dead_letters`.
#[test]
fn a_request_that_goes_to_the_dead_letters_ends_with_their_reason() {
    use gyre::{Error, HandlerError};
    for fault_policy in [FaultPolicy::Report, policy(5)] {
        let rt = Runtime::builder().workers(2).build().unwrap();
        let k = rt
            .launch(
                KernelSpec::<u64, u64>::new("picky")
                    .on_fault(fault_policy)
                    .cpu(|x, out| {
                        assert!(*x != 13, "thirteen");
                        if *x == 7 {
                            return Err(HandlerError("no sevens".into()));
                        }
                        Ok(out.emit(*x * 2)?)
                    }),
            )
            .unwrap();
        k.activate().unwrap();
        let req = k.requester().unwrap();
        let error = req.request(7).unwrap_err();
        assert!(
            matches!(&error, Error::DeadLettered { reason } if reason.contains("no sevens")),
            "{fault_policy:?}: {error}"
        );
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = tokio.block_on(req.request_async(7)).unwrap_err();
        assert!(
            matches!(error, Error::DeadLettered { .. }),
            "{fault_policy:?}: {error}"
        );
        if matches!(fault_policy, FaultPolicy::Restart(_)) {
            let error = req.request(13).unwrap_err();
            assert!(
                matches!(&error, Error::DeadLettered { reason } if reason.contains("thirteen")),
                "{error}"
            );
            wait_for("the restart", || k.state() == State::Active);
        }
        assert_eq!(req.request(21).unwrap(), 42, "{fault_policy:?}");
        let letters = rt.take_dead_letters();
        assert!(letters.len() >= 2, "{fault_policy:?}: {letters:?}");
    }
}

/// A receive waiting while the watchdog terminates a stuck kernel whose policy restarts
/// it keeps waiting and gets what the restarted kernel emits (it was told `Terminated`
/// between the terminate and the restart, in a hot loop, as if the stream had ended).
#[test]
fn a_receive_waits_across_a_watchdog_restart() {
    const STUCK_ON: u64 = 3;
    let rt = Runtime::builder()
        .workers(2)
        .command_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("slow")
                .watchdog(Duration::from_millis(50))
                .on_fault(policy(5))
                .cpu(|x, out| {
                    if *x == STUCK_ON {
                        std::thread::sleep(Duration::from_millis(600));
                    }
                    Ok(out.emit(*x)?)
                }),
        )
        .unwrap();
    k.activate().unwrap();
    for x in 0..10 {
        k.send(x).unwrap();
    }
    let got: Vec<u64> = (0..9)
        .map(|_| {
            k.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("a receive across the restart: {e}"))
        })
        .collect();
    assert_eq!(
        got,
        (0..10).filter(|&x| x != STUCK_ON).collect::<Vec<u64>>()
    );
    assert_eq!(k.restarts(), 1);
}
