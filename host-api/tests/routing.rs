//! Routing: kernel-to-kernel delivery with backpressure, topology errors, dead letters,
//! stuck handlers abandoned by terminate, restart with routes kept.

use std::time::Duration;

use gyre::{
    Error, HandlerError, HealthPolicy, HealthStatus, KernelSpec, Placement, RouteError, Runtime,
    State,
};

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_full_downstream_back_pressures_upstream_and_nothing_is_dropped() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let mut g = rt.group("bp");
    let up = g.add(
        KernelSpec::<u64, u64>::new("up")
            .capacity(64)
            .no_host_output()
            .cpu(|x, out| Ok(out.emit(x + 1)?)),
    );
    let down = g.add(
        KernelSpec::<u64, u64>::new("down")
            .capacity(4)
            .cpu(|x, out| Ok(out.emit(x * 10)?)),
    );
    g.route(up, 0, down);
    let group = g.launch().unwrap();
    let (up, down) = (group.kernel(up).unwrap(), group.kernel(down).unwrap());
    up.activate().unwrap();
    // `down` stays Launched: its 4-slot inbox fills and `up` must stall, not drop.
    for i in 0..40 {
        up.send(i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let m = up.metrics();
    assert!(m.stalls > 0, "upstream never stalled: {m:?}");
    assert!(m.processed < 40, "upstream cannot have handled all: {m:?}");
    assert_eq!(down.metrics().inbox_len, 4);
    down.activate().unwrap();
    let got: Vec<u64> = (0..40)
        .map(|_| down.recv_timeout(SECOND).unwrap())
        .collect();
    assert_eq!(got, (0..40).map(|i| (i + 1) * 10).collect::<Vec<_>>());
    let report = group.drain(SECOND * 5);
    assert_eq!(report.undelivered_count(), 0, "{report:?}");
    assert_eq!(
        report.kernel_names(),
        ["up", "down"],
        "drained upstream first"
    );
}

#[test]
fn topology_errors_are_clear() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let mut g = rt.group("cycle");
    let a = g.add(KernelSpec::<u32, u32>::new("a").cpu(|x, out| Ok(out.emit(*x)?)));
    let b = g.add(KernelSpec::<u32, u32>::new("b").cpu(|x, out| Ok(out.emit(*x)?)));
    g.route(a, 0, b).route(b, 0, a);
    let err = g.launch().unwrap_err();
    assert!(
        matches!(err, Error::Route(RouteError::Cycle(ref c)) if c.contains('a') && c.contains('b')),
        "{err}"
    );
    assert!(err.to_string().contains("allow_cycles"), "{err}");

    let mut g = rt.group("names");
    g.add(KernelSpec::<u32, u64>::new("wide").cpu(|x, out| Ok(out.emit(u64::from(*x))?)));
    g.add(KernelSpec::<u32, u32>::new("narrow").cpu(|x, out| Ok(out.emit(*x)?)));
    let err = g.route_by_name("wide", 0, "nobody").unwrap_err();
    assert!(
        matches!(err, Error::Route(RouteError::UnknownKernel(ref k)) if k == "nobody"),
        "{err}"
    );
    let err = g.route_by_name("wide", 0, "narrow").unwrap_err();
    assert!(
        matches!(err, Error::Route(RouteError::TypeMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("u64"), "{err}");

    let mut g = rt.group("ports");
    let a = g.add(KernelSpec::<u32, u32>::new("a").cpu(|x, out| Ok(out.emit(*x)?)));
    let b = g.add(KernelSpec::<u32, u32>::new("b").cpu(|x, out| Ok(out.emit(*x)?)));
    g.route(a, 3, b);
    let err = g.launch().unwrap_err();
    assert!(
        matches!(err, Error::Route(RouteError::NoSuchPort { port: 3, .. })),
        "{err}"
    );

    // Binding to a terminated kernel.
    let a = rt
        .launch(KernelSpec::<u32, u32>::new("a2").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    let b = rt
        .launch(KernelSpec::<u32, u32>::new("b2").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    b.terminate().unwrap();
    let err = rt.connect(&a, 0, &b).unwrap_err();
    assert!(
        matches!(err, Error::Route(RouteError::Stopped { .. })),
        "{err}"
    );
}

#[test]
fn failed_messages_and_dead_letter_ports_reach_the_dead_letters() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let mut g = rt.group("dl");
    let split = g.add(KernelSpec::<u32, u32>::new("split").ports(2).cpu(|x, out| {
        if *x == 13 {
            return Err(HandlerError(format!("unlucky {x}")));
        }
        Ok(out.emit_to(x % 2, *x)?)
    }));
    g.to_dead_letters(split, 1);
    let group = g.launch().unwrap();
    group.activate().unwrap();
    let split = group.kernel(split).unwrap();
    for x in [2, 3, 13, 4] {
        split.send(x).unwrap();
    }
    assert_eq!(split.recv().unwrap(), 2);
    assert_eq!(split.recv().unwrap(), 4);
    let dead = rt.take_dead_letters();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let read = |d: &gyre::DeadLetter| u32::from_ne_bytes(d.payload[..4].try_into().unwrap());
    assert_eq!(read(&dead[0]), 3);
    assert!(!dead[0].is_input && dead[0].reason.contains("dead-letter"));
    assert_eq!(read(&dead[1]), 13);
    assert!(dead[1].is_input && dead[1].reason == "unlucky 13");
    assert_eq!(rt.dead_letter_total(), 2);
    assert!(rt
        .prometheus_text()
        .contains("gyre_runtime_dead_letters_total 2"));
}

#[test]
fn emits_toward_a_stopped_downstream_become_dead_letters() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let pipeline = rt
        .pipeline::<u32>("p")
        .stage(KernelSpec::<u32, u32>::new("first").cpu(|x, out| Ok(out.emit(*x)?)))
        .stage(KernelSpec::<u32, u32>::new("second").cpu(|x, out| Ok(out.emit(*x)?)))
        .launch()
        .unwrap();
    pipeline.activate().unwrap();
    pipeline.send(1).unwrap();
    assert_eq!(pipeline.recv().unwrap(), 1);
    let names = pipeline.group().kernel_names();
    assert_eq!(names, ["first", "second"]);
    // Terminate the second stage alone; the first keeps running.
    let report = pipeline.group().terminate_kernel("second").unwrap();
    assert_eq!(report.kernel_names(), ["second"]);
    assert_eq!(report.undelivered_count(), 0);
    pipeline.send(2).unwrap();
    let deadline = std::time::Instant::now() + SECOND * 5;
    let dead = loop {
        let dead = rt.take_dead_letters();
        if !dead.is_empty() || std::time::Instant::now() > deadline {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("second"), "{:?}", dead[0]);
}

#[test]
fn a_handler_that_never_returns_is_abandoned_and_its_messages_come_back() {
    let rt = Runtime::builder()
        .workers(1)
        .command_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let stuck = rt
        .launch(KernelSpec::<u64, u64>::new("stuck").cpu(|x, out| {
            if *x == 1 {
                loop {
                    std::thread::park();
                }
            }
            Ok(out.emit(*x)?)
        }))
        .unwrap();
    let other = rt
        .launch(KernelSpec::<u64, u64>::new("other").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    stuck.activate().unwrap();
    other.activate().unwrap();
    for i in 0..5 {
        stuck.send(i).unwrap();
    }
    assert_eq!(stuck.recv().unwrap(), 0);
    let policy = HealthPolicy {
        watchdog: Duration::from_millis(150),
        ..HealthPolicy::default()
    };
    let started = std::time::Instant::now();
    assert_eq!(stuck.health_with(&policy).status, HealthStatus::Healthy);
    let unhealthy = loop {
        let health = stuck.health_with(&policy);
        if health.status == HealthStatus::Unhealthy {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < SECOND * 5,
            "never unhealthy: {health:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(unhealthy >= Duration::from_millis(150), "{unhealthy:?}");
    let report = stuck.terminate().unwrap();
    assert!(report.abandoned, "{report:?}");
    assert_eq!(
        report.undelivered,
        vec![1, 2, 3, 4],
        "in hand first, then the queue"
    );
    assert_eq!(report.final_state, State::Terminated);
    assert!(report.fault.unwrap().contains("command timeout"));
    // The only worker is stuck; a replacement runs the other kernels.
    other.send(7).unwrap();
    assert_eq!(other.recv_timeout(SECOND * 5).unwrap(), 7);
    // Dropping the runtime leaves the stuck thread behind instead of hanging.
    let dropped = std::time::Instant::now();
    drop(rt);
    assert!(dropped.elapsed() < SECOND * 10);
}

#[test]
fn restart_keeps_routes_and_dead_letters_the_poison_message() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let mut g = rt.group("restart");
    let fragile = g.add(
        KernelSpec::<u32, u32>::new("fragile")
            .no_host_output()
            .placement(Placement::Dedicated)
            .cpu(|x, out| {
                assert!(*x != 666, "cannot handle {x}");
                Ok(out.emit(*x)?)
            }),
    );
    let sink = g.add(KernelSpec::<u32, u32>::new("sink").cpu(|x, out| Ok(out.emit(*x)?)));
    g.route(fragile, 0, sink);
    let group = g.launch().unwrap();
    let (fragile, sink) = (group.kernel(fragile).unwrap(), group.kernel(sink).unwrap());
    sink.activate().unwrap();
    fragile.deactivate().unwrap();
    for x in [1, 666, 2, 3] {
        fragile.send(x).unwrap();
    }
    // It may fault on 666 before `activate` reads its state back: then activate says so.
    if let Err(e) = fragile.activate() {
        assert!(matches!(e, Error::Faulted { .. }), "{e}");
    }
    assert_eq!(sink.recv().unwrap(), 1);
    let deadline = std::time::Instant::now() + SECOND * 5;
    while fragile.state() != State::Faulted {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    rt.restart(&fragile).unwrap();
    assert_eq!(fragile.state(), State::Launched);
    fragile.activate().unwrap();
    assert_eq!(sink.recv_timeout(SECOND * 5).unwrap(), 2);
    assert_eq!(sink.recv_timeout(SECOND * 5).unwrap(), 3);
    fragile.send(4).unwrap();
    assert_eq!(
        sink.recv_timeout(SECOND * 5).unwrap(),
        4,
        "the route survived"
    );
    let dead = rt.take_dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("cannot handle 666"), "{dead:?}");
    let report = group.drain(SECOND * 5);
    assert_eq!(report.undelivered_count(), 0);
}

#[test]
fn requests_in_flight_get_their_own_replies_and_latency_is_recorded() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let pipeline = rt
        .pipeline::<u64>("rr")
        .stage(KernelSpec::<u64, u64>::new("inc").cpu(|x, out| Ok(out.emit(x + 1)?)))
        .stage(KernelSpec::<u64, u64>::new("dbl").cpu(|x, out| Ok(out.emit(x * 2)?)))
        .launch()
        .unwrap();
    pipeline.activate().unwrap();
    let requester = pipeline.requester().unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let requester = requester.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let x = t * 1000 + i;
                    assert_eq!(requester.request(x).unwrap(), (x + 1) * 2);
                }
            })
        })
        .collect();
    let rt_tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt_tokio.block_on(async {
        let futures: Vec<_> = (0..100u64)
            .map(|x| {
                let requester = requester.clone();
                async move { (x, requester.request_async(x).await.unwrap()) }
            })
            .collect();
        for (x, reply) in futures_join(futures).await {
            assert_eq!(reply, (x + 1) * 2);
        }
    });
    for t in threads {
        t.join().unwrap();
    }
    let latency = pipeline.latency().unwrap();
    assert_eq!(latency.count, 900);
    assert!(latency.p50 > 0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    let text = rt.prometheus_text();
    assert!(text.contains("gyre_kernel_latency_seconds{"), "{text}");
}

