//! Lifecycle, backpressure and bad-input behaviour of the CPU backend through the
//! public API.

use std::time::Duration;

use gyre::{Backpressure, Error, KernelSpec, Placement, Runtime, State};

const WAIT: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    Runtime::builder()
        .workers(2)
        .build()
        .expect("the CPU backend always starts")
}

fn echo(name: &str, placement: Placement) -> KernelSpec<u64, u64> {
    KernelSpec::new(name)
        .placement(placement)
        .capacity(64)
        .cpu(|x, out| Ok(out.emit(*x)?))
}

#[test]
fn messages_round_trip_in_order_on_both_placements() {
    let rt = runtime();
    for placement in [Placement::Pool, Placement::Dedicated] {
        let k = rt.launch(echo("echo", placement)).unwrap();
        k.activate().unwrap();
        for i in 0..1000u64 {
            k.send(i).unwrap();
            assert_eq!(k.recv().unwrap(), i);
        }
        let report = k.drain(WAIT).unwrap();
        assert_eq!(report.processed, 1000);
        assert_eq!(report.emitted, 1000);
        assert!(!report.timed_out);
        assert!(report.undelivered.is_empty());
        assert_eq!(report.final_state, State::Terminated);
    }
}

#[test]
fn launched_and_paused_kernels_queue_without_processing() {
    let rt = runtime();
    let k = rt.launch(echo("queue", Placement::Pool)).unwrap();
    assert_eq!(k.state(), State::Launched);
    for i in 0..10 {
        k.send(i).unwrap();
    }
    assert_eq!(
        k.try_recv().unwrap(),
        None,
        "a launched kernel does not process"
    );
    k.activate().unwrap();
    let first: Vec<u64> = (0..10).map(|_| k.recv().unwrap()).collect();
    assert_eq!(first, (0..10).collect::<Vec<_>>());
    k.deactivate().unwrap();
    assert_eq!(k.state(), State::Paused);
    for i in 10..20 {
        k.send(i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        k.try_recv().unwrap(),
        None,
        "a paused kernel does not process"
    );
    assert_eq!(k.metrics().inbox_len, 10);
    k.activate().unwrap();
    let second: Vec<u64> = (0..10).map(|_| k.recv().unwrap()).collect();
    assert_eq!(second, (10..20).collect::<Vec<_>>());
}

#[test]
fn drain_processes_everything_then_refuses_senders() {
    let rt = runtime();
    let k = rt
        .launch(echo("drain", Placement::Dedicated).host_output(256))
        .unwrap();
    for i in 0..50 {
        k.send(i).unwrap();
    }
    k.deactivate().unwrap();
    // A paused kernel resumes to drain.
    let report = k.drain(WAIT).unwrap();
    assert_eq!(report.processed, 50);
    assert!(report.undelivered.is_empty());
    // Outputs stay receivable after the drain, then the kernel reports terminated.
    let outputs: Vec<u64> = (0..50).map(|_| k.recv().unwrap()).collect();
    assert_eq!(outputs, (0..50).collect::<Vec<_>>());
    assert!(matches!(k.recv(), Err(Error::Terminated { .. })));
    let err = k.send(99).unwrap_err();
    assert!(matches!(err.error, Error::Terminated { .. }), "{err}");
    assert_eq!(err.into_message(), 99, "the message is handed back");
    let again = k.drain(WAIT).unwrap_err();
    assert!(matches!(again, Error::Lifecycle { .. }), "{again}");
    assert!(again.to_string().contains("terminated"), "{again}");
}

#[test]
fn drain_twice_is_an_error_while_the_first_runs() {
    let rt = runtime();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new((started_tx, gate_rx));
    let k = rt
        .launch(KernelSpec::<u64, u64>::new("slow").cpu(move |x, out| {
            let gate = gate.lock().unwrap();
            gate.0.send(()).unwrap();
            gate.1.recv_timeout(WAIT).ok();
            Ok(out.emit(*x)?)
        }))
        .unwrap();
    k.activate().unwrap();
    k.send(1).unwrap();
    // The handler is now busy, so the kernel cannot acknowledge the drain yet.
    started_rx.recv_timeout(WAIT).unwrap();
    let k2 = k.clone();
    let first = std::thread::spawn(move || k2.drain(WAIT));
    // The first drain closes the inbox before issuing its command.
    let deadline = std::time::Instant::now() + WAIT;
    let mut accepted = 0;
    loop {
        match k.try_send(5) {
            Err(e) if matches!(e.error, Error::Draining { .. }) => break,
            // The drain thread may start late on a busy machine: the inbox can fill first.
            Err(e) if matches!(e.error, Error::Full { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
            // Before the drain closes the inbox, sends still go in (and will be drained).
            Ok(()) => accepted += 1,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drain never closed the inbox"
        );
        std::thread::yield_now();
    }
    let err = k.drain(WAIT).unwrap_err();
    assert!(err.to_string().contains("already draining"), "{err}");
    // Each handler call waits for the gate; open it for every queued message.
    for _ in 0..=accepted {
        gate_tx.send(()).unwrap();
    }
    let report = first.join().unwrap().unwrap();
    assert_eq!(report.processed, 1 + accepted);
    assert!(report.undelivered.is_empty());
}

#[test]
fn terminate_hands_back_inputs_and_unreceived_outputs() {
    let rt = runtime();
    let k = rt.launch(echo("term", Placement::Pool)).unwrap();
    k.activate().unwrap();
    for i in 0..5 {
        k.send(i).unwrap();
    }
    // Wait until all five were emitted, then pause and queue more.
    while k.metrics().emitted < 5 {
        std::thread::yield_now();
    }
    k.deactivate().unwrap();
    for i in 5..12 {
        k.send(i).unwrap();
    }
    let report = k.terminate().unwrap();
    assert_eq!(report.undelivered, (5..12).collect::<Vec<_>>());
    assert_eq!(report.undelivered_outputs, (0..5).collect::<Vec<_>>());
    assert_eq!(report.final_state, State::Terminated);
    let err = k.send(1).unwrap_err();
    assert!(matches!(err.error, Error::Terminated { .. }));
    assert!(matches!(k.terminate(), Err(Error::Lifecycle { .. })));
}

#[test]
fn a_panicking_handler_faults_only_its_kernel() {
    let rt = runtime();
    let bad = rt
        .launch(KernelSpec::<u64, u64>::new("bad").cpu(|x, out| {
            assert!(*x != 3, "three is not allowed");
            Ok(out.emit(*x)?)
        }))
        .unwrap();
    let good = rt.launch(echo("good", Placement::Pool)).unwrap();
    bad.activate().unwrap();
    good.activate().unwrap();
    for i in 0..6 {
        bad.send(i).unwrap();
    }
    for i in 0..3 {
        assert_eq!(bad.recv().unwrap(), i);
    }
    while bad.state() != State::Faulted {
        std::thread::yield_now();
    }
    assert!(bad.fault().unwrap().contains("three is not allowed"));
    let err = bad.send(10).unwrap_err();
    assert!(matches!(err.error, Error::Faulted { .. }), "{}", err.error);
    assert!(matches!(bad.activate(), Err(Error::Lifecycle { .. })));
    // The other kernel keeps running.
    good.send(7).unwrap();
    assert_eq!(good.recv().unwrap(), 7);
    // The message in hand and everything after it come back.
    let report = bad.terminate().unwrap();
    assert_eq!(report.undelivered, vec![3, 4, 5]);
    assert!(report.fault.unwrap().contains("three"));
    assert_eq!(report.processed, 3);
}

#[test]
fn handler_errors_are_counted_and_the_kernel_goes_on() {
    let rt = runtime();
    let k = rt
        .launch(KernelSpec::<u64, u64>::new("picky").cpu(|x, out| {
            if x % 2 == 1 {
                return Err(gyre::HandlerError(format!("odd input {x}")));
            }
            Ok(out.emit(*x)?)
        }))
        .unwrap();
    k.activate().unwrap();
    for i in 0..10 {
        k.send(i).unwrap();
    }
    let got: Vec<u64> = (0..5).map(|_| k.recv().unwrap()).collect();
    assert_eq!(got, vec![0, 2, 4, 6, 8]);
    let report = k.drain(WAIT).unwrap();
    assert_eq!(report.processed, 10);
    assert_eq!(k.metrics().errors, 5);
}

#[test]
fn backpressure_policies_hand_the_message_back() {
    let rt = runtime();
    let k = rt.launch(echo("bp", Placement::Pool).capacity(4)).unwrap();
    for i in 0..4 {
        k.try_send(i).unwrap();
    }
    let err = k.try_send(4).unwrap_err();
    assert!(matches!(err.error, Error::Full { .. }), "{}", err.error);
    assert_eq!(err.message, 4);
    let fail = k.sender().backpressure(Backpressure::Fail);
    assert_eq!(fail.send(5).unwrap_err().into_message(), 5);
    let timeout = k
        .sender()
        .backpressure(Backpressure::Timeout(Duration::from_millis(30)));
    let err = timeout.send(6).unwrap_err();
    assert!(matches!(err.error, Error::Timeout { .. }), "{}", err.error);
    assert_eq!(err.message, 6);
    // A blocked sender proceeds once the kernel makes room.
    let blocking = k.sender();
    let waiter = std::thread::spawn(move || blocking.send(7));
    std::thread::sleep(Duration::from_millis(20));
    k.activate().unwrap();
    waiter.join().unwrap().unwrap();
    let got: Vec<u64> = (0..5).map(|_| k.recv().unwrap()).collect();
    assert_eq!(got, vec![0, 1, 2, 3, 7]);
}

#[test]
fn bad_input_gets_clear_errors() {
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Big([u64; 8]);

    let rt = runtime();
    let too_big = rt.launch(
        KernelSpec::<Big, u64>::new("big")
            .slot_bytes(64)
            .cpu(|_, _| Ok(())),
    );
    let err = too_big.unwrap_err();
    assert!(
        matches!(
            err,
            Error::MessageTooLarge {
                size: 64,
                suggested: 128,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(".slot_bytes(128)"), "{err}");
    // The default slot size fits it.
    assert!(rt
        .launch(KernelSpec::<Big, u64>::new("big").cpu(|_, _| Ok(())))
        .is_ok());

    let zero = rt
        .launch(echo("zero", Placement::Pool).capacity(0))
        .unwrap_err();
    assert!(zero.to_string().contains("capacity is 0"), "{zero}");
    let odd = rt
        .launch(echo("odd", Placement::Pool).capacity(100))
        .unwrap_err();
    assert!(odd.to_string().contains("round it to 128"), "{odd}");
    let no_impl = rt.launch(KernelSpec::<u64, u64>::new("empty")).unwrap_err();
    assert!(
        matches!(no_impl, Error::NoImplementation { .. }),
        "{no_impl}"
    );

    let sink = rt
        .launch(
            KernelSpec::<u64, u64>::new("sink")
                .no_host_output()
                .cpu(|_, _| Ok(())),
        )
        .unwrap();
    let err = sink.recv().unwrap_err();
    assert!(matches!(err, Error::NoHostOutput { .. }), "{err}");
    assert!(err.to_string().contains("host_output"), "{err}");
    assert!(matches!(sink.try_recv(), Err(Error::NoHostOutput { .. })));
}

#[test]
fn emit_without_output_is_a_handler_error() {
    let rt = runtime();
    let k = rt
        .launch(
            KernelSpec::<u64, u64>::new("sink")
                .no_host_output()
                .cpu(|x, out| Ok(out.emit(*x)?)),
        )
        .unwrap();
    k.activate().unwrap();
    k.send(1).unwrap();
    let report = k.drain(WAIT).unwrap();
    assert_eq!(report.processed, 1);
    assert_eq!(k.metrics().errors, 1);
}

#[test]
fn full_output_stalls_the_kernel_without_loss() {
    let rt = runtime();
    let k = rt
        .launch(echo("stall", Placement::Pool).capacity(64).host_output(4))
        .unwrap();
    k.activate().unwrap();
    for i in 0..40 {
        k.send(i).unwrap();
    }
    while k.metrics().stalls == 0 {
        std::thread::yield_now();
    }
    let got: Vec<u64> = (0..40).map(|_| k.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(got, (0..40).collect::<Vec<_>>());
    assert!(k.metrics().stalls > 0);
}

#[test]
fn async_send_and_recv_do_not_block_the_executor() {
    let rt = runtime();
    let k = rt
        .launch(echo("async", Placement::Pool).capacity(8).host_output(8))
        .unwrap();
    k.activate().unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let total: u64 = tokio.block_on(async {
        let producer = {
            let k = k.clone();
            async move {
                for i in 0..500u64 {
                    k.send_async(i).await.unwrap();
                }
            }
        };
        let consumer = async {
            let mut sum = 0;
            for _ in 0..500 {
                sum += k.recv_async().await.unwrap();
            }
            sum
        };
        // One thread runs both: if either blocked the thread, this would deadlock.
        tokio::join!(producer, consumer).1
    });
    assert_eq!(total, (0..500).sum::<u64>());
}

#[test]
fn shutdown_drains_and_reports_everything() {
    let rt = runtime();
    let a = rt.launch(echo("a", Placement::Pool)).unwrap();
    let b = rt.launch(echo("b", Placement::Dedicated)).unwrap();
    a.activate().unwrap();
    for i in 0..10 {
        a.send(i).unwrap();
        b.send(i).unwrap();
    }
    let report = rt.shutdown(WAIT);
    assert_eq!(report.kernels.len(), 2);
    let a_report = report.kernels.iter().find(|k| k.kernel == "a").unwrap();
    assert_eq!(a_report.processed, 10);
    let b_report = report.kernels.iter().find(|k| k.kernel == "b").unwrap();
    assert_eq!(
        b_report.processed, 10,
        "shutdown drains a launched kernel too"
    );
    assert!(report
        .kernels
        .iter()
        .all(|k| k.final_state == State::Terminated && k.error.is_none()));
    // Outputs were not received; the drain leaves them in the (now unreachable) rings?
    // No: drained outputs stay with the kernel handles, which still receive them.
    let outs: Vec<u64> = (0..10).map(|_| a.recv().unwrap()).collect();
    assert_eq!(outs, (0..10).collect::<Vec<_>>());
}

#[test]
fn dropping_the_runtime_stops_its_threads() {
    let rt = Runtime::builder()
        .backend(gyre::Backend::Auto)
        .workers(2)
        .build()
        .unwrap();
    assert_eq!(rt.backend_name(), "cpu");
    let a = rt.launch(echo("a", Placement::Dedicated)).unwrap();
    let b = rt.launch(echo("b", Placement::Pool)).unwrap();
    a.activate().unwrap();
    b.activate().unwrap();
    a.send(1).unwrap();
    b.send(2).unwrap();
    assert_eq!(a.recv().unwrap(), 1);
    assert_eq!(b.recv().unwrap(), 2);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(rt);
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(WAIT)
        .expect("dropping a runtime joins its threads promptly");
}

#[test]
fn many_senders_and_one_receiver_lose_nothing() {
    let rt = runtime();
    for placement in [Placement::Pool, Placement::Dedicated] {
        let k = rt
            .launch(echo("mpsc", placement).capacity(32).host_output(32))
            .unwrap();
        k.activate().unwrap();
        let senders: Vec<_> = (0..3u64)
            .map(|t| {
                let k = k.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        k.send((t << 32) | i).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u64; 3];
        for _ in 0..6000 {
            let v = k.recv_timeout(WAIT).unwrap();
            let t = (v >> 32) as usize;
            assert_eq!(v & 0xFFFF_FFFF, next[t], "per-sender order is kept");
            next[t] += 1;
        }
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(next, [2000; 3]);
        assert_eq!(k.drain(WAIT).unwrap().processed, 6000);
    }
}

#[test]
fn exclusive_sender_and_receiver_carry_messages_with_the_shared_handles() {
    let rt = runtime();
    for placement in [Placement::Pool, Placement::Dedicated] {
        let k = rt
            .launch(echo("exclusive", placement).capacity(16).host_output(64))
            .unwrap();
        let mut tx = k.exclusive_sender().unwrap();
        let second = k.exclusive_sender().unwrap_err();
        assert!(
            matches!(second, Error::ExclusiveSenderTaken { .. }),
            "{second}"
        );
        let mut rx = k.receiver().unwrap();
        assert!(matches!(k.recv(), Err(Error::ReceiverTaken { .. })));
        assert!(matches!(k.receiver(), Err(Error::ReceiverTaken { .. })));
        k.activate().unwrap();
        for i in 0..2000u64 {
            tx.send(i).unwrap();
            assert_eq!(rx.recv().unwrap(), i);
        }
        // Shared sends go beside the lane; order holds per sender.
        tx.send(1_000_000).unwrap();
        k.send(2_000_000).unwrap();
        let mut got = [rx.recv().unwrap(), rx.recv().unwrap()];
        got.sort_unstable();
        assert_eq!(got, [1_000_000, 2_000_000]);
        drop(rx);
        k.send(7).unwrap();
        assert_eq!(
            k.recv().unwrap(),
            7,
            "the output is back with the kernel handle"
        );
        drop(tx);
        let mut again = k.exclusive_sender().unwrap();
        again.send(8).unwrap();
        assert_eq!(k.recv().unwrap(), 8);
        assert_eq!(k.drain(WAIT).unwrap().processed, 2004);
        let err = again.send(9).unwrap_err();
        assert!(
            matches!(err.error, Error::Terminated { .. }),
            "{}",
            err.error
        );
        assert_eq!(err.into_message(), 9);
    }
}

#[test]
fn terminate_and_drain_cover_the_exclusive_lane() {
    let rt = runtime();
    let k = rt
        .launch(echo("lane-term", Placement::Pool).capacity(8))
        .unwrap();
    let mut tx = k.exclusive_sender().unwrap();
    for i in 0..8 {
        tx.try_send(i).unwrap();
    }
    assert!(matches!(
        tx.try_send(8).unwrap_err().error,
        Error::Full { .. }
    ));
    for i in 100..104 {
        k.send(i).unwrap();
    }
    let report = k.terminate().unwrap();
    let mut undelivered = report.undelivered.clone();
    undelivered.sort_unstable();
    assert_eq!(
        undelivered,
        vec![0, 1, 2, 3, 4, 5, 6, 7, 100, 101, 102, 103]
    );

    let k = rt
        .launch(
            echo("lane-drain", Placement::Dedicated)
                .capacity(8)
                .host_output(64),
        )
        .unwrap();
    let mut tx = k.exclusive_sender().unwrap();
    for i in 0..8 {
        tx.send(i).unwrap();
        k.send(100 + i).unwrap();
    }
    let report = k.drain(WAIT).unwrap();
    assert_eq!(report.processed, 16);
    let mut rx = k.receiver().unwrap();
    let mut outs: Vec<u64> = (0..16).map(|_| rx.recv().unwrap()).collect();
    assert!(matches!(rx.recv(), Err(Error::Terminated { .. })));
    outs.sort_unstable();
    assert_eq!(outs, (0..8).chain(100..108).collect::<Vec<_>>());
}

#[test]
fn async_exclusive_endpoints_do_not_block_the_executor() {
    let rt = runtime();
    let k = rt
        .launch(echo("async-x", Placement::Pool).capacity(8).host_output(8))
        .unwrap();
    k.activate().unwrap();
    let mut tx = k.exclusive_sender().unwrap();
    let mut rx = k.receiver().unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let total: u64 = tokio.block_on(async {
        let producer = async move {
            for i in 0..500u64 {
                tx.send_async(i).await.unwrap();
            }
        };
        let consumer = async {
            let mut sum = 0;
            for _ in 0..500 {
                sum += rx.recv_async().await.unwrap();
            }
            sum
        };
        tokio::join!(producer, consumer).1
    });
    assert_eq!(total, (0..500).sum::<u64>());
}

#[test]
fn launches_beyond_the_budgets_are_refused_with_what_to_do() {
    // Each kernel below holds three rings of 16 slots of 64 bytes: 3 * (384 + 1024).
    let per_kernel = 3 * (384 + 16 * 64);
    let rt = Runtime::builder()
        .workers(1)
        .ring_memory_budget(2 * per_kernel)
        .thread_budget(2)
        .build()
        .unwrap();
    let small = |name: &str, placement| {
        KernelSpec::<u64, u64>::new(name)
            .capacity(16)
            .host_output(16)
            .slot_bytes(64)
            .placement(placement)
            .cpu(|x, out| Ok(out.emit(*x)?))
    };
    let a = rt.launch(small("a", Placement::Dedicated)).unwrap();
    assert_eq!(rt.ring_memory_in_use(), per_kernel);
    assert_eq!(rt.threads_in_use(), 2);
    // The thread budget: one worker and one dedicated kernel already.
    let err = rt.launch(small("b", Placement::Dedicated)).unwrap_err();
    assert!(matches!(err, Error::OverBudget(_)), "{err}");
    assert!(err.to_string().contains("Placement::Pool"), "{err}");
    let b = rt.launch(small("b", Placement::Pool)).unwrap();
    // The memory budget is now full.
    let err = rt.launch(small("c", Placement::Pool)).unwrap_err();
    assert!(matches!(err, Error::OverBudget(_)), "{err}");
    assert!(err.to_string().contains("ring_memory_budget"), "{err}");
    // Terminated kernels that nobody holds give their memory and threads back.
    a.terminate().unwrap();
    drop(a);
    assert_eq!(rt.threads_in_use(), 1);
    assert_eq!(rt.ring_memory_in_use(), per_kernel);
    let c = rt.launch(small("c", Placement::Dedicated)).unwrap();
    c.activate().unwrap();
    c.send(5).unwrap();
    assert_eq!(c.recv().unwrap(), 5);
    assert_eq!(rt.ring_memory_in_use(), 2 * per_kernel);
    drop(b);
}