/// Polls every future to completion on the current task (no extra crate).
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

#[test]
fn host_sent_messages_are_timed_end_to_end_through_a_pipeline() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let pipeline = rt
        .pipeline::<u64>("timed")
        .stage(KernelSpec::<u64, u64>::new("a").cpu(|x, out| Ok(out.emit(x + 1)?)))
        .stage(KernelSpec::<u64, u64>::new("b").cpu(|x, out| {
            assert!(
                out.corr() == 0 || out.corr() == 77,
                "handlers never see the send time"
            );
            Ok(out.emit(x * 2)?)
        }))
        .launch()
        .unwrap();
    pipeline.activate().unwrap();
    let mut corrs = Vec::new();
    for i in 0..640 {
        pipeline.send(i).unwrap();
        let (out, corr) = pipeline.recv_with_corr().unwrap();
        assert_eq!(out, (i + 1) * 2);
        corrs.push(corr);
    }
    assert!(corrs.iter().all(|&c| c == 0), "the send time is stripped");
    // One message in 64, by inbox position: 10 of 640.
    let latency = pipeline.latency().unwrap();
    assert_eq!(latency.count, 10, "{latency:?}");
    assert!(latency.p50 > 0 && latency.p999 >= latency.p50);
    // A user's own correlation id is never replaced.
    pipeline.send_with_corr(5, 77).unwrap();
    assert_eq!(pipeline.recv_with_corr().unwrap(), (12, 77));
}

#[test]
fn rebinding_a_stalled_port_sends_what_waits_to_the_new_target() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let up = rt
        .launch(
            KernelSpec::<u32, u32>::new("up")
                .no_host_output()
                .cpu(|x, out| Ok(out.emit(*x)?)),
        )
        .unwrap();
    let a = rt
        .launch(
            KernelSpec::<u32, u32>::new("a")
                .capacity(2)
                .cpu(|x, out| Ok(out.emit(*x)?)),
        )
        .unwrap();
    let b = rt
        .launch(KernelSpec::<u32, u32>::new("b").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    rt.connect(&up, 0, &a).unwrap();
    up.activate().unwrap();
    b.activate().unwrap();
    for x in 0..5 {
        up.send(x).unwrap();
    }
    // `a` is not active: two fit its inbox, the third waits in `up`'s stash.
    let deadline = std::time::Instant::now() + SECOND * 5;
    while up.metrics().stalls == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", up.metrics());
        std::thread::sleep(Duration::from_millis(2));
    }
    rt.connect(&up, 0, &b).unwrap();
    let got: Vec<u32> = (0..3)
        .map(|_| b.recv_timeout(SECOND * 5).unwrap())
        .collect();
    assert_eq!(
        got,
        [2, 3, 4],
        "the stashed emit and the rest go to the new target"
    );
    a.activate().unwrap();
    assert_eq!(a.recv().unwrap(), 0);
    assert_eq!(a.recv().unwrap(), 1);
    let report = rt.shutdown(SECOND * 5);
    assert_eq!(report.undelivered_count(), 0, "{report:?}");
}

/// Three kernels in another builder, so a stage of it can be out of range in a smaller
/// group.
fn other_group(rt: &Runtime) -> (gyre::Stage<u64, u64>, gyre::Stage<u64, u64>) {
    let mut other = rt.group("other");
    let _ = other.add(KernelSpec::<u64, u64>::new("o0").cpu(|x, out| Ok(out.emit(*x)?)));
    let near = other.add(KernelSpec::<u64, u64>::new("o1").cpu(|x, out| Ok(out.emit(*x)?)));
    let far = other.add(KernelSpec::<u64, u64>::new("o2").cpu(|x, out| Ok(out.emit(*x)?)));
    (near, far)
}

fn assert_foreign(err: &Error, group: &str) {
    assert!(
        matches!(err, Error::ForeignStage { group: g } if g == group),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("another group")
            && text.contains("use the stages this group's builder returned"),
        "{text}"
    );
}

#[test]
fn a_foreign_stage_out_of_range_is_an_error_not_a_panic() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let (_, far) = other_group(&rt);
    let mut g = rt.group("g");
    let a = g.add(
        KernelSpec::<u64, u64>::new("a")
            .no_host_output()
            .cpu(|x, out| Ok(out.emit(*x)?)),
    );
    g.route(a, 0, far);
    let err = g.launch().map(|_| ()).unwrap_err();
    assert_foreign(&err, "g");
    // Same for the other ways a stage names a kernel.
    let mut g = rt.group("h");
    let _ = g.add(KernelSpec::<u64, u64>::new("b").cpu(|x, out| Ok(out.emit(*x)?)));
    g.to_dead_letters(far, 0);
    assert_foreign(&g.launch().map(|_| ()).unwrap_err(), "h");
    let mut g = rt.group("i");
    let _ = g.add(KernelSpec::<u64, u64>::new("c").cpu(|x, out| Ok(out.emit(*x)?)));
    g.to_host(far, 0);
    assert_foreign(&g.launch().map(|_| ()).unwrap_err(), "i");
    assert_eq!(rt.kernel_count(), 0, "nothing launched");
}

#[test]
fn a_foreign_stage_in_range_with_another_type_is_never_routed() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    // `wide` (u64 in) has index 1 in its own builder; index 1 here is a u32 kernel.
    let (wide, _) = other_group(&rt);
    let mut g = rt.group("g");
    let src = g.add(
        KernelSpec::<u64, u64>::new("src")
            .no_host_output()
            .cpu(|x, out| Ok(out.emit(*x)?)),
    );
    let _narrow = g.add(KernelSpec::<u32, u32>::new("narrow").cpu(|x, out| Ok(out.emit(*x)?)));
    g.route(src, 0, wide);
    let err = g.launch().map(|_| ()).unwrap_err();
    assert_foreign(&err, "g");
}

#[test]
fn group_kernel_refuses_a_foreign_stage() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let (wide, far) = other_group(&rt);
    let mut g = rt.group("g");
    let _ = g.add(KernelSpec::<u32, u32>::new("a").cpu(|x, out| Ok(out.emit(*x)?)));
    let own = g.add(KernelSpec::<u32, u32>::new("b").cpu(|x, out| Ok(out.emit(*x)?)));
    let group = g.launch().unwrap();
    assert_foreign(&group.kernel(wide).map(|_| ()).unwrap_err(), "g");
    assert_foreign(&group.kernel(far).map(|_| ()).unwrap_err(), "g");
    assert_eq!(group.kernel(own).unwrap().name(), "b");
    group.terminate();
}

/// A pipeline's sends with a time limit: into a first stage that is not active yet, a
/// batch bigger than its inbox fills it and stops with `Timeout` after the limit (the
/// rest not sent), and a single send then times out too; once active, everything sent
/// comes out, in order.
#[test]
fn a_pipeline_sends_with_a_time_limit() {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let pipeline = rt
        .pipeline::<u32>("limited")
        .stage(
            KernelSpec::<u32, u32>::new("first")
                .capacity(4)
                .cpu(|x, out| Ok(out.emit(*x)?)),
        )
        .stage(KernelSpec::<u32, u32>::new("last").cpu(|x, out| Ok(out.emit(*x * 2)?)))
        .launch()
        .unwrap();
    let limit = Duration::from_millis(50);
    let started = std::time::Instant::now();
    let error = pipeline
        .send_batch_timeout(&[1, 2, 3, 4, 5, 6], limit)
        .unwrap_err();
    assert!(
        matches!(error.error, Error::Timeout { .. }),
        "{:?}",
        error.error
    );
    assert_eq!(error.sent, 4, "the inbox holds four");
    assert!(
        started.elapsed() >= limit,
        "it waited for room until the limit"
    );
    assert!(matches!(
        pipeline.send_timeout(5, limit).map_err(|e| e.error),
        Err(Error::Timeout { .. })
    ));
    pipeline.activate().unwrap();
    assert_eq!(pipeline.send_batch_timeout(&[5, 6], SECOND * 5).unwrap(), 2);
    let mut got = Vec::new();
    while got.len() < 6 {
        pipeline
            .recv_batch_timeout(&mut got, 8, SECOND * 5)
            .unwrap();
    }
    assert_eq!(got, [2, 4, 6, 8, 10, 12]);
}

/// A CPU pipeline whose middle stage faulted restarts through its group, as a device
/// group does: the faulted stage restarts (the poison message goes to the dead letters),
/// comes back active with its routes, and the pipeline carries messages again. A running
/// group refuses.
#[test]
fn a_cpu_pipeline_restarts_through_its_group() {
    let rt = Runtime::builder().workers(2).build().unwrap();
    let pipeline = rt
        .pipeline::<u32>("restartable")
        .stage(KernelSpec::<u32, u32>::new("first").cpu(|x, out| Ok(out.emit(*x)?)))
        .stage(KernelSpec::<u32, u32>::new("fragile").cpu(|x, out| {
            assert!(*x != 666, "cannot handle {x}");
            Ok(out.emit(*x + 1)?)
        }))
        .stage(KernelSpec::<u32, u32>::new("last").cpu(|x, out| Ok(out.emit(*x)?)))
        .launch()
        .unwrap();
    assert!(
        matches!(pipeline.group().restart(), Err(Error::Lifecycle { .. })),
        "a running group is not restarted"
    );
    pipeline.activate().unwrap();
    pipeline.send(1).unwrap();
    assert_eq!(pipeline.recv_timeout(SECOND * 5).unwrap(), 2);
    pipeline.send(666).unwrap();
    let deadline = std::time::Instant::now() + SECOND * 5;
    while pipeline.group().health(&HealthPolicy::default()).status != HealthStatus::Unhealthy {
        assert!(
            std::time::Instant::now() < deadline,
            "the stage never faulted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    pipeline.group().restart().unwrap();
    pipeline.send(41).unwrap();
    assert_eq!(
        pipeline.recv_timeout(SECOND * 5).unwrap(),
        42,
        "the routes survived"
    );
    assert!(
        rt.take_dead_letters()
            .iter()
            .any(|d| d.reason.contains("cannot handle 666")),
        "the poison message went to the dead letters"
    );
}
